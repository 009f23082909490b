"""A slide prepared once for fitting and enhancement: lattice, usable spots, depth, gene statistics.

Everything the estimators ask of a slide is computed here, once per slide: which spots are
usable, each spot's depth, which genes are detected and how variable they are (cached), which
sites lie in a gap, and a fingerprint that tells whether a model is applied to the slide it was
fitted on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage
from scipy.spatial import cKDTree

from .classical import TARGET_SUM, normalize
from .errors import InputError, LatticeError
from .io import lattice_of
from .io.common import stray_spot
from .io.enhanced import refuse_enhanced
from .lattice import IndexRaster, Lattice

MaskLike = np.ndarray | pd.DataFrame | pd.Series | list | None
# input pitches: a site farther than this from every usable spot lies in a gap. New sites between
# measured spots are 0.5 (edges) or 0.71 (square cell centres) from one; lattice sites without a
# measurement are at least 1.
GAP_DISTANCE = 0.9


@dataclass
class Slide:
    """Measured spots of one slide plus the user's lost sites.

    Attributes
    ----------
    adata
        The AnnData the slide was prepared from (never modified).
    lattice
        Lattice type and pitch.
    row, col
        ``(n_spots,)`` array coordinates of the measured spots.
    barcodes
        ``(n_spots,)`` spot ids (obs names).
    counts
        CSR ``(n_spots, n_genes)`` raw counts.
    genes
        Gene names.
    depth
        ``(n_spots,)`` total counts per spot over all genes.
    not_lost
        Measured spots that are not declared lost.
    usable
        Spots that are not lost and have counts: the only spots used as input or target.
    lost_sites
        ``(k, 2)`` array coordinates declared lost by the user (measured or not).
    in_tissue_unmeasured
        ``(m, 2)`` sites the positions file marks as tissue but that have no counts.
    """

    adata: ad.AnnData
    lattice: Lattice
    row: np.ndarray
    col: np.ndarray
    barcodes: np.ndarray
    counts: sp.csr_matrix
    genes: pd.Index
    depth: np.ndarray
    not_lost: np.ndarray
    usable: np.ndarray
    lost_sites: np.ndarray
    in_tissue_unmeasured: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_adata(cls, adata: ad.AnnData, mask: MaskLike = None) -> Slide:
        """Prepare an AnnData read by :func:`napari_stentrans.read` (it is not modified).

        Parameters
        ----------
        adata
            Slide with ``obs["array_row"]``, ``obs["array_col"]`` and raw counts in ``X``.
        mask
            Lost sites: a boolean array over ``obs``, a list/array of ``(array_row,
            array_col)`` pairs, a DataFrame with ``array_row``/``array_col`` or ``barcode``
            columns, or a Series of barcodes.

        Raises
        ------
        LatticeError
            Coordinates missing or off the slide's lattice (the mask's included).
        InputError
            A mask of the wrong shape, with unknown barcodes or without usable columns; spots
            of several libraries (``obs["library_id"]``), which never share a lattice; or an
            enhanced slide (its ``X`` holds predictions, not counts).
        """
        refuse_enhanced(adata)
        for column in ("array_row", "array_col"):
            if column not in adata.obs:
                raise LatticeError(f"obs has no {column!r} column; read the slide with napari_stentrans.read")
        if "library_id" in adata.obs.columns:
            libraries = adata.obs["library_id"].astype(str).unique()
            if len(libraries) > 1:
                raise InputError(
                    f"the slide holds spots of {len(libraries)} libraries (obs['library_id']: "
                    f"{', '.join(repr(n) for n in libraries[:5])}); each has its own lattice: use one, "
                    "e.g. adata[adata.obs['library_id'] == NAME], or read(path, library=NAME)"
                )
        lattice = lattice_of(adata)
        row = adata.obs["array_row"].to_numpy(dtype=np.int64)
        col = adata.obs["array_col"].to_numpy(dtype=np.int64)
        lattice.to_index(row, col)
        stray = stray_spot(lattice, row, col, adata.obs_names)
        if stray is not None:  # rasters follow the bounding box: refuse before allocating one
            raise LatticeError(stray)
        counts = sp.csr_matrix(adata.X, dtype=np.float32)
        depth = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
        lost = _lost_sites(mask, adata, row, col)
        if len(lost):
            lattice.to_index(lost[:, 0], lost[:, 1])
        extra = adata.uns.get("stentrans_lattice", {}).get("in_tissue_unmeasured")
        extra = (
            np.zeros((0, 2), np.int64) if extra is None else np.asarray(extra, dtype=np.int64).reshape(-1, 2)
        )
        _check_lost_on_slide(
            lattice, lost, np.concatenate([row, extra[:, 0]]), np.concatenate([col, extra[:, 1]])
        )
        not_lost = ~np.isin(site_keys(row, col), site_keys(lost[:, 0], lost[:, 1]))
        return cls(
            adata=adata,
            lattice=lattice,
            row=row,
            col=col,
            barcodes=adata.obs_names.to_numpy(dtype=str),
            counts=counts,
            genes=adata.var_names,
            depth=depth,
            not_lost=not_lost,
            usable=not_lost & (depth > 0),
            lost_sites=lost,
            in_tissue_unmeasured=extra,
        )

    @property
    def n_usable(self) -> int:
        return int(self.usable.sum())

    @property
    def fingerprint(self) -> str:
        """A digest of the measured data (lattice, spots, depths, genes), not of the lost sites.

        Equal fingerprints mean the same slide: a model's classical choice is kept there and
        re-chosen on any other slide.
        """
        if "fingerprint" not in self._cache:
            digest = hashlib.sha1(f"{self.lattice.kind}|{self.lattice.pitch_um:g}".encode())
            for array in (self.row, self.col, self.depth):
                digest.update(np.ascontiguousarray(array).tobytes())
            digest.update("\n".join(map(str, self.genes)).encode())
            self._cache["fingerprint"] = digest.hexdigest()[:16]
        return self._cache["fingerprint"]

    def positions(self, which: np.ndarray | None = None) -> np.ndarray:
        """Physical positions ``(n, 2)`` in units of the pitch."""
        sel = slice(None) if which is None else which
        return self.lattice.physical(self.row[sel], self.col[sel]) / self.lattice.pitch_um

    def index_raster(self, pad: int = 2) -> IndexRaster:
        rows = np.concatenate([self.row, self.lost_sites[:, 0], self.in_tissue_unmeasured[:, 0]])
        cols = np.concatenate([self.col, self.lost_sites[:, 1], self.in_tissue_unmeasured[:, 1]])
        return IndexRaster.covering(self.lattice, rows, cols, pad=pad)

    def site_images(self, raster: IndexRaster) -> tuple[np.ndarray, np.ndarray]:
        """Boolean images over ``raster`` of the usable measured sites and of the sites to impute.

        Sites to impute are the user's lost sites, in-tissue sites without counts (spots of the
        matrix whose counts are all 0, and sites the positions file marks in tissue but the
        matrix lacks), and lattice sites enclosed by tissue (holes filled with the lattice's own
        connectivity). So every spot of the input is an output site, measured or imputed: an
        empty spot and a missing one give the same sites. Every site to impute lies in a gap
        (:meth:`in_gap`): it is a lattice site without a usable spot, so at least one pitch
        from the nearest.
        """
        measured = raster.mask(self.row[self.usable], self.col[self.usable])
        imputed = ndimage.binary_fill_holes(measured, structure=neighbour_structure(self.lattice))
        empty = ~self.usable
        imputed |= raster.mask(self.row[empty], self.col[empty])
        for sites in (self.lost_sites, self.in_tissue_unmeasured):
            if len(sites):
                imputed |= raster.mask(sites[:, 0], sites[:, 1])
        return measured, imputed & ~measured

    def hole_sizes(self) -> np.ndarray:
        """Number of sites in each connected region to impute (see :meth:`site_images`), largest first."""
        _, imputed = self.site_images(self.index_raster(pad=2))
        labels, _ = ndimage.label(imputed, structure=neighbour_structure(self.lattice))
        return np.sort(np.bincount(labels.ravel())[1:])[::-1]

    def in_gap(self, xy: np.ndarray) -> np.ndarray:
        """Which positions ``(n, 2)`` (pitch units) lie in a gap: no usable spot within 0.9 pitch.

        The one definition of a gap: sites in gaps take the rank and smoothers chosen on
        hole-filling pairs (:class:`~.classical.ClassicalParams`).
        """
        return cKDTree(self.positions(self.usable)).query(xy)[0] > GAP_DISTANCE

    def expression(
        self, gene_idx: np.ndarray, normalization: str = "log1p", target_sum: float = TARGET_SUM
    ) -> np.ndarray:
        """Dense ``(n_usable, n_genes)`` values of the usable spots (normalised or raw)."""
        columns = self.counts[:, gene_idx]  # columns first: the copy is the size of the batch
        raw = (columns if self.usable.all() else columns[self.usable]).toarray()
        if normalization == "none":
            return raw.astype(np.float32)
        return normalize(raw, self.depth[self.usable], target_sum)

    def _usable_counts(self) -> sp.csr_matrix:
        """Counts of the usable spots: the matrix itself (no copy) when every spot is usable."""
        return self.counts if self.usable.all() else self.counts[self.usable]

    def _stats(self, target_sum: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cached per-gene detection and sums over the usable spots (see :func:`_gene_stats`)."""
        key = ("stats", target_sum)
        if key not in self._cache:
            x = self._usable_counts()
            scale = None if target_sum is None else target_sum / np.maximum(self.depth[self.usable], 1.0)
            self._cache[key] = _gene_stats(x, scale)
        return self._cache[key]

    def eligible_genes(self, min_detection: float) -> np.ndarray:
        """Indices of genes detected in at least ``min_detection`` of the usable spots."""
        detected = self._stats(None)[0]
        return np.flatnonzero(detected / max(1, self.n_usable) >= min_detection)

    def most_variable(self, candidates: np.ndarray, n: int, target_sum: float = TARGET_SUM) -> np.ndarray:
        """The ``n`` candidates with the largest variance of normalised expression, sorted."""
        if len(candidates) <= n:
            return np.asarray(candidates)
        _, total, total_sq = self._stats(target_sum)
        n_spots = self._usable_counts().shape[0]
        mean = total[candidates] / n_spots
        var = total_sq[candidates] / n_spots - mean**2
        top = np.argsort(-var, kind="stable")[:n]
        return np.sort(np.asarray(candidates)[top])

    def training_genes(self, n: int, min_detection: float) -> np.ndarray:
        """The ``n`` most variable genes detected in at least ``min_detection`` of the spots.

        Raises
        ------
        InputError
            No gene passes the detection threshold.
        """
        eligible = self.eligible_genes(min_detection)
        if len(eligible) == 0:
            raise InputError(
                f"no gene is detected in at least {min_detection:.0%} of the spots; lower min_detection"
            )
        return self.most_variable(eligible, n)

    def gene_indices(self, genes, min_detection: float) -> np.ndarray:
        """Gene indices to enhance: names, the N most variable detected genes, or all detected.

        Parameters
        ----------
        genes
            ``None`` (every gene detected in at least ``min_detection`` of the spots), an
            integer N (the N most variable of those) or gene names.

        Raises
        ------
        InputError
            A non-positive N, unknown gene names, or no gene to enhance.
        """
        if genes is None:
            out = self.eligible_genes(min_detection)
        elif isinstance(genes, int | np.integer):
            if genes < 1:
                raise InputError(f"number of genes must be positive, got {genes}")
            out = self.most_variable(self.eligible_genes(min_detection), int(genes))
        else:
            names = pd.Index([str(g) for g in genes])
            missing = ~names.isin(self.genes)
            if missing.any():
                raise InputError(
                    f"{int(missing.sum())} requested gene(s) not in the slide, e.g. {names[missing][0]!r}"
                )
            out = np.sort(self.genes.get_indexer(names.unique()))
        if len(out) == 0:
            raise InputError(
                f"no gene to enhance: none is detected in at least {min_detection:.0%} of the spots"
            )
        return out


