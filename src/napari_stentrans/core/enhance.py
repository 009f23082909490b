"""Apply a trained model to a slide: a 2x denser lattice with re-estimated, imputed and new sites.

Output coordinates are **half-pitch lattice coordinates**: the enhanced lattice is the input
lattice with every array coordinate doubled, so measured spot ``(r, c)`` is at ``(2r, 2c)`` and
the new sites sit between measured ones (hex: ``(2r, 2c+2)``, ``(2r+1, 2c-1)``, ``(2r+1, 2c+1)``
are the midpoints to the neighbours ``(r, c+2)``, ``(r+1, c-1)``, ``(r+1, c+1)``).
``obs["kind"]`` says which sites were measured, imputed (user-declared lost, marked in tissue
without counts, or enclosed holes) or new (half-pitch sites midway between two known lattice
sites: both ends of an edge, or a diagonal of a square cell; so never outside the tissue edge).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version as _package_version

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree

from .. import __version__
from .classical import LowRankBasis, denormalize, smooth
from .lattice import CHILD_OFFSETS, BrickRaster, IndexRaster, child_between
from .presets import TrainConfig, preset
from .slide import MaskLike, Slide, site_keys, slide_from_adata
from .training import StopFlag, TrainedModel, resolve_device, train

KINDS = ("measured", "imputed", "new")
HOLE_DISTANCE = 0.9  # input pitches: farther than any new site between measured spots (0.5, 0.71)
GeneChoice = None | int | list[str] | tuple[str, ...] | np.ndarray


class OutOfMemoryFallback(RuntimeWarning):
    """The device ran out of memory; enhancement went on with smaller gene batches."""


class TrainingStopped(RuntimeError):
    """Training was stopped before a model was produced; nothing was changed."""


@dataclass
class OutputSites:
    """The sites of the enhanced slide.

    ``row``/``col`` are half-pitch coordinates, ``fine_row``/``fine_col`` the fine site that owns
    each (its parent in the pixel shuffle) and ``child`` the child index 0..3.
    """

    row: np.ndarray
    col: np.ndarray
    fine_row: np.ndarray
    fine_col: np.ndarray
    child: np.ndarray
    kind: np.ndarray
    spot: np.ndarray  # index of the measured spot, -1 if none

    def __len__(self) -> int:
        return len(self.row)


def _measured_spot(slide: Slide, fine_row: np.ndarray, fine_col: np.ndarray, child: np.ndarray) -> np.ndarray:
    """Index of the measured spot each child-0 site is, -1 for every other site."""
    lookup = pd.Series(np.arange(len(slide.row)), index=site_keys(slide.row, slide.col))
    spot = lookup.reindex(site_keys(fine_row, fine_col)).to_numpy()
    return np.where(child == 0, np.nan_to_num(spot, nan=-1), -1).astype(np.int64)


def output_sites(slide: Slide) -> OutputSites:
    """Measured, imputed and new half-pitch sites of a slide (see module docstring)."""
    lattice = slide.lattice
    raster = slide.index_raster(pad=2)
    measured_img, imputed_img = slide.site_images(raster)
    between = child_between(lattice, measured_img | imputed_img)
    fine_r, fine_c = raster.sites()
    kind_img = np.full((4,) + raster.shape, -1, dtype=np.int8)
    kind_img[0][measured_img] = 0
    kind_img[0][imputed_img] = 1
    kind_img[1:][between[1:]] = 2
    k, p, q = np.nonzero(kind_img >= 0)
    fr, fc = fine_r[p, q], fine_c[p, q]
    dr, dc = lattice.from_index(CHILD_OFFSETS[k, 0], CHILD_OFFSETS[k, 1])
    spot = _measured_spot(slide, fr, fc, k)
    kinds = np.asarray(KINDS)[kind_img[k, p, q]]
    order = np.lexsort((2 * fc + dc, 2 * fr + dr, kind_img[k, p, q]))
    return OutputSites(
        row=(2 * fr + dr)[order],
        col=(2 * fc + dc)[order],
        fine_row=fr[order],
        fine_col=fc[order],
        child=k[order],
        kind=kinds[order],
        spot=spot[order],
    )


def sites_at(slide: Slide, rows: np.ndarray, cols: np.ndarray, kind: str = "new") -> OutputSites:
    """Output sites at given half-pitch coordinates (e.g. held-out spots for evaluation).

    Each half-pitch site is child ``(du, dv)`` of the fine site ``(u // 2, v // 2)`` of its
    index coordinates ``(u, v)`` in the (same-type) half-pitch lattice.
    """
    u, v = slide.lattice.to_index(rows, cols)
    fine_row, fine_col = slide.lattice.from_index(u // 2, v // 2)
    child = 2 * (u % 2) + (v % 2)
    spot = _measured_spot(slide, fine_row, fine_col, child)
    return OutputSites(
        row=np.asarray(rows, np.int64),
        col=np.asarray(cols, np.int64),
        fine_row=fine_row,
        fine_col=fine_col,
        child=child,
        kind=np.full(len(u), kind),
        spot=spot,
    )


def choose_output_genes(slide: Slide, genes: GeneChoice, min_detection: float) -> np.ndarray:
    """Gene indices to enhance: names, the N most variable detected genes, or all detected."""
    if genes is None:
        return slide.eligible_genes(min_detection)
    if isinstance(genes, int | np.integer):
        if genes < 1:
            raise ValueError(f"number of genes must be positive, got {genes}")
        return slide.most_variable(slide.eligible_genes(min_detection), int(genes))
    names = pd.Index([str(g) for g in genes])
    missing = ~names.isin(slide.genes)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} requested gene(s) not in the slide, e.g. {names[missing][0]!r}"
        )
    return np.sort(slide.genes.get_indexer(names.unique()))


class SitePredictor:
    """Predicted counts at a fixed set of output sites, one gene batch at a time.

    Everything that does not depend on the genes (rasters, the low-rank basis, interpolation
    weights, the output depth, the network) is prepared once; :meth:`batches` then yields the
    prediction for ``batch_size`` genes at a time, so memory is bounded by the batch, not by
    the number of genes. ``depth`` is the depth used at the sites, ``None`` for raw-count models
    (the published preset), which predict counts directly.
    """

    def __init__(self, model: TrainedModel, slide: Slide, sites: OutputSites, device: str = "auto") -> None:
        config = model.config
        self.model = model
        self.slide = slide
        self.device = resolve_device(device)
        self.net = model.build(self.device) if model.uses_network else None
        usable = slide.usable
        u_row, u_col = slide.row[usable], slide.col[usable]
        raster_type = BrickRaster if config.raster == "brick" else IndexRaster
        raster = raster_type.covering(
            slide.lattice,
            np.concatenate([u_row, sites.fine_row]),
            np.concatenate([u_col, sites.fine_col]),
            pad=2,
        )
        self.shape = raster.shape
        self.in_flat = raster.flat_index(u_row, u_col)
        fp, fq = raster.pixels(sites.fine_row, sites.fine_col)
        du, dv = CHILD_OFFSETS[sites.child, 0], CHILD_OFFSETS[sites.child, 1]
        self.out_flat = (2 * fp + du) * (2 * self.shape[1]) + (2 * fq + dv)
        self.keep_lr = np.zeros(self.shape[0] * self.shape[1], dtype=np.float32)
        self.keep_lr[self.in_flat] = 1.0
        self.residual = config.model.residual
        self.depth: np.ndarray | None = None
        if self.residual:
            src_xy = slide.positions(usable)
            dst_xy = slide.lattice.physical(sites.row, sites.col, scale=2.0) / slide.lattice.pitch_um
            basis_idx = slide.most_variable(slide.eligible_genes(config.min_detection), config.n_train_genes)
            self.basis = LowRankBasis.fit(
                slide.expression(basis_idx, "log1p", model.target_sum),
                max(model.classical.rank, model.classical.for_holes.rank),
            )
            # sites with no measured spot within a pitch lie in a gap: they take the smoothers
            # chosen on hole-filling pairs
            in_gap = cKDTree(src_xy).query(dst_xy)[0] > HOLE_DISTANCE
            log_depth = np.log(slide.depth[usable])
            self.groups: list[tuple[np.ndarray, int, np.ndarray]] = []
            self.depth = np.empty(len(sites))
            for rows, params in model.classical.site_groups(in_gap):
                rank = min(params.rank, self.basis.max_rank)
                smoothed = smooth(src_xy, dst_xy[rows], params.bandwidth, self.basis.scores[:, :rank])
                self.groups.append((rows, rank, smoothed))
                self.depth[rows] = np.exp(params.smooth_log_depth(src_xy, dst_xy[rows], log_depth))

    def classical(self, values: np.ndarray) -> np.ndarray:
        """The classical estimate ``(n_sites, genes)`` of normalised expression at the sites."""
        out = np.empty((len(self.depth), values.shape[1]), dtype=np.float32)
        loadings = {rank: self.basis.loadings(values, rank) for rank in {rank for _, rank, _ in self.groups}}
        for rows, rank, smoothed in self.groups:
            mean, coef = loadings[rank]
            out[rows] = smoothed @ coef + mean
        return out

    def _network(self, n_genes: int, values: np.ndarray) -> np.ndarray:
        h, w = self.shape
        lr = np.zeros((n_genes, h * w), dtype=np.float32)
        lr[:, self.in_flat] = values.T
        channels = [lr]
        base_t = None
        if self.residual:
            base_hr = np.zeros((n_genes, 4 * h * w), dtype=np.float32)
            base_hr[:, self.out_flat] = self.classical(values).T
            base_hr = base_hr.reshape(n_genes, 2 * h, 2 * w)
            channels += [
                np.broadcast_to(self.keep_lr, lr.shape),
                base_hr[:, ::2, ::2].reshape(n_genes, -1) * self.keep_lr,
            ]
            base_t = torch.from_numpy(base_hr).to(self.device)
        x = torch.from_numpy(np.stack(channels, axis=1).reshape(n_genes, -1, h, w)).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            pred = self.net(x, base_t)
        return pred.float().reshape(n_genes, -1)[:, self.out_flat].cpu().numpy().T

    def batches(
        self, gene_idx: np.ndarray, batch_size: int = 256, stop: StopFlag | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, counts)``: predicted counts of ``gene_idx[start:start + n]`` at the sites.

        A CUDA out-of-memory error halves the batch (with an :class:`OutOfMemoryFallback`
        warning) and retries; :class:`TrainingStopped` is raised between batches once ``stop``
        is set.
        """
        config = self.model.config
        start = 0
        with torch.no_grad():
            while start < len(gene_idx):
                if stop is not None and stop.is_set():
                    raise TrainingStopped("enhancement stopped by request; nothing was written")
                chunk = gene_idx[start : start + batch_size]
                values = self.slide.expression(chunk, config.normalization, self.model.target_sum)
                if self.net is None:  # the classical estimate itself
                    pred = self.classical(values)
                else:
                    try:
                        pred = self._network(len(chunk), values)
                    except torch.OutOfMemoryError:
                        if batch_size == 1:
                            raise
                        batch_size = max(1, batch_size // 2)
                        if self.device.type == "cuda":
                            torch.cuda.empty_cache()
                        warnings.warn(
                            f"out of memory on {self.device}; continuing with {batch_size} genes per batch",
                            OutOfMemoryFallback,
                            stacklevel=2,
                        )
                        continue
                if config.normalization == "log1p":
                    # one depth model for every site (measured ones too): a dotted map otherwise
                    pred = denormalize(np.clip(pred, 0.0, None), self.depth, self.model.target_sum)
                yield start, pred.astype(np.float32, copy=False)
                start += len(chunk)

    def release(self) -> None:
        """Drop the network weights (and the CUDA cache) once prediction is done."""
        self.net = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def predict(
    model: TrainedModel,
    slide: Slide,
    gene_idx: np.ndarray,
    sites: OutputSites,
    device: str = "auto",
    batch_size: int = 256,
    stop: StopFlag | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted counts ``(n_sites, n_genes)`` at the output sites, and the depth used.

    The fine slide (usable spots) is the input at pitch 1; the network's 2x output gives the
    half-pitch sites. Genes are processed in batches (:class:`SitePredictor`); the result is
    assembled in memory (see :func:`write_enhanced` to stream it to a file instead).
    The depth is ``None`` for raw-count models (the published preset), which predict counts directly.
    """
    predictor = SitePredictor(model, slide, sites, device)
    result = np.zeros((len(sites), len(gene_idx)), dtype=np.float32)
    for start, pred in predictor.batches(gene_idx, batch_size, stop):
        result[:, start : start + pred.shape[1]] = pred
    predictor.release()
    return result, predictor.depth


def enhance(
    adata: ad.AnnData,
    model: TrainedModel | None = None,
    *,
    mask: MaskLike = None,
    genes: GeneChoice = None,
    config: TrainConfig | None = None,
    device: str | None = None,
    stop: StopFlag | None = None,
    callback=None,
    **train_options,
) -> ad.AnnData:
    """Enhance a slide to a 2x denser lattice and impute lost or missing spots.

    Parameters
    ----------
    adata
        A slide from :func:`napari_stentrans.read` (raw counts, lattice coordinates). It is
        never modified.
    model
        A trained model (:func:`napari_stentrans.train` or :func:`napari_stentrans.load_model`);
        trained on ``adata`` itself with ``config`` when None.
    mask
        Lost sites: never used as input or target, imputed in the output.
    genes
        Genes to enhance: names, an integer N (the N most variable detected genes), or None for
        every gene detected in at least ``min_detection`` of the spots.
    config
        Training configuration when ``model`` is None (default preset for the lattice).
    device
        Overrides the configuration's device for training and inference.
    stop
        Stop flag (``threading.Event``); :class:`TrainingStopped` is raised when it is set.
    callback
        Called with every :class:`~napari_stentrans.core.training.TrainEvent`.
    train_options
        Overrides of the training configuration (e.g. ``epochs=5``, ``n_train_genes=500``,
        ``seed=1``); only used when ``model`` is None.

    Returns
    -------
    AnnData with one row per output site: ``X`` predicted counts, ``obs`` with half-pitch
    ``array_row``/``array_col``, ``kind``, ``barcode``; ``obsm["spatial"]`` in the input's
    image pixels; ``layers["measured"]`` the measured counts; ``uns["stentrans"]`` the run's
    parameters, versions and training history.
    """
    job = prepare_enhancement(adata, model, mask, genes, config, device, stop, callback, train_options)
    counts, _ = predict(job.model, job.slide, job.gene_idx, job.sites, device=job.device, stop=stop)
    return assemble(adata, job, counts)


@dataclass
class EnhancementJob:
    """What an enhancement run predicts: the slide, the model, the genes and the output sites."""

    slide: Slide
    model: TrainedModel
    gene_idx: np.ndarray
    sites: OutputSites
    device: str


def prepare_enhancement(
    adata: ad.AnnData,
    model: TrainedModel | None,
    mask: MaskLike,
    genes: GeneChoice,
    config: TrainConfig | None,
    device: str | None,
    stop: StopFlag | None,
    callback,
    train_options: dict,
) -> EnhancementJob:
    """Check the inputs, train a model when none is given, and choose genes and output sites."""
    slide = slide_from_adata(adata, mask)
    if model is None:
        config = (config or preset("default", slide.lattice.kind)).with_overrides(
            device=device, **train_options
        )
        model = train(adata, config, mask, stop=stop, callback=callback)
        if model is None:
            raise TrainingStopped("training stopped by request; nothing was written")
    elif train_options:
        raise TypeError(f"training options {sorted(train_options)} given with a trained model")
    if model.lattice_kind != slide.lattice.kind:
        raise ValueError(
            f"the model was trained on a {model.lattice_kind} lattice but this slide is {slide.lattice.kind}"
        )
    gene_idx = choose_output_genes(slide, genes, model.config.min_detection)
    if len(gene_idx) == 0:
        raise ValueError("no gene to enhance: none passes the detection threshold")
    return EnhancementJob(slide, model, gene_idx, output_sites(slide), device or model.config.device)


def assemble(adata: ad.AnnData, job: EnhancementJob, counts: np.ndarray | None) -> ad.AnnData:
    """The enhanced AnnData: ``X`` = ``counts`` (none when it is streamed), obs, var, layers, uns."""
    slide, model, gene_idx, sites = job.slide, job.model, job.gene_idx, job.sites
    has_spot = sites.spot >= 0
    barcodes = np.where(has_spot, slide.barcodes[np.clip(sites.spot, 0, None)], "")
    names = np.where(
        has_spot,
        barcodes,
        np.char.add(np.char.add("hp_r", sites.row.astype(str)), np.char.add("_c", sites.col.astype(str))),
    )
    obs = pd.DataFrame(
        {
            "array_row": sites.row,
            "array_col": sites.col,
            "kind": pd.Categorical(sites.kind, categories=list(KINDS)),
            "barcode": barcodes,
        },
        index=pd.Index(names, dtype=str),
    )
    var = pd.DataFrame(index=pd.Index(slide.genes[gene_idx], dtype=str))
    var["training_gene"] = var.index.isin(model.training_genes)
    measured = _measured_layer(slide, gene_idx, sites.spot)
    out = ad.AnnData(X=counts, obs=obs, var=var, layers={"measured": measured})
    half = 2.0
    out.obsm["spatial_um"] = slide.lattice.physical(sites.row, sites.col, scale=half)
    out.obsm["spatial"] = _image_positions(adata, slide, sites.row / half, sites.col / half)
    if "spatial" in adata.uns:
        out.uns["spatial"] = _half_spot_spatial(adata.uns["spatial"])
    out.uns["stentrans"] = {
        "version": __version__,
        "torch_version": str(torch.__version__),
        "anndata_version": _package_version("anndata"),
        "lattice": slide.lattice.kind,
        "input_pitch_um": float(slide.lattice.pitch_um),
        "pitch_um": float(slide.lattice.pitch_um) / 2.0,
        "coordinates": "half-pitch: measured spot (r, c) of the input is at (2r, 2c)",
        "preset": model.config.preset,
        "config": _plain(model.config.to_dict()),
        "classical": model.classical.describe(),
        "target_sum": float(model.target_sum),
        "n_training_genes": len(model.training_genes),
        "history": {k: np.asarray(v, dtype=float) for k, v in model.history.items()},
        "n_lost_sites": int(len(slide.lost_sites)),
        "lost_sites": np.asarray(slide.lost_sites, dtype=np.int64).reshape(-1, 2),
        "source": str(adata.uns.get("stentrans_lattice", {}).get("source", "")),
    }
    return out


def _measured_layer(slide: Slide, gene_idx: np.ndarray, spot: np.ndarray) -> sp.csr_matrix:
    """Measured counts at the output sites (rows of sites without a spot are empty).

    Built from the spots' CSR rows directly: one copy of the measured entries, however many
    genes there are.
    """
    rows = np.flatnonzero(spot >= 0)  # ascending, so the spots' rows come in site order
    picked = slide.counts[spot[rows]]
    if not np.array_equal(gene_idx, np.arange(slide.counts.shape[1])):
        picked = picked[:, gene_idx]
    per_site = np.zeros(len(spot), dtype=np.int64)
    per_site[rows] = np.diff(picked.indptr)
    indptr = np.concatenate([[0], np.cumsum(per_site)])
    return sp.csr_matrix(
        (picked.data.astype(np.float32, copy=False), picked.indices, indptr), shape=(len(spot), len(gene_idx))
    )


def _image_positions(adata: ad.AnnData, slide: Slide, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Map (possibly fractional) input array coordinates to the input's ``obsm["spatial"]``."""
    if "spatial" in adata.obsm and adata.n_obs >= 3:
        design = np.column_stack([slide.row, slide.col, np.ones(len(slide.row))]).astype(float)
        coef, _, rank, _ = np.linalg.lstsq(design, np.asarray(adata.obsm["spatial"], float), rcond=None)
        if rank == 3:
            return np.column_stack([row, col, np.ones(len(row))]) @ coef
    return slide.lattice.physical(row, col)


def _half_spot_spatial(spatial: dict) -> dict:
    out = {}
    for library, entry in spatial.items():
        entry = dict(entry)
        scalefactors = dict(entry.get("scalefactors", {}))
        if "spot_diameter_fullres" in scalefactors:
            scalefactors["spot_diameter_fullres"] = float(scalefactors["spot_diameter_fullres"]) / 2.0
        entry["scalefactors"] = scalefactors
        out[library] = entry
    return out


def _plain(value):
    """Make a config dict storable in ``uns`` (no None, no tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None:
        return "none"
    return value


__all__ = ["enhance", "predict", "output_sites", "sites_at", "TrainingStopped"]
