"""AnnData ``.h5ad`` files (scanpy/squidpy conventions): counts in ``X`` or ``layers["counts"]``,
lattice coordinates in ``obs`` or recovered from ``obsm["spatial"]``."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..lattice import detect_lattice, lattice_from_positions, snap_to_integers
from .common import (
    ReadError,
    check_not_empty,
    check_sparse_matrix,
    has_non_integer,
    set_lattice,
    unique_names,
)


def read_h5ad(path: Path) -> ad.AnnData:
    adata = ad.read_h5ad(path)
    check_sparse_matrix(adata.X, path)  # before any use: scipy does not bounds-check indices
    if "counts" in adata.layers:
        check_sparse_matrix(adata.layers["counts"], path, "layers['counts']")
    if adata.X is None:
        raise ReadError(f"{path}: AnnData has no X matrix")
    check_not_empty(adata, path)
    if adata.var_names.has_duplicates:
        adata.var_names = unique_names(adata.var_names, path)
    if has_non_integer(adata.X) and "counts" in adata.layers:
        adata.X = adata.layers["counts"]
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    spatial = np.asarray(adata.obsm["spatial"], float) if "spatial" in adata.obsm else None
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        row = snap_to_integers(adata.obs["array_row"].to_numpy(dtype=float), f"{path.name} obs['array_row']")
        col = snap_to_integers(adata.obs["array_col"].to_numpy(dtype=float), f"{path.name} obs['array_col']")
        stored = adata.uns.get("stentrans_lattice", {})
        lattice = detect_lattice(
            row, col, spatial=spatial, hint=stored.get("kind"), pitch_um=stored.get("pitch_um")
        )
    elif spatial is not None:
        row, col, lattice = lattice_from_positions(spatial)
    else:
        raise ReadError(
            f"{path}: no coordinates: obs has no 'array_row'/'array_col' and obsm has no 'spatial'"
        )
    adata.obs["array_row"] = row
    adata.obs["array_col"] = col
    if spatial is None:
        adata.obsm["spatial"] = np.column_stack([col, row]).astype(float)
    set_lattice(adata, lattice, path)
    return adata
