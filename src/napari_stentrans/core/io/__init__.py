"""Readers: Space Ranger folders, ``.h5ad`` files and legacy ST count tables -> AnnData.

Every reader returns an AnnData in scanpy/squidpy conventions:

* ``X``: raw counts, CSR float32, spots x genes;
* ``obs["array_row"]``, ``obs["array_col"]``: integer lattice coordinates;
* ``obsm["spatial"]``: spot centres (x, y) in full-resolution image pixels when known,
  otherwise in array units;
* ``uns["spatial"][library_id]``: images and scale factors (Visium), checked at read time:
  only known scale factors with positive numbers, only images that decode and can be placed
  (``common.clean_spatial``); what is left out is an :class:`OptionalPartWarning`;
* ``uns["stentrans_lattice"]``: ``{"kind", "pitch_um", "source"}`` and, when the positions
  file lists them, ``in_tissue_unmeasured`` sites ``(k, 2)`` that are in tissue but have no counts;
  ``coordinates`` says where the lattice coordinates came from when that is not obvious (an ST
  table's coordinates file or spot ids; an ``.h5ad``'s ``obsm["spatial"]``).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from ..caller import warns_at_caller
from ..errors import InputError, SeveralLibrariesError
from .common import (
    MIN_SPOTS,
    READ_FAULTS,
    CountsFromRawWarning,
    DuplicateGeneNamesWarning,
    LeftOutFeaturesWarning,
    OptionalPartWarning,
    ReadError,
    add_read_note,
    check_sparse_matrix,
    check_spots,
    clean_spatial,
    lattice_of,
    library_of,
    reading,
    source_of,
    suffix,
    validate_counts,
)
from .enhanced import is_enhanced, measured_spots, refuse_enhanced
from .h5ad import read_h5ad
from .spaceranger import hd_bin_folders, read_spaceranger
from .spatialdata import is_spatialdata_store, read_spatialdata
from .st_table import TABLE_SUFFIXES, read_st_table


@warns_at_caller
def read(
    path: str | Path,
    *,
    coords: str | Path | None = None,
    library: str | None = None,
    library_id: str | None = None,
    table: str | None = None,
) -> ad.AnnData:
    """Read a spot-based spatial transcriptomics slide.

    Parameters
    ----------
    path
        A Space Ranger output folder, an ``.h5ad`` file, a SpatialData Zarr store, or a legacy
        ST counts table (``.csv``/``.tsv``/``.txt``, optionally compressed; spots as rows or
        columns). :func:`input_format` tells, from names alone, which of these a path is. An
        enhanced ``.h5ad`` written by napari-stentrans is read as it is (predictions on the
        half-pitch lattice, ``uns["stentrans_lattice"]["enhanced"]``; see
        :mod:`.enhanced`): it can be viewed and described, not enhanced again.
    coords
        Optional coordinates table for a counts table (otherwise a sibling file such as
        ``coords.csv``, ``{name}_selection.tsv`` or ``alignment_table_{name}.tsv`` is used, and
        failing that the spot ids ``"{x}x{y}"``).
    library
        The library (section) to read. An ``.h5ad`` holding several (``obs["library_id"]``
        with more than one value, as ``anndata.concat(..., label="library_id")`` writes) must
        be given one: only its spots and its ``uns["spatial"]`` entry are read, and
        ``obs["library_id"]`` keeps its name. A Space Ranger folder holds one library: this is
        the key it is filed under in ``uns["spatial"]`` (default: the folder name). Not used for
        counts tables.
    library_id
        The former name of ``library``, with the same meaning (give one of the two).
    table
        The table of a SpatialData store holding several (see :func:`read_spatialdata`).

    Returns
    -------
    AnnData with raw counts and lattice coordinates (see module docstring).

    Raises
    ------
    SeveralLibrariesError
        An ``.h5ad`` holding several libraries read without ``library`` (a :class:`ReadError`
        whose message names the libraries and how to pick one).
    ReadError
        Missing path, unknown format, missing coordinates, off-lattice coordinates or
        coordinates that are no plausible lattice (e.g. ``array_row``/``array_col`` swapped),
        an unknown ``library``, empty matrix, invalid counts, a corrupt sparse structure,
        repeated spot names, non-finite ``obsm["spatial"]`` or a spot far off the slide; the
        message names the file and the problem.
    """
    if library_id is not None:
        if library is not None and library != library_id:
            raise InputError(f"library={library!r} and library_id={library_id!r} disagree; give one")
        library = library_id
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    with reading(path):
        if path.is_dir() and is_spatialdata_store(path):
            adata = read_spatialdata(path, table=table, library_id=library)
        elif path.is_dir():
            adata = _read_folder(path, library, table)
        elif suffix(path) == ".h5ad":
            adata = read_h5ad(path, library)
        elif suffix(path) in TABLE_SUFFIXES:
            adata = read_st_table(path, coords=coords)
        elif suffix(path) == ".h5":
            raise ReadError(f"{path}: a bare 10x .h5 has no spot positions; open its Space Ranger folder")
        else:
            raise ReadError(
                f"{path}: unknown format {''.join(path.suffixes) or '(no suffix)'}; expected a "
                "Space Ranger folder, .h5ad, SpatialData .zarr store, or a .csv/.tsv(.gz) counts table"
            )
        if "spatial" in adata.uns:  # a .h5ad's uns['spatial'] may hold anything
            adata.uns["spatial"] = clean_spatial(adata.uns["spatial"], path)
    check_sparse_matrix(adata.X, path)
    if not is_enhanced(adata):  # an enhanced slide holds predictions, checked by read_enhanced
        validate_counts(adata, path)
        check_spots(adata, path)
    return adata


def input_format(path: str | Path) -> str | None:
    """Which input :func:`read` reads ``path`` as, judged from names alone (cheap, never raises).

    The one definition of the supported inputs: the napari reader claims exactly these paths.

    Returns
    -------
    ``"spatialdata"`` (a SpatialData Zarr store), ``"spaceranger"`` (a folder with ``spatial/``
    or a ``filtered_feature_bc_matrix``), ``"h5ad"`` (an ``.h5ad`` file), ``"table"``
    (``.csv``/``.tsv``/``.txt``, plain or compressed with ``.gz``/``.bz2``/``.xz``/``.zip``), or
    None for anything else (missing paths included). A folder holding exactly one ``.h5ad`` or
    one store, and no other of either, is that one's format: :func:`read` reads it through it.
    """
    try:
        path = Path(path)
        if path.is_dir():
            if is_spatialdata_store(path):
                return "spatialdata"
            if (path / "spatial").is_dir() or any(path.glob("*filtered_feature_bc_matrix*")):
                return "spaceranger"
            if hd_bin_folders(path) or hd_bin_folders(path / "binned_outputs"):
                return "spaceranger"  # a Visium HD top folder: read() names its bin folders
            inside = _folder_slides(path)
            if len(inside) == 1:
                return "spatialdata" if inside[0].is_dir() else "h5ad"
            return None
        if not path.is_file():
            return None
        if suffix(path) == ".h5ad":
            return "h5ad"
        if suffix(path) in TABLE_SUFFIXES:
            return "table"
    except (OSError, TypeError, ValueError):
        return None
    return None


def _folder_slides(path: Path) -> list[Path]:
    """The ``.h5ad`` files and SpatialData stores directly inside the folder ``path``, by name."""
    return sorted(
        p for p in path.iterdir() if (p.suffix == ".h5ad" and p.is_file()) or is_spatialdata_store(p)
    )


def _read_folder(path: Path, library: str | None, table: str | None) -> ad.AnnData:
    if (path / "spatial").is_dir() or any(path.glob("*filtered_feature_bc_matrix*")):
        return read_spaceranger(path, library_id=library)
    candidates = _folder_slides(path)
    if len(candidates) == 1:  # say which slide a folder stood for (it may hold CSV tables too)
        (only,) = candidates
        if only.is_dir():
            adata = read_spatialdata(only, table=table, library_id=library)
            add_read_note(adata, f"read {only.name}, the folder's only SpatialData store", first=True)
        else:
            adata = read_h5ad(only, library)
            add_read_note(adata, f"read {only.name}, the folder's only .h5ad", first=True)
        return adata
    if candidates:
        raise ReadError(
            f"{path}: folder holds {len(candidates)} slides ({', '.join(c.name for c in candidates)}); "
            "open one of them"
        )
    bins = hd_bin_folders(path) or hd_bin_folders(path / "binned_outputs")
    if bins:
        raise ReadError(
            f"{path}: Visium HD bins are in its square_NNNum folders "
            f"({', '.join(b.name for b in bins)}): open one of those, e.g. {bins[-1]}"
        )
    # a folder of legacy ST sections (her2st, ST 2k): name the counts tables it holds
    tables = sorted(p for p in path.iterdir() if p.is_file() and suffix(p) in TABLE_SUFFIXES)
    counts = [p for p in tables if "count" in p.name.lower()]
    listed, kind = (counts, "counts tables") if counts else (tables, "tables")
    what = (
        f"pass one of its {len(listed)} {kind} instead, e.g. {listed[0]}" if listed else "pass a file instead"
    )
    raise ReadError(
        f"{path}: folder is not a Space Ranger output (no spatial/ folder and no "
        f"filtered_feature_bc_matrix) and holds no .h5ad or SpatialData store; {what}"
    )


__all__ = [
    "read",
    "input_format",
    "is_enhanced",
    "measured_spots",
    "refuse_enhanced",
    "read_spatialdata",
    "read_spaceranger",
    "read_h5ad",
    "read_st_table",
    "lattice_of",
    "library_of",
    "source_of",
    "ReadError",
    "SeveralLibrariesError",
    "DuplicateGeneNamesWarning",
    "OptionalPartWarning",
    "CountsFromRawWarning",
    "LeftOutFeaturesWarning",
    "READ_FAULTS",
    "MIN_SPOTS",
]
