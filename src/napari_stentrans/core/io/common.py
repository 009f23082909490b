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

from ..errors import LatticeError, ReadError
from ..lattice import Lattice, detect_lattice

# what truncated, corrupt or mis-typed files raise inside pandas, h5py, gzip, scipy and PIL
READ_FAULTS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zlib.error, UnicodeDecodeError)


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
    except READ_FAULTS as exc:
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
) -> None:
    """Record the lattice in ``uns["stentrans_lattice"]``; ``tissue_mask``: the reader read a
    positions file that lists every site with its ``in_tissue`` flag (see ``core/slide.py``)."""
    adata.obs["array_row"] = adata.obs["array_row"].astype(np.int64)
    adata.obs["array_col"] = adata.obs["array_col"].astype(np.int64)
    info = {"kind": lattice.kind, "pitch_um": float(lattice.pitch_um), "source": str(source)}
    if in_tissue_unmeasured is not None and len(in_tissue_unmeasured):
        info["in_tissue_unmeasured"] = np.asarray(in_tissue_unmeasured, dtype=np.int64)
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


def has_non_integer(x) -> bool:
    data = x.data if sp.issparse(x) else np.asarray(x)
    data = np.asarray(data)
    finite = data[np.isfinite(data)]
    return bool(finite.size and np.any(finite != np.round(finite)))


MIN_SPOTS = 3  # fewer spots fix no lattice and leave nothing to learn from


def check_not_empty(adata: ad.AnnData, path: Path) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ReadError(f"{path}: empty count matrix ({adata.n_obs} spots x {adata.n_vars} genes)")


def validate_counts(adata: ad.AnnData, path: Path) -> None:
    check_not_empty(adata, path)
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not np.all(np.isfinite(data)):
        raise ReadError(f"{path}: count matrix contains NaN or infinite values")
    if data.size and data.min() < 0:
        raise ReadError(f"{path}: count matrix contains negative values (min {data.min():g})")
    if has_non_integer(adata.X):
        raise ReadError(
            f"{path}: count matrix has non-integer values; stEnTrans needs raw counts "
            "(store them in X or layers['counts'])"
        )
    if adata.n_obs < MIN_SPOTS:
        raise ReadError(f"{path}: only {adata.n_obs} spot(s); a slide needs at least {MIN_SPOTS}")
    if not (data != 0).any():
        raise ReadError(f"{path}: every count is zero ({adata.n_obs} spots x {adata.n_vars} genes)")
