"""AnnData ``.h5ad`` files (scanpy/squidpy conventions): counts in ``X`` or ``layers["counts"]``,
lattice coordinates in ``obs`` or recovered from ``obsm["spatial"]``.

A file may hold several libraries (sections), as ``anndata.concat(..., label="library_id")``
and squidpy write them: ``obs["library_id"]`` says which spot belongs to which, and
``uns["spatial"]`` holds one entry (images, scale factors) per library. Each library has its own
lattice, so one is read at a time, never all of them on one lattice.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import SeveralLibrariesError
from ..lattice import detect_lattice, lattice_from_positions, snap_to_integers
from .common import (
    CountsFromRawWarning,
    ReadError,
    check_not_empty,
    check_sparse_matrix,
    has_non_integer,
    set_lattice,
    unique_names,
)
from .enhanced import is_enhanced, read_enhanced

LIBRARY_COLUMN = "library_id"  # obs column naming each spot's library (anndata.concat, squidpy)


def read_h5ad(path: Path, library: str | None = None) -> ad.AnnData:
    """Read an ``.h5ad`` slide; ``library`` picks one library of a file holding several.

    An enhanced file (``uns["stentrans"]``) is read as predictions on its half-pitch lattice
    (:mod:`.enhanced`).

    Raises
    ------
    SeveralLibrariesError
        The file holds several libraries and ``library`` is None (the message names them).
    ReadError
        ``library`` is not in the file, or the file cannot be read as a slide.
    """
    adata = ad.read_h5ad(path)
    check_sparse_matrix(adata.X, path)  # before any use: scipy does not bounds-check indices
    if "counts" in adata.layers:
        check_sparse_matrix(adata.layers["counts"], path, "layers['counts']")
    if adata.raw is not None:
        check_sparse_matrix(adata.raw.X, path, "raw.X")
    if is_enhanced(adata):  # predictions on the half-pitch lattice, not a slide of counts
        return read_enhanced(adata, path)
    return slide_from_anndata(one_library(adata, path, library), path)


def slide_from_anndata(adata: ad.AnnData, path: Path) -> ad.AnnData:
    """An AnnData of counts (from an .h5ad file or a SpatialData table at ``path``) made a slide:
    counts in CSR ``X``, unique gene names, lattice coordinates checked and recorded."""
    if adata.X is None:
        raise ReadError(f"{path}: AnnData has no X matrix")
    check_not_empty(adata, path)
    if adata.var_names.has_duplicates:
        adata.var_names = unique_names(adata.var_names, path)
    adata = with_counts(adata, path)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    spatial = np.asarray(adata.obsm["spatial"], float) if "spatial" in adata.obsm else None
    rebuilt = False  # lattice coordinates recovered from the positions
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        row = snap_to_integers(adata.obs["array_row"].to_numpy(dtype=float), f"{path.name} obs['array_row']")
        col = snap_to_integers(adata.obs["array_col"].to_numpy(dtype=float), f"{path.name} obs['array_col']")
        stored = adata.uns.get("stentrans_lattice", {})
        lattice = detect_lattice(
            row, col, spatial=spatial, hint=stored.get("kind"), pitch_um=stored.get("pitch_um")
        )
    elif spatial is not None:
        row, col, lattice = lattice_from_positions(spatial)
        rebuilt = True
    else:
        raise ReadError(
            f"{path}: no coordinates: obs has no 'array_row'/'array_col' and obsm has no 'spatial'"
        )
    adata.obs["array_row"] = row
    adata.obs["array_col"] = col
    if spatial is None:
        adata.obsm["spatial"] = np.column_stack([col, row]).astype(float)
    set_lattice(adata, lattice, path)
    if rebuilt:
        adata.uns["stentrans_lattice"]["coordinates"] = (
            "rebuilt from obsm['spatial'] (obs has no array_row/array_col)"
        )
    return adata


def with_counts(adata: ad.AnnData, source: Path | str) -> ad.AnnData:
    """``adata`` with raw counts in ``X``: ``adata`` itself when ``X`` holds integers, else a new
    AnnData with ``layers["counts"]`` as ``X``, else one of ``adata.raw``'s integer counts (with a
    :class:`CountsFromRawWarning` naming ``source``), else ``adata`` (for the caller's check to
    refuse). ``adata`` is not modified.

    scanpy's usual workflow keeps the counts in one of those places after normalising ``X``.
    """
    if not has_non_integer(adata.X):
        return adata
    if "counts" in adata.layers and not has_non_integer(adata.layers["counts"]):
        return ad.AnnData(
            X=adata.layers["counts"], obs=adata.obs, var=adata.var, uns=adata.uns, obsm=adata.obsm
        )
    if adata.raw is not None and not has_non_integer(adata.raw.X):
        return _counts_from_raw(adata, source)
    return adata


def _counts_from_raw(adata: ad.AnnData, path: Path | str) -> ad.AnnData:
    """The slide with ``adata.raw``'s integer counts (all its genes) as ``X``, with a warning.

    scanpy's usual normalise + log step leaves the counts only in ``adata.raw`` (same spots; the
    genes may be more than in ``X`` when ``X`` was cut to variable genes).
    """
    warnings.warn(
        f"{path}: X holds non-integer (normalised?) values; using the integer counts in adata.raw "
        f"({adata.raw.n_vars} genes)",
        CountsFromRawWarning,
        stacklevel=3,
    )
    out = adata.raw.to_adata()
    out.raw = None
    if out.var_names.has_duplicates:
        out.var_names = unique_names(out.var_names, path)
    return out


def _spatial_libraries(adata: ad.AnnData) -> list[str]:
    spatial = adata.uns.get("spatial")
    return [str(k) for k in spatial] if isinstance(spatial, dict) else []


def one_library(adata: ad.AnnData, path: Path, library: str | None = None) -> ad.AnnData:
    """The spots and the ``uns["spatial"]`` entry of one library of ``adata``.

    Libraries are named by ``obs["library_id"]`` (which spot belongs to which) and by the keys
    of ``uns["spatial"]``. With one library, ``library`` may be None or its name. The result
    keeps ``obs["library_id"]`` (one value) when the file had it, and only the chosen library's
    ``uns["spatial"]`` entry.

    Raises
    ------
    SeveralLibrariesError
        Several libraries and ``library`` is None: the message lists them with their spot
        counts and says how to pick one (``--library NAME``, ``read(path, library=NAME)``).
    ReadError
        ``library`` names no library of the file, or the spots cannot be told apart (several
        ``uns["spatial"]`` entries but no ``obs["library_id"]``).
    """
    spatial_libs = _spatial_libraries(adata)
    if LIBRARY_COLUMN in adata.obs.columns:
        column = adata.obs[LIBRARY_COLUMN].astype(str).to_numpy()
        names, first, counts = np.unique(column, return_index=True, return_counts=True)
        order = np.argsort(first)
        obs_libs, sizes = [str(n) for n in names[order]], counts[order]
    else:
        column, obs_libs, sizes = None, [], np.zeros(0, int)
    if len(spatial_libs) > 1 and not obs_libs:
        raise ReadError(
            f"{path}: uns['spatial'] holds {len(spatial_libs)} libraries "
            f"({', '.join(repr(n) for n in spatial_libs)}) but obs has no {LIBRARY_COLUMN!r} column "
            f"saying which spot belongs to which; add it (anndata.concat(..., label={LIBRARY_COLUMN!r}))"
        )
    known = obs_libs or spatial_libs
    if library is None and len(known) > 1:
        listed = ", ".join(f"{name!r} ({n} spots)" for name, n in zip(obs_libs, sizes, strict=True))
        raise SeveralLibrariesError(
            f"{path}: holds {len(known)} libraries (sections) in obs[{LIBRARY_COLUMN!r}]: {listed}; each "
            "has its own lattice, so pick one with --library NAME (Python: read(path, library=NAME))",
            known,
        )
    if library is not None and known and library not in known:
        raise ReadError(f"{path}: no library {library!r}; the file holds {', '.join(repr(n) for n in known)}")
    if len(obs_libs) > 1:
        adata = adata[column == library].copy()
    chosen = library if library is not None else (known[0] if known else None)
    if chosen is None:
        return adata
    if obs_libs:
        adata.obs[LIBRARY_COLUMN] = pd.Categorical(np.full(adata.n_obs, chosen))
    if len(spatial_libs) > 1:
        if chosen not in spatial_libs:
            raise ReadError(
                f"{path}: uns['spatial'] has no entry for library {chosen!r} (it has "
                f"{', '.join(repr(n) for n in spatial_libs)})"
            )
        adata.uns["spatial"] = {chosen: adata.uns["spatial"][chosen]}
    return adata
