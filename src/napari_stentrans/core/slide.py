"""A slide prepared for training and enhancement: lattice, usable spots, depth, gene choice."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage

from .classical import TARGET_SUM, normalize
from .io import lattice_of
from .lattice import IndexRaster, Lattice, LatticeError

MaskLike = np.ndarray | pd.DataFrame | pd.Series | list | None


@dataclass
class Slide:
    """Measured spots of one slide plus the user's lost sites.

    Attributes
    ----------
    lattice
        Lattice type and pitch.
    row, col
        Array coordinates of the measured spots.
    barcodes
        Spot ids (obs names).
    counts
        CSR spots x genes raw counts.
    genes
        Gene names.
    depth
        Total counts per spot over all genes.
    usable
        Measured spots that are not declared lost (the only spots used as input or target).
    lost_sites
        ``(k, 2)`` array coordinates declared lost by the user (measured or not).
    in_tissue_unmeasured
        ``(m, 2)`` sites the positions file marks as tissue but that have no counts.
    """

    lattice: Lattice
    row: np.ndarray
    col: np.ndarray
    barcodes: np.ndarray
    counts: sp.csr_matrix
    genes: pd.Index
    depth: np.ndarray
    usable: np.ndarray
    lost_sites: np.ndarray
    in_tissue_unmeasured: np.ndarray

    @property
    def n_usable(self) -> int:
        return int(self.usable.sum())

    def positions(self, which: np.ndarray | None = None) -> np.ndarray:
        """Physical positions in units of the pitch."""
        sel = slice(None) if which is None else which
        return self.lattice.physical(self.row[sel], self.col[sel]) / self.lattice.pitch_um

    def index_raster(self, pad: int = 2) -> IndexRaster:
        rows = np.concatenate([self.row, self.lost_sites[:, 0], self.in_tissue_unmeasured[:, 0]])
        cols = np.concatenate([self.col, self.lost_sites[:, 1], self.in_tissue_unmeasured[:, 1]])
        return IndexRaster.covering(self.lattice, rows, cols, pad=pad)

    def site_images(self, raster: IndexRaster) -> tuple[np.ndarray, np.ndarray]:
        """Boolean images over ``raster`` of the usable measured sites and of the sites to impute.

        Sites to impute are the user's lost sites, in-tissue sites without counts and lattice
        sites enclosed by tissue (holes filled with the lattice's own connectivity).
        """
        measured = raster.mask(self.row[self.usable], self.col[self.usable])
        imputed = ndimage.binary_fill_holes(measured, structure=neighbour_structure(self.lattice))
        for sites in (self.lost_sites, self.in_tissue_unmeasured):
            if len(sites):
                imputed |= raster.mask(sites[:, 0], sites[:, 1])
        return measured, imputed & ~measured

    def hole_sizes(self) -> np.ndarray:
        """Number of sites in each connected region to impute (see :meth:`site_images`), largest first."""
        _, imputed = self.site_images(self.index_raster(pad=2))
        labels, _ = ndimage.label(imputed, structure=neighbour_structure(self.lattice))
        return np.sort(np.bincount(labels.ravel())[1:])[::-1]

    def _usable_counts(self) -> sp.csr_matrix:
        """Counts of the usable spots: the matrix itself (no copy) when every spot is usable."""
        return self.counts if self.usable.all() else self.counts[self.usable]

    def expression(
        self, gene_idx: np.ndarray, normalization: str, target_sum: float = TARGET_SUM
    ) -> np.ndarray:
        """Dense ``(n_usable, n_genes)`` values of the usable spots (normalised or raw)."""
        columns = self.counts[:, gene_idx]  # columns first: the copy is the size of the batch
        raw = (columns if self.usable.all() else columns[self.usable]).toarray()
        if normalization == "none":
            return raw.astype(np.float32)
        return normalize(raw, self.depth[self.usable], target_sum)

    def eligible_genes(self, min_detection: float) -> np.ndarray:
        """Indices of genes detected in at least ``min_detection`` of the usable spots."""
        x = self._usable_counts()
        detected, _, _ = _gene_stats(x)
        return np.flatnonzero(detected / max(1, x.shape[0]) >= min_detection)

    def most_variable(self, candidates: np.ndarray, n: int, target_sum: float = TARGET_SUM) -> np.ndarray:
        """The ``n`` candidates with the largest variance of normalised expression."""
        if len(candidates) <= n:
            return np.asarray(candidates)
        x = self._usable_counts()
        _, total, total_sq = _gene_stats(x, target_sum / np.maximum(self.depth[self.usable], 1.0))
        mean = total[candidates] / x.shape[0]
        var = total_sq[candidates] / x.shape[0] - mean**2
        top = np.argsort(-var, kind="stable")[:n]
        return np.sort(np.asarray(candidates)[top])


def _gene_stats(
    x: sp.csr_matrix, row_scale: np.ndarray | None = None, rows_per_block: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per gene: spots detected, and sum and sum of squares of ``log1p(x * row_scale)``.

    Works on the stored entries a block of rows at a time (``log1p(0) = 0``), so its
    temporaries are the size of a block, not of the matrix (18,000 genes of a full Visium
    slide took over 1 GB of sparse temporaries with whole-matrix operations).
    """
    n_genes = x.shape[1]
    detected, total, total_sq = np.zeros(n_genes), np.zeros(n_genes), np.zeros(n_genes)
    for start in range(0, x.shape[0], rows_per_block):
        stop = min(start + rows_per_block, x.shape[0])
        entries = slice(x.indptr[start], x.indptr[stop])
        genes, data = x.indices[entries], x.data[entries]
        detected += np.bincount(genes[data != 0], minlength=n_genes)
        if row_scale is not None:
            y = np.log1p(np.repeat(row_scale[start:stop], np.diff(x.indptr[start : stop + 1])) * data)
            total += np.bincount(genes, weights=y, minlength=n_genes)
            total_sq += np.bincount(genes, weights=y * y, minlength=n_genes)
    return detected, total, total_sq


def neighbour_structure(lattice: Lattice) -> np.ndarray:
    """3x3 connectivity of the index raster: each site's nearest lattice neighbours."""
    if lattice.kind == "hex":  # index neighbours (+-1, 0), (0, +-1), (1, 1), (-1, -1)
        return np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=bool)
    return ndimage.generate_binary_structure(2, 1)


