"""What every reader shares: the error type, fault handling, gene names, lattice and count checks."""

from __future__ import annotations

import gzip
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, LatticeError, ReadError
from ..lattice import Lattice, detect_lattice

# what truncated, corrupt or mis-typed files raise inside pandas, h5py, gzip, scipy and PIL
READ_FAULTS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zlib.error, UnicodeDecodeError)


def _foreign_faults() -> tuple[type[BaseException], ...]:
    """Exceptions of anndata and PIL that derive from nothing in READ_FAULTS: an unknown
    ``encoding-type`` in an .h5ad (IORegistryError) and a decompression bomb (an image whose
    header claims more than twice PIL's pixel limit, ~179 million pixels)."""
    found: list[type[BaseException]] = []
    try:
        from anndata._io.specs.registry import IORegistryError

        found.append(IORegistryError)
    except ImportError:  # pragma: no cover - anndata moved it
        pass
    try:
        from PIL.Image import DecompressionBombError

        found.append(DecompressionBombError)
    except ImportError:  # pragma: no cover - PIL is a dependency
        pass
    return tuple(found)


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a fault while reading ``path`` into a ReadError that names that file."""
    try:
        yield
    except ReadError:
        raise
    except LatticeError as exc:
        raise ReadError(f"{path}: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise ReadError(f"{path}: file is empty") from exc
    except (*READ_FAULTS, *_foreign_faults()) as exc:
        raise ReadError(
            f"{path}: cannot be read, truncated or corrupt? ({type(exc).__name__}: {exc})"
        ) from exc


def suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zip", ".xz"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def first(folder: Path, patterns: list[str]) -> Path | None:
    if not folder.is_dir():
        return None
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


def open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt")
    return open(path, encoding="utf-8", errors="replace")


class DuplicateGeneNamesWarning(UserWarning):
    """Gene names repeated in a file were made unique (``GENE``, ``GENE-1``, ...)."""


class OptionalPartWarning(UserWarning):
    """An optional part of a slide (image, scale factors, metadata) that is missing, foreign or
    unreadable was left out; the slide itself (counts and positions) was read."""


class LeftOutFeaturesWarning(UserWarning):
    """Features of a 10x matrix other than genes (antibody or CRISPR guide captures) were left
    out: only ``Gene Expression`` is read (also in ``uns["stentrans_read_note"]``)."""


class CountsFromRawWarning(UserWarning):
    """``X`` of an ``.h5ad`` holds normalised values; the integer counts of ``adata.raw`` were used."""


# the numeric keys of a Space Ranger scalefactors_json.json (Visium and Visium HD); anything
# else there (fiducials, transforms, serial numbers) is not a scale factor
SCALEFACTOR_KEYS = (
    "tissue_hires_scalef",
    "tissue_lowres_scalef",
    "spot_diameter_fullres",
    "fiducial_diameter_fullres",
    "regist_target_img_scalef",
    "bin_size_um",
    "microns_per_pixel",
)
IMAGE_RESOLUTIONS = ("hires", "lowres")


def _number(value) -> float | None:
    """A finite real number as float (numpy scalars and 0-d arrays included), else None."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _positive_number(value) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def clean_scalefactors(raw, source) -> dict[str, float]:
    """Keep the known scale factors that are finite positive numbers, as floats.

    Parameters
    ----------
    raw
        The parsed ``scalefactors_json.json`` (or ``uns["spatial"][library]["scalefactors"]``).
    source
        What to name in the warning (the JSON file, or ``file: uns['spatial'][...]``).

    Returns
    -------
    dict of ``SCALEFACTOR_KEYS`` -> float; other keys and bad values are left out with one
    :class:`OptionalPartWarning` listing them.
    """
    if not isinstance(raw, dict):
        warnings.warn(
            f"{source}: scale factors are a {type(raw).__name__}, not a mapping; ignored "
            "(the H&E image is left out)",
            OptionalPartWarning,
            stacklevel=3,
        )
        return {}
    kept, ignored = {}, []
    for key, value in raw.items():
        number = _positive_number(value) if key in SCALEFACTOR_KEYS else None
        if number is None:
            ignored.append(str(key) if key not in SCALEFACTOR_KEYS else f"{key}={value!r}")
        else:
            kept[str(key)] = number
    if ignored:
        shown = ", ".join(ignored[:4]) + (", ..." if len(ignored) > 4 else "")
        warnings.warn(
            f"{source}: ignored {len(ignored)} entr{'y' if len(ignored) == 1 else 'ies'} that "
            f"{'is' if len(ignored) == 1 else 'are'} not a scale factor or not a positive number "
            f"({shown}); known keys: {', '.join(SCALEFACTOR_KEYS)}",
            OptionalPartWarning,
            stacklevel=3,
        )
    return kept


