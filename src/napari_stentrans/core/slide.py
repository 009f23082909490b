"""A slide prepared once for fitting and enhancement: lattice, usable spots, depth, gene statistics.

Everything the estimators ask of a slide is computed here, once per slide: which spots are
usable, each spot's depth, which genes are detected and how variable they are (cached), which
sites lie in a gap, and a fingerprint that tells whether a model is applied to the slide it was
fitted on.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage
from scipy.spatial import cKDTree

from .classical import TARGET_SUM, normalize
from .errors import InputError, LatticeError
from .io import lattice_of
from .io.common import check_count_values, stray_spot
from .io.enhanced import refuse_enhanced
from .io.h5ad import with_counts
from .lattice import IndexRaster, Lattice
from .masks import lost_sites

MaskLike = np.ndarray | pd.DataFrame | pd.Series | list | str | Path | None
# input pitches: a site farther than this from every usable spot lies in a gap. New sites between
# measured spots are 0.5 (edges) or 0.71 (square cell centres) from one; lattice sites without a
# measurement are at least 1.
GAP_DISTANCE = 0.9
# A spot with fewer counts than this fraction of the slide's median depth is near-empty: its
# library-size-normalised profile is a few counts blown up by 1e4/depth (4 counts: one count of a
# gene reads as 2,500 per 10k), and the estimate at a measured spot follows its own profile, so
# it became the hottest spot on the slide (olfactory bulb: 4 counts, 260th of 262, median
# 14,606). It is imputed from its neighbours like a spot without counts. 0.5% leaves the low but
# meaningful spots of real slides measured (muscle Visium: 88-209 counts against a median of
# 10,484) and catches only the near-empty ones (2-6 counts on three ST slides).
MIN_DEPTH_FRACTION = 0.005
# var columns holding gene symbols when var_names are ids (scanpy, cellxgene, Space Ranger readers)
SYMBOL_COLUMNS = ("symbol", "gene_symbols", "gene_symbol", "gene_name", "gene_names", "feature_name")


def symbol_column(var: pd.DataFrame) -> np.ndarray | None:
    """The gene symbols of ``var`` as strings (first of :data:`SYMBOL_COLUMNS` present), or None."""
    for name in SYMBOL_COLUMNS:
        if name in var.columns:
            return var[name].astype(str).to_numpy()
    return None


def gene_label(var: pd.DataFrame, gene: str) -> str:
    """How to show ``gene`` (a var name) to a person: its symbol when the var names are ids
    with symbols in a column (:data:`SYMBOL_COLUMNS`), else the name itself."""
    symbols = symbol_column(var)
    if symbols is None:
        return gene
    symbol = symbols[var.index.get_loc(gene)]
    return symbol if symbol not in ("", "nan", "None") else gene


def did_you_mean(name: str, known: np.ndarray) -> str:
    """``" (did you mean 'X'?)"`` for the gene ``name`` was likely meant to be, else ``""``.

    ``known`` holds the slide's gene names (and symbols). The same name in another case comes
    first (``mbp`` for ``MBP``: names are case-sensitive), else the closest spelling by
    :func:`difflib.get_close_matches` (similarity >= 0.8: ``PCP44`` for ``PCP4``).
    """
    import difflib

    same = np.flatnonzero(np.char.lower(known.astype(str)) == name.lower())
    if len(same):
        return f" (did you mean {str(known[same[0]])!r}? gene names are case-sensitive)"
    close = difflib.get_close_matches(name, np.unique(known).tolist(), n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def near_empty(depth: np.ndarray) -> np.ndarray:
    """Spots whose depth is below :data:`MIN_DEPTH_FRACTION` of the median depth of spots with counts.

    Parameters
    ----------
    depth
        ``(n_spots,)`` total counts per spot.

    Returns
    -------
    np.ndarray
        ``(n_spots,)`` bool; spots without counts are near-empty too.
    """
    depth = np.asarray(depth, dtype=np.float64)
    positive = depth[depth > 0]
    floor = MIN_DEPTH_FRACTION * float(np.median(positive)) if len(positive) else 0.0
    return (depth <= 0) | (depth < floor)


class ImputedSitesWarning(UserWarning):
    """Far more sites are imputed than spots were measured (see :meth:`Slide.imputation_warning`)."""


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
        Spots that are not lost and not near-empty (:func:`near_empty`: fewer counts than 0.5% of
        the median depth): the only spots used as input or target.
    lost_sites
        ``(k, 2)`` array coordinates declared lost by the user (measured or not).
    in_tissue_unmeasured
        ``(m, 2)`` sites the positions file marks as tissue but that have no counts.
    fill_holes
        ``True``, ``False`` or ``"auto"``: which sites without a measurement are imputed
        besides the lost sites and the measured spots without counts (see :meth:`from_adata`).
    tissue_mask
        Whether the slide was read with its tissue mask (a Space Ranger positions file, which
        lists every site with its ``in_tissue`` flag): enclosed sites it leaves out
        (``in_tissue = 0``: lumen, folds, background) are not tissue and ``fill_holes="auto"``
        does not fill them.
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
    fill_holes: bool | str = "auto"
    tissue_mask: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"Slide({self.lattice.kind} lattice, {len(self.row)} spots ({self.n_usable} usable), "
            f"{len(self.genes)} genes, {len(self.lost_sites)} lost sites, fill_holes={self.fill_holes})"
        )

    @classmethod
    def from_adata(cls, adata: ad.AnnData, mask: MaskLike = None, fill_holes: bool | str = "auto") -> Slide:
        """Prepare an AnnData read by :func:`napari_stentrans.read` (it is not modified).

        Parameters
        ----------
        adata
            Slide with ``obs["array_row"]``, ``obs["array_col"]`` and raw counts in ``X`` (or, when
            ``X`` holds normalised values, in ``layers["counts"]`` or ``adata.raw``: used instead,
            see :func:`counts_of`).
        mask
            Lost sites (never used as input or target; imputed), any of: a list/array of
            barcodes; a ``(k, 2)`` list/array of integer ``(array_row, array_col)`` pairs; a
            boolean array with one entry per spot (True = lost); a DataFrame with
            ``array_row``/``array_col`` or ``barcode`` columns; a CSV/TSV file path of those
            (a barcode column, one column of barcodes with or without a header, or
            ``array_row,array_col``). See :mod:`napari_stentrans.core.masks`.
        fill_holes
            Which sites without a measurement to impute besides the lost sites and the
            measured spots without counts (always imputed). ``"auto"`` (default): with a
            tissue mask (a Space Ranger folder's positions file) the sites it marks in tissue
            without counts, and no enclosed site it leaves out of the tissue (``in_tissue =
            0``: lumen, folds); without one (ST tables, ``.h5ad``) every lattice site enclosed
            by measured spots, the only sign of lost spots there. ``True``: both,
            always (enclosed sites outside the mask too). ``False``: neither.

        Raises
        ------
        LatticeError
            Coordinates missing or off the slide's lattice (the mask's included).
        InputError
            A mask of another form or shape, with unknown barcodes, non-integer coordinates
            or without usable columns; an unreadable mask file (named); no raw counts (NaN,
            negative or non-integer values, see :func:`counts_of`); spots of several
            libraries (``obs["library_id"]``), which never share a lattice; or an enhanced
            slide (its ``X`` holds predictions, not counts).
        """
        refuse_enhanced(adata)
        adata = counts_of(adata)
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
        lost = lost_sites(mask, adata.obs_names, row, col)
        source = str(mask) if isinstance(mask, str | Path) else "mask"  # names a mask file in errors
        if len(lost):
            try:
                lattice.to_index(lost[:, 0], lost[:, 1])
            except LatticeError as exc:
                raise LatticeError(f"{source}: {exc}") from exc
        if not (isinstance(fill_holes, bool) or fill_holes == "auto"):
            raise InputError(f"fill_holes: {fill_holes!r} is not allowed; expected True, False or 'auto'")
        # a Space Ranger positions file lists every site with its in_tissue flag (read_spaceranger)
        tissue_mask = bool(adata.uns.get("stentrans_lattice", {}).get("tissue_mask", False))
        extra = adata.uns.get("stentrans_lattice", {}).get("in_tissue_unmeasured")
        extra = (
            np.zeros((0, 2), np.int64) if extra is None else np.asarray(extra, dtype=np.int64).reshape(-1, 2)
        )
        _check_lost_on_slide(
            lattice, lost, np.concatenate([row, extra[:, 0]]), np.concatenate([col, extra[:, 1]]), source
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
            usable=not_lost & ~near_empty(depth),
            lost_sites=lost,
            in_tissue_unmeasured=extra,
            fill_holes=fill_holes,
            tissue_mask=tissue_mask,
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

        Sites to impute are the user's lost sites and measured spots without counts or with too
        few (:func:`near_empty`); unless
        :attr:`fill_holes` is False, the sites the tissue mask marks in tissue without counts;
        and, with ``fill_holes=True`` or with ``"auto"`` on a slide without a tissue mask, the
        lattice sites enclosed by tissue (holes filled with the lattice's own connectivity).
        Every one of them lies in a gap (:meth:`in_gap`): it is a lattice site without a
        usable spot, so at least one pitch from the nearest.
        """
        measured = raster.mask(self.row[self.usable], self.col[self.usable])
        empty = self.not_lost & ~self.usable  # measured spots with no or too few counts (near_empty)
        imputed = raster.mask(self.row[empty], self.col[empty])
        if self.fill_holes is True or (self.fill_holes == "auto" and not self.tissue_mask):
            imputed |= ndimage.binary_fill_holes(measured, structure=neighbour_structure(self.lattice))
        for sites in [self.lost_sites] + ([self.in_tissue_unmeasured] if self.fill_holes else []):
            if len(sites):
                imputed |= raster.mask(sites[:, 0], sites[:, 1])
        return measured, imputed & ~measured

    def unmasked_holes(self) -> int:
        """How many sites are imputed only as holes enclosed by measured spots because the slide
        has no tissue mask (``fill_holes="auto"``, :meth:`site_images`): there a tear, a fold or
        a lumen enclosed by tissue cannot be told from tissue, and is filled too (a SpatialData
        store holds only the in-tissue spots: 28 sites over glass of DLPFC 151674 that its
        Space Ranger folder marks ``in_tissue = 0``). 0 for a slide with a mask or an explicit
        ``fill_holes``.
        """
        if self.fill_holes != "auto" or self.tissue_mask:
            return 0
        if "unmasked_holes" not in self._cache:
            raster = self.index_raster(pad=2)
            measured, _ = self.site_images(raster)
            holes = (
                ndimage.binary_fill_holes(measured, structure=neighbour_structure(self.lattice)) & ~measured
            )
            empty = self.not_lost & ~self.usable
            others = raster.mask(self.row[empty], self.col[empty])
            if len(self.lost_sites):
                others |= raster.mask(self.lost_sites[:, 0], self.lost_sites[:, 1])
            self._cache["unmasked_holes"] = int((holes & ~others).sum())
        return self._cache["unmasked_holes"]

    def imputation_warning(self) -> str | None:
        """A plain-words warning when far more sites are imputed than spots were measured."""
        if "imputation_warning" not in self._cache:
            raster = self.index_raster(pad=2)
            measured, imputed = self.site_images(raster)
            n_imputed, n_measured = int(imputed.sum()), int(measured.sum())
            note = None
            if n_imputed > max(n_measured, 10):
                unmeasured = len(self.in_tissue_unmeasured) if self.fill_holes else 0
                parts = [
                    f"{n} {what}"
                    for n, what in (
                        (unmeasured, "marked in tissue without counts"),
                        (len(self.lost_sites), "declared lost"),
                    )
                    if n
                ]
                if n_imputed > unmeasured + len(self.lost_sites):
                    parts.append("the rest enclosed by tissue" if parts else "all enclosed by tissue")
                note = (
                    f"{n_imputed} sites are imputed against {n_measured} measured spots "
                    f"({', '.join(parts)}): most of the output is invented, not measured. "
                    "Check the slide's tissue mask, or leave them out with fill_holes=False "
                    "(stentrans enhance --no-fill-holes)"
                )
            self._cache["imputation_warning"] = note
        return self._cache["imputation_warning"]

    def warn_imputation(self, stacklevel: int = 2) -> None:
        """Issue :meth:`imputation_warning` as an :class:`ImputedSitesWarning`, once per slide."""
        note = self.imputation_warning()
        if note is not None and not self._cache.get("imputation_warned"):
            self._cache["imputation_warned"] = True
            warnings.warn(note, ImputedSitesWarning, stacklevel=stacklevel + 1)

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

    def _indices_of_names(self, names: list[str]) -> np.ndarray:
        """Gene indices of ``names``: var_names first, else a unique match in a symbol column.

        ``.h5ad`` files from scanpy or cellxgene often carry Ensembl ids as var_names and the
        symbols in a column (:data:`SYMBOL_COLUMNS`); users ask for symbols.

        Raises
        ------
        InputError
            A name found nowhere, or a symbol shared by several genes (the candidates listed).
        """
        index = self.genes.get_indexer(pd.Index(names))
        symbols = symbol_column(self.adata.var)
        missing = []
        for i in np.flatnonzero(index < 0):
            hits = np.flatnonzero(symbols == names[i]) if symbols is not None else np.zeros(0, int)
            if len(hits) == 1:
                index[i] = hits[0]
            elif len(hits) > 1:
                raise InputError(
                    f"gene {names[i]!r} is the symbol of {len(hits)} genes "
                    f"({', '.join(map(str, self.genes[hits][:5]))}): ask for one of them by id"
                )
            else:
                missing.append(names[i])
        if missing:
            known = self.genes.astype(str).to_numpy()
            if symbols is not None:
                known = np.concatenate([known, symbols])
            shown = ", ".join(f"{name!r}{did_you_mean(name, known)}" for name in missing[:3])
            raise InputError(f"{len(missing)} requested gene(s) not in the slide, e.g. {shown}")
        return index

    def gene_indices(self, genes, min_detection: float) -> np.ndarray:
        """Gene indices to enhance: names, the N most variable detected genes, or all detected.

        Parameters
        ----------
        genes
            ``None`` (every gene detected in at least ``min_detection`` of the spots), an
            integer N (the N most variable of those) or gene names, kept in the order given
            (a repeated name once): the output's genes follow the request.

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
            out = pd.unique(self._indices_of_names([str(g) for g in genes]))  # in the order asked
        if len(out) == 0:
            raise InputError(
                f"no gene to enhance: none is detected in at least {min_detection:.0%} of the spots"
            )
        return out


def counts_of(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` with its raw counts in ``X`` (see :func:`.io.h5ad.with_counts`), checked.

    What :func:`napari_stentrans.read` does for a file, for an AnnData given in Python: scanpy's
    normalise + log step leaves log values in ``X``, and enhancing those as counts gave output
    that looked valid.

    Raises
    ------
    InputError
        ``X`` holds NaN or infinite, negative or non-integer values, and neither
        ``layers["counts"]`` nor ``adata.raw`` holds integer counts.
    """
    adata = with_counts(adata, "adata")
    elsewhere = [
        name
        for name, there in (
            ("layers['counts']", "counts" in adata.layers),
            ("adata.raw", adata.raw is not None),
        )
        if there
    ]
    also = f"; {' and '.join(elsewhere)} hold non-integer values too" if elsewhere else ""
    check_count_values(adata.X, "adata.X", also=also)
    return adata