def as_slide(data: ad.AnnData | Slide, mask: MaskLike = None) -> Slide:
    """A prepared slide: ``data`` itself when it is one (and no other mask is given)."""
    if isinstance(data, Slide):
        if mask is not None:
            return Slide.from_adata(data.adata, mask)
        return data
    return Slide.from_adata(data, mask)


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


def site_keys(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """One int64 key per (row, col) site, for vectorised set operations on sites."""
    return (np.asarray(row, np.int64) << 32) + (np.asarray(col, np.int64) & 0xFFFFFFFF)


def _check_lost_on_slide(lattice: Lattice, lost: np.ndarray, row: np.ndarray, col: np.ndarray) -> None:
    """Raise InputError for a lost site outside the slide's extent (its spots' box plus one site).

    A lost site is imputed from the spots around it: one far outside them would be "imputed"
    from nothing, thousands of pitches away, and grow every raster to reach it.
    """
    if not len(lost):
        return
    u, v = lattice.to_index(row, col)
    lu, lv = lattice.to_index(lost[:, 0], lost[:, 1])
    off = (lu < u.min() - 1) | (lu > u.max() + 1) | (lv < v.min() - 1) | (lv > v.max() + 1)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise InputError(
            f"mask site (array_row {lost[i, 0]}, array_col {lost[i, 1]}) lies off the slide, whose spots "
            f"span array_row {row.min()}..{row.max()}, array_col {col.min()}..{col.max()} "
            f"({int(off.sum())} such site(s)); a lost site must be a site of the slide"
        )


def _lost_sites(mask: MaskLike, adata: ad.AnnData, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    if mask is None:
        return np.zeros((0, 2), np.int64)
    if isinstance(mask, pd.DataFrame):
        if {"array_row", "array_col"} <= set(mask.columns):
            return mask[["array_row", "array_col"]].to_numpy(dtype=np.int64).reshape(-1, 2)
        if "barcode" in mask.columns:
            mask = mask["barcode"]
        else:
            raise InputError(
                f"mask table needs array_row/array_col or barcode columns, found {list(mask.columns)}"
            )
    if isinstance(mask, pd.Series) and mask.dtype != bool:
        names = pd.Index(mask.astype(str))
        unknown = ~names.isin(adata.obs_names)
        if unknown.any():
            raise InputError(
                f"mask names {int(unknown.sum())} unknown barcode(s), e.g. {names[unknown][0]!r}"
            )
        sel = adata.obs_names.isin(names)
        return np.column_stack([row[sel], col[sel]])
    arr = np.asarray(mask)
    if arr.dtype == bool:
        if arr.shape != (adata.n_obs,):
            raise InputError(f"boolean mask has shape {arr.shape}, expected ({adata.n_obs},)")
        return np.column_stack([row[arr], col[arr]])
    if arr.size and arr.size % 2:
        raise InputError(f"mask of lost sites must be (array_row, array_col) pairs, got shape {arr.shape}")
    return arr.astype(np.int64).reshape(-1, 2) if arr.size else np.zeros((0, 2), np.int64)


__all__ = ["Slide", "as_slide", "site_keys", "GAP_DISTANCE", "MaskLike"]