def _is_image(value) -> bool:
    """An RGB(A) or grey image array: ``(h, w)``, ``(h, w, 3)`` or ``(h, w, 4)``, numeric, finite."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "uif" or value.size == 0:
        return False
    if value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (3, 4)):
        return False
    return value.dtype.kind != "f" or bool(np.isfinite(value).all())


def clean_spatial(spatial, source) -> dict:
    """``uns["spatial"]`` reduced to what the readers, writers and viewers rely on.

    Each library keeps ``images`` (``hires``/``lowres`` image arrays that have their
    ``tissue_{res}_scalef``), ``scalefactors`` (:func:`clean_scalefactors`) and ``metadata``
    (string or number entries). Anything else (an image without its scale factor, a list where
    an image belongs, nested objects HDF5 cannot store) is left out with an
    :class:`OptionalPartWarning` naming ``source`` and the entry; the slide is never refused for
    an optional part.
    """
    if not isinstance(spatial, dict):
        warnings.warn(
            f"{source}: uns['spatial'] is a {type(spatial).__name__}, not a mapping of libraries; ignored",
            OptionalPartWarning,
            stacklevel=3,
        )
        return {}
    out = {}
    for library, entry in spatial.items():
        where = f"{source}: uns['spatial'][{library!r}]"
        if not isinstance(entry, dict):
            warnings.warn(
                f"{where} is a {type(entry).__name__}, not a library entry; ignored",
                OptionalPartWarning,
                stacklevel=3,
            )
            continue
        scalefactors = clean_scalefactors(entry.get("scalefactors", {}), f"{where}['scalefactors']")
        images, skipped = {}, []
        raw_images = entry.get("images", {})
        for res, image in raw_images.items() if isinstance(raw_images, dict) else []:
            if res not in IMAGE_RESOLUTIONS or not _is_image(image):
                skipped.append(f"{res} (not an image array)")
            elif f"tissue_{res}_scalef" not in scalefactors:
                skipped.append(f"{res} (no tissue_{res}_scalef to place it)")
            else:
                images[res] = image
        if not isinstance(raw_images, dict):
            skipped.append(f"images ({type(raw_images).__name__})")
        if skipped:
            warnings.warn(
                f"{where}: image(s) left out: {', '.join(map(str, skipped))}",
                OptionalPartWarning,
                stacklevel=3,
            )
        metadata = entry.get("metadata", {})
        metadata = {
            str(k): v
            for k, v in (metadata.items() if isinstance(metadata, dict) else [])
            if isinstance(v, str) or _number(v) is not None
        }
        out[str(library)] = {"images": images, "scalefactors": scalefactors, "metadata": metadata}
    return out


def unique_names(names, source: Path) -> pd.Index:
    """Gene names made unique the scanpy way (``GENE``, ``GENE-1``, ...), index name None.

    10x references repeat some gene symbols (the Ensembl ids differ), so repeats are kept as
    separate genes, renamed, with a warning naming the file.
    """
    raw = pd.Index(np.asarray(names, dtype=str))
    repeated = raw[raw.duplicated()].unique()
    if len(repeated):
        warnings.warn(
            f"{source}: {len(repeated)} gene name(s) occur more than once (e.g. {repeated[0]!r}); "
            f"kept as separate genes named {repeated[0]}, {repeated[0]}-1, ...",
            DuplicateGeneNamesWarning,
            stacklevel=3,
        )
    index = ad.utils.make_index_unique(raw)
    index.name = None
    return index


def set_lattice(
    adata: ad.AnnData,
    lattice: Lattice,
    source: Path,
    in_tissue_unmeasured: np.ndarray | None = None,
    tissue_mask: bool = False,
    unmeasured_barcodes: np.ndarray | None = None,
) -> None:
    """Record the lattice in ``uns["stentrans_lattice"]``; ``tissue_mask``: the reader read a
    positions file that lists every site with its ``in_tissue`` flag (see ``core/slide.py``);
    ``unmeasured_barcodes``: the barcodes of ``in_tissue_unmeasured``, in its order (the
    output names those imputed sites by them)."""
    adata.obs["array_row"] = adata.obs["array_row"].astype(np.int64)
    adata.obs["array_col"] = adata.obs["array_col"].astype(np.int64)
    info = {"kind": lattice.kind, "pitch_um": float(lattice.pitch_um), "source": str(source)}
    if in_tissue_unmeasured is not None and len(in_tissue_unmeasured):
        info["in_tissue_unmeasured"] = np.asarray(in_tissue_unmeasured, dtype=np.int64)
        if unmeasured_barcodes is not None:
            info["in_tissue_unmeasured_barcodes"] = np.asarray(unmeasured_barcodes, dtype=str)
    if tissue_mask:
        info["tissue_mask"] = True
    adata.uns["stentrans_lattice"] = info


def lattice_of(adata: ad.AnnData) -> Lattice:
    """The lattice recorded by a reader (or detected from ``obs`` when absent)."""
    info = adata.uns.get("stentrans_lattice")
    if info is not None:
        return Lattice(info["kind"], float(info.get("pitch_um", 0.0)))
    spatial = np.asarray(adata.obsm["spatial"], float) if "spatial" in adata.obsm else None
    return detect_lattice(
        adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy(), spatial=spatial
    )


def source_of(adata: ad.AnnData) -> str:
    """The file a reader read the slide from (``uns["stentrans_lattice"]["source"]``); ``""`` when
    unknown (an AnnData built in memory, the synthetic sample)."""
    info = adata.uns.get("stentrans_lattice")
    source = info.get("source") if isinstance(info, dict) else None
    return str(source) if source else ""


def library_of(adata: ad.AnnData) -> str | None:
    """The name of the slide's one library: ``obs["library_id"]`` when it has one value, else the
    only key of ``uns["spatial"]``; None when unknown or when there are several."""
    if "library_id" in adata.obs.columns:
        names = adata.obs["library_id"].astype(str).unique()
        return str(names[0]) if len(names) == 1 else None
    spatial = adata.uns.get("spatial")
    if isinstance(spatial, dict) and len(spatial) == 1:
        return str(next(iter(spatial)))
    return None


def add_read_note(adata: ad.AnnData, note: str, first: bool = False) -> None:
    """Add ``note`` to ``uns["stentrans_read_note"]`` (what ``info`` prints), after the notes
    already there (``first``: before them), joined by ``"; "``."""
    earlier = adata.uns.get("stentrans_read_note")
    if earlier:
        note = f"{note}; {earlier}" if first else f"{earlier}; {note}"
    adata.uns["stentrans_read_note"] = note


def has_non_integer(x) -> bool:
    data = x.data if sp.issparse(x) else np.asarray(x)
    data = np.asarray(data)
    finite = data[np.isfinite(data)]
    return bool(finite.size and np.any(finite != np.round(finite)))


MIN_SPOTS = 3  # fewer spots fix no lattice and leave nothing to learn from


def check_not_empty(adata: ad.AnnData, path: Path) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ReadError(f"{path}: empty count matrix ({adata.n_obs} spots x {adata.n_vars} genes)")


def check_count_values(x, what: str, error: type[Exception] = InputError, also: str = "") -> None:
    """Refuse a matrix that cannot hold raw counts: NaN or infinite, negative or non-integer values.

    ``what`` names the matrix in the message (a file's count matrix, ``adata.X``); ``error`` is
    the exception raised (:class:`ReadError` for a file, :class:`InputError` for an AnnData);
    ``also`` ends the non-integer message (e.g. that ``adata.raw`` holds no counts either).
    """
    data = x.data if sp.issparse(x) else np.asarray(x)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int((~finite).sum())
        raise error(f"{what} contains NaN or infinite values ({bad} {'entry' if bad == 1 else 'entries'})")
    if data.size and data.min() < 0:
        raise error(f"{what} contains negative values (min {data.min():g})")
    if has_non_integer(x):
        example = np.format_float_positional(data[data != np.round(data)].flat[0])  # 2.000001, not 2
        raise error(
            f"{what} has non-integer values (e.g. {example}: normalised or log values?); stEnTrans "
            f"needs raw counts (store them in X, layers['counts'] or adata.raw){also}"
        )


def validate_counts(adata: ad.AnnData, path: Path) -> None:
    check_not_empty(adata, path)
    check_count_values(adata.X, f"{path}: count matrix", ReadError)
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if adata.n_obs < MIN_SPOTS:
        raise ReadError(f"{path}: only {adata.n_obs} spot(s); a slide needs at least {MIN_SPOTS}")
    if not (data != 0).any():
        raise ReadError(f"{path}: every count is zero ({adata.n_obs} spots x {adata.n_vars} genes)")


def check_compressed(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    n_major: int,
    n_minor: int,
    path: Path,
    what: str = "count matrix",
) -> None:
    """Raise ReadError unless ``(data, indices, indptr)`` is a valid CSR/CSC structure.

    ``n_major`` is the number of compressed rows (CSR) or columns (CSC): ``indptr`` must have
    ``n_major + 1`` entries, start at 0, never decrease and end at ``len(indices) ==
    len(data)``; every index must lie in ``[0, n_minor)``. SciPy does not bounds-check indices
    when it builds a matrix, and an index out of range later reads or writes memory that is not
    the matrix's (segfaults, or different counts on each read). Vectorised: O(nnz).
    """
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    n_data = np.asarray(data).shape[0] if np.ndim(data) else -1
    problem = None
    if indptr.ndim != 1 or indptr.shape[0] != n_major + 1:
        problem = f"indptr has {indptr.size} entries; the shape needs {n_major + 1}"
    elif indices.ndim != 1 or indices.shape[0] != n_data:
        problem = f"{indices.size} indices but {n_data} values"
    elif indptr[0] != 0 or indptr[-1] != n_data:
        problem = f"indptr runs from {indptr[0]} to {indptr[-1]}; expected 0 to {n_data}"
    elif n_major and (np.diff(indptr) < 0).any():
        at = int(np.flatnonzero(np.diff(indptr) < 0)[0])
        problem = f"indptr decreases at position {at} ({indptr[at]} -> {indptr[at + 1]})"
    elif n_data and (indices.min() < 0 or indices.max() >= n_minor):
        bad = int(indices.max()) if indices.max() >= n_minor else int(indices.min())
        problem = f"index {bad} is out of range (0..{n_minor - 1})"
    if problem is not None:
        raise ReadError(f"{path}: corrupt sparse {what}: {problem}")


def check_sparse_matrix(x, path: Path, what: str = "count matrix") -> None:
    """:func:`check_compressed` for a SciPy CSR/CSC matrix (anything else passes)."""
    if sp.issparse(x) and x.format in ("csr", "csc"):
        n_major, n_minor = x.shape if x.format == "csr" else x.shape[::-1]
        check_compressed(x.data, x.indices, x.indptr, n_major, n_minor, path, what)


# a spot farther than this many pitches from every other spot lies off any capture area we
# know (a Visium area spans 78 x 64 pitches, an ST array 35 x 33): a typo or a sentinel value
STRAY_PITCHES = 100.0
# the index raster of a slide may hold this many sites per spot (at least MIN_RASTER_SITES);
# a real slide holds about 1-4 (tissue with holes), spots thousands of pitches apart far more
RASTER_SITES_PER_SPOT = 64
MIN_RASTER_SITES = 1 << 20


def check_spots(adata: ad.AnnData, path: Path) -> None:
    """Raise ReadError for spots whose names or positions would silently corrupt the output.

    Refused: repeated obs names (a barcode mask would hit every spot of that name and the
    output would repeat names), non-finite ``obsm["spatial"]`` (every output position becomes
    NaN), and spots far off the slide (see :func:`stray_spot`), whose rasters would cost memory
    in proportion to the bounding box.
    """
    names = adata.obs_names
    if names.has_duplicates:
        repeated = names[names.duplicated()].unique()
        raise ReadError(
            f"{path}: spot name {repeated[0]!r} occurs more than once ({len(repeated)} repeated "
            "name(s)); every spot needs its own barcode (e.g. adata.obs_names_make_unique())"
        )
    if "spatial" in adata.obsm:
        spatial = np.asarray(adata.obsm["spatial"], dtype=float)
        bad = ~np.isfinite(spatial).all(axis=1) if spatial.ndim == 2 else np.zeros(0, bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ReadError(
                f"{path}: obsm['spatial'] of spot {names[i]!r} is {spatial[i].tolist()} "
                f"({int(bad.sum())} spot(s) without a finite position)"
            )
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        problem = stray_spot(
            lattice_of(adata),
            adata.obs["array_row"].to_numpy(dtype=np.int64),
            adata.obs["array_col"].to_numpy(dtype=np.int64),
            names,
        )
        if problem is not None:
            raise ReadError(f"{path}: {problem}")


def stray_spot(lattice: Lattice, row: np.ndarray, col: np.ndarray, names) -> str | None:
    """A message naming a spot far off the slide, or None when the spots are compact.

    Two rules, both in units of the lattice pitch: a spot farther than :data:`STRAY_PITCHES`
    from every other spot, and a bounding box (in index coordinates: the rasters' size) holding
    more than ``RASTER_SITES_PER_SPOT`` sites per spot (a group of stray spots together), in
    which case the spot farthest from the median position is named.
    """
    n = len(row)
    if n < 2:
        return None
    u, v = lattice.to_index(row, col)
    box = float(u.max() - u.min() + 1) * float(v.max() - v.min() + 1)
    xy = lattice.physical(row, col) / lattice.pitch_um
    from scipy.spatial import cKDTree

    nearest = cKDTree(xy).query(xy, k=2)[0][:, 1]
    far = nearest > STRAY_PITCHES
    if far.any():
        i = int(np.argmax(nearest))
        return (
            f"spot {names[i]!r} at array_row {row[i]}, array_col {col[i]} is {nearest[i]:.0f} pitches "
            f"from every other spot ({int(far.sum())} such spot(s)); a coordinate typo or a "
            "placeholder? Remove the spot or correct its coordinates"
        )
    if box > max(RASTER_SITES_PER_SPOT * n, MIN_RASTER_SITES):
        centre = np.median(xy, axis=0)
        i = int(np.argmax(np.linalg.norm(xy - centre, axis=1)))
        return (
            f"the spots span array_row {row.min()}..{row.max()}, array_col {col.min()}..{col.max()}: "
            f"{box:.3g} lattice sites for {n} spots; spot {names[i]!r} at array_row {row[i]}, "
            f"array_col {col[i]} lies farthest from the others. Remove stray spots or correct "
            "their coordinates"
        )
    return None