def require_anndata(data: object, accepts_slide: bool = True) -> None:
    """Refuse what is neither an AnnData nor (with ``accepts_slide``) a :class:`Slide`, naming
    what was given and how to read a file: ``st.enhance("slide_folder/")`` failed with
    ``AttributeError: 'str' object has no attribute 'uns'``.

    Raises
    ------
    InputError
        ``data`` is a path, an array or anything else.
    """
    if isinstance(data, ad.AnnData) or (accepts_slide and isinstance(data, Slide)):
        return
    wanted = "an AnnData" + (" or st.Slide" if accepts_slide else "")
    if isinstance(data, str | Path):
        if not Path(data).exists():
            raise InputError(f"expected {wanted}, got the path {str(data)!r}, which does not exist")
        raise InputError(
            f"expected {wanted}, got the path {str(data)!r}: read it first, st.read({str(data)!r})"
        )
    raise InputError(
        f"expected {wanted}, got {type(data).__name__}: read a slide with st.read(path), or give an "
        "AnnData of raw counts with obs['array_row'] and obs['array_col']"
    )


def as_slide(data: ad.AnnData | Slide, mask: MaskLike = None, fill_holes: bool | str | None = None) -> Slide:
    """A prepared slide: ``data`` itself when it is one (and no other mask or fill_holes is given).

    ``fill_holes=None`` keeps a Slide's own choice (``"auto"`` for an AnnData).

    Raises
    ------
    InputError
        ``data`` is neither (a path, an array: :func:`require_anndata`), or a problem of the slide.
    """
    require_anndata(data)
    if isinstance(data, Slide):
        if mask is not None or (fill_holes is not None and fill_holes != data.fill_holes):
            mask = data.lost_sites if mask is None else mask
            return Slide.from_adata(data.adata, mask, data.fill_holes if fill_holes is None else fill_holes)
        return data
    return Slide.from_adata(data, mask, "auto" if fill_holes is None else fill_holes)


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


def _check_lost_on_slide(
    lattice: Lattice, lost: np.ndarray, row: np.ndarray, col: np.ndarray, source: str = "mask"
) -> None:
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
            f"{source}: site (array_row {lost[i, 0]}, array_col {lost[i, 1]}) lies off the slide, whose spots "
            f"span array_row {row.min()}..{row.max()}, array_col {col.min()}..{col.max()} "
            f"({int(off.sum())} such site(s)); a lost site must be a site of the slide"
        )


__all__ = ["Slide", "as_slide", "ImputedSitesWarning", "site_keys", "GAP_DISTANCE", "MaskLike"]
