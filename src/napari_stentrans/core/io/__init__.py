"""Readers: Space Ranger folders, ``.h5ad`` files and legacy ST count tables -> AnnData.

Every reader returns an AnnData in scanpy/squidpy conventions:

* ``X``: raw counts, CSR float32, spots x genes;
* ``obs["array_row"]``, ``obs["array_col"]``: integer lattice coordinates;
* ``obsm["spatial"]``: spot centres (x, y) in full-resolution image pixels when known,
  otherwise in array units;
* ``uns["spatial"][library_id]``: images and scale factors (Visium);
* ``uns["stentrans_lattice"]``: ``{"kind", "pitch_um", "source"}`` and, when the positions
  file lists them, ``in_tissue_unmeasured`` sites ``(k, 2)`` that are in tissue but have no counts.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from .common import (
    MIN_SPOTS,
    READ_FAULTS,
    DuplicateGeneNamesWarning,
    ReadError,
    check_sparse_matrix,
    check_spots,
    lattice_of,
    reading,
    suffix,
    validate_counts,
)
from .h5ad import read_h5ad
from .spaceranger import read_spaceranger
from .st_table import TABLE_SUFFIXES, read_st_table


def read(
    path: str | Path,
    *,
    coords: str | Path | None = None,
    library_id: str | None = None,
) -> ad.AnnData:
    """Read a spot-based spatial transcriptomics slide.

    Parameters
    ----------
    path
        A Space Ranger output folder, an ``.h5ad`` file, or a legacy ST counts table
        (``.csv``/``.tsv``/``.txt``, optionally gzipped; spots as rows or columns).
    coords
        Optional coordinates table for a counts table (otherwise a sibling file such as
        ``coords.csv``, ``{name}_selection.tsv`` or ``alignment_table_{name}.tsv`` is used, and
        failing that the spot ids ``"{x}x{y}"``).
    library_id
        Key for ``uns["spatial"]``; defaults to the folder or file name.

    Returns
    -------
    AnnData with raw counts and lattice coordinates (see module docstring).

    Raises
    ------
    ReadError
        Missing path, unknown format, missing coordinates, off-lattice coordinates, empty
        matrix, invalid counts, a corrupt sparse structure, repeated spot names, non-finite
        ``obsm["spatial"]`` or a spot far off the slide; the message names the file and the
        problem.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    with reading(path):
        if path.is_dir():
            adata = _read_folder(path, library_id)
        elif suffix(path) == ".h5ad":
            adata = read_h5ad(path)
        elif suffix(path) in TABLE_SUFFIXES:
            adata = read_st_table(path, coords=coords)
        elif suffix(path) == ".h5":
            raise ReadError(f"{path}: a bare 10x .h5 has no spot positions; open its Space Ranger folder")
        else:
            raise ReadError(
                f"{path}: unknown format {''.join(path.suffixes) or '(no suffix)'}; expected a "
                "Space Ranger folder, .h5ad, or a .csv/.tsv(.gz) counts table"
            )
    check_sparse_matrix(adata.X, path)
    validate_counts(adata, path)
    check_spots(adata, path)
    return adata


def _read_folder(path: Path, library_id: str | None) -> ad.AnnData:
    if (path / "spatial").is_dir() or any(path.glob("*filtered_feature_bc_matrix*")):
        return read_spaceranger(path, library_id=library_id)
    candidates = sorted(path.glob("*.h5ad"))
    if len(candidates) == 1:
        return read_h5ad(candidates[0])
    raise ReadError(
        f"{path}: folder is not a Space Ranger output (no spatial/ folder and no "
        "filtered_feature_bc_matrix) and holds no single .h5ad; pass a file instead"
    )


__all__ = [
    "read",
    "read_spaceranger",
    "read_h5ad",
    "read_st_table",
    "lattice_of",
    "ReadError",
    "DuplicateGeneNamesWarning",
    "READ_FAULTS",
    "MIN_SPOTS",
]