def slide_from_adata(adata: ad.AnnData, mask: MaskLike = None) -> Slide:
    """Prepare an AnnData read by :func:`napari_stentrans.read` (it is not modified).

    Parameters
    ----------
    adata
        Slide with ``obs["array_row"]``, ``obs["array_col"]`` and raw counts in ``X``.
    mask
        Lost sites: a boolean array over ``obs``, a list/array of ``(array_row, array_col)``
        pairs, a DataFrame with ``array_row``/``array_col`` or ``barcode`` columns, or a
        Series of barcodes.
    """
    for column in ("array_row", "array_col"):
        if column not in adata.obs:
            raise LatticeError(f"obs has no {column!r} column; read the slide with napari_stentrans.read")
    lattice = lattice_of(adata)
    row = adata.obs["array_row"].to_numpy(dtype=np.int64)
    col = adata.obs["array_col"].to_numpy(dtype=np.int64)
    lattice.to_index(row, col)
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    depth = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    lost = _lost_sites(mask, adata, row, col)
    if len(lost):
        lattice.to_index(lost[:, 0], lost[:, 1])
    is_lost = np.isin(site_keys(row, col), site_keys(lost[:, 0], lost[:, 1]))
    usable = ~is_lost & (depth > 0)
    extra = adata.uns.get("stentrans_lattice", {}).get("in_tissue_unmeasured")
    extra = np.zeros((0, 2), np.int64) if extra is None else np.asarray(extra, dtype=np.int64).reshape(-1, 2)
    return Slide(
        lattice=lattice,
        row=row,
        col=col,
        barcodes=adata.obs_names.to_numpy(dtype=str),
        counts=counts,
        genes=adata.var_names,
        depth=depth,
        usable=usable,
        lost_sites=lost,
        in_tissue_unmeasured=extra,
    )


def site_keys(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """One int64 key per (row, col) site, for vectorised set operations on sites."""
    return (np.asarray(row, np.int64) << 32) + (np.asarray(col, np.int64) & 0xFFFFFFFF)


def _lost_sites(mask: MaskLike, adata: ad.AnnData, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    if mask is None:
        return np.zeros((0, 2), np.int64)
    if isinstance(mask, pd.DataFrame):
        if {"array_row", "array_col"} <= set(mask.columns):
            return mask[["array_row", "array_col"]].to_numpy(dtype=np.int64).reshape(-1, 2)
        if "barcode" in mask.columns:
            mask = mask["barcode"]
        else:
            raise ValueError(
                f"mask table needs array_row/array_col or barcode columns, found {list(mask.columns)}"
            )
    if isinstance(mask, pd.Series) and mask.dtype != bool:
        names = pd.Index(mask.astype(str))
        unknown = ~names.isin(adata.obs_names)
        if unknown.any():
            raise ValueError(
                f"mask names {int(unknown.sum())} unknown barcode(s), e.g. {names[unknown][0]!r}"
            )
        sel = adata.obs_names.isin(names)
        return np.column_stack([row[sel], col[sel]])
    arr = np.asarray(mask)
    if arr.dtype == bool:
        if arr.shape != (adata.n_obs,):
            raise ValueError(f"boolean mask has shape {arr.shape}, expected ({adata.n_obs},)")
        return np.column_stack([row[arr], col[arr]])
    arr = arr.astype(np.int64).reshape(-1, 2) if arr.size else np.zeros((0, 2), np.int64)
    return arr
