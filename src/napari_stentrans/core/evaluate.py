"""Honest evaluation: every method sees only what it may see, and is scored where it could not look.

Protocols (METHOD.md, "Honest evaluation"):

``heldout``
    ``x_d`` = one lattice-preserving coset of the slide (a quarter of the spots, same lattice
    type at twice the pitch; seed ``s`` keeps coset ``s % 4``). Methods see only ``x_d`` (stEnTrans trains on
    down(``x_d``) -> ``x_d``) and predict the other spots, where they are scored.
``lost``
    Contiguous blobs covering about 10 % of the measured spots are hidden (seeded); methods see
    the rest and fill the blobs, where they are scored.
``paper``
    The published (leaky) protocol, for comparison only: the model is trained on the full slide
    (pairs down(``x``) -> ``x``) and then scored on the same spots it used as targets.

Scores are per-gene Pearson r at the scored spots, on counts (the paper's headline) and on
library-size-normalised log expression (truth normalised by its own depth), plus RMSE on the
normalised scale. Genes whose truth or prediction has zero variance at the scored spots are
excluded and counted. Every method predicts counts *and* each spot's depth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import scipy.sparse as sp
from scipy.interpolate import griddata

from .classical import (
    BANDWIDTH_GRID,
    DEPTH_BANDWIDTH_GRID,
    classical_estimate,
    denormalize,
    linear_weights,
    normalize,
    select_classical_params,
)
from .cnn_baseline import fit_predict
from .enhance import predict, sites_at
from .io import lattice_of
from .presets import preset
from .slide import site_keys, slide_from_adata
from .training import resolve_device, train

PROTOCOLS = ("heldout", "lost", "paper")
INTERPOLATION = ("nearest", "linear", "cubic")
DEFAULT_METHODS = (
    "stentrans",
    "stentrans_transformer",
    "stentrans_published",
    *INTERPOLATION,
    "lowrank_linear",
    "lowrank_kernel",
    "residual_cnn",
)


@dataclass
class Split:
    """What the methods may see and where they are scored.

    ``known`` is an AnnData in its own lattice coordinates; ``target_rows``/``target_cols`` are
    the scored spots in the half-pitch coordinates of ``known`` (for ``lost``: doubled
    coordinates of the hidden spots); ``truth`` their counts; ``mask`` the lost sites to pass to
    the methods (``lost`` only); ``train_on`` the slide stEnTrans trains on.
    """

    protocol: str
    known: ad.AnnData
    known_xy: np.ndarray  # physical positions (pitch units of the full slide) of the known spots
    target_xy: np.ndarray
    target_rows: np.ndarray
    target_cols: np.ndarray
    truth: np.ndarray  # (n_targets, n_genes) counts of the evaluated genes
    truth_depth: np.ndarray  # total counts over all genes
    genes: np.ndarray  # names of the evaluated genes
    mask: np.ndarray | None
    train_on: ad.AnnData


@dataclass
class MethodResult:
    """Predictions of one method at the scored spots and its wall time."""

    counts: np.ndarray
    depth: np.ndarray
    seconds: float
    extra: dict = field(default_factory=dict)


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def make_split(
    adata: ad.AnnData,
    protocol: str = "heldout",
    n_genes: int | None = None,
    seed: int = 0,
    lost_fraction: float = 0.10,
    min_detection: float = 0.10,
) -> Split:
    """Build the split of a protocol (see module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    lattice = lattice_of(adata)
    row = adata.obs["array_row"].to_numpy()
    col = adata.obs["array_col"].to_numpy()
    xy = lattice.physical(row, col) / lattice.pitch_um
    depth = np.asarray(adata.X.sum(axis=1)).ravel().astype(np.float64)
    if protocol in ("heldout", "paper"):
        coset = seed % 4 if protocol == "heldout" else 0  # seeds 0-3 hold out each coset in turn
        keep, coarse_row, coarse_col = lattice.downsample(row, col, coset)
        known = adata[keep].copy()
        known.obs["array_row"] = coarse_row
        known.obs["array_col"] = coarse_col
        known.uns["stentrans_lattice"] = {
            "kind": lattice.kind,
            "pitch_um": 2 * lattice.pitch_um,
            "source": "x_d",
        }
        known.uns.pop("spatial", None)
        targets = ~keep
        # half-pitch coordinates of x_d: the slide's coordinates less the coset's offset
        shift_row, shift_col = lattice.from_index(*divmod(coset, 2))
        target_rows, target_cols = row[targets] - shift_row, col[targets] - shift_col
        mask = None
        train_on = adata if protocol == "paper" else known
    else:
        targets = _lost_blobs(xy, lost_fraction, np.random.default_rng(seed))
        known = adata
        target_rows, target_cols = 2 * row[targets], 2 * col[targets]
        mask = np.column_stack([row[targets], col[targets]])
        train_on = adata
    known_spots = ~targets
    # genes: detected in >= min_detection of the spots the methods see, optionally the most variable N
    seen = adata.X[known_spots]
    detected = np.asarray((seen > 0).sum(axis=0)).ravel() / max(1, known_spots.sum())
    gene_idx = np.flatnonzero(detected >= min_detection)
    if n_genes is not None and len(gene_idx) > n_genes:
        slide = slide_from_adata(adata, mask=mask if mask is not None else None)
        slide.usable &= known_spots
        gene_idx = slide.most_variable(gene_idx, n_genes)
    truth = _dense(adata.X[targets][:, gene_idx])
    # score only spots inside the convex hull of the known spots, where every method predicts
    inside = ~np.isnan(griddata(xy[known_spots], np.zeros(known_spots.sum()), xy[targets], method="linear"))
    return Split(
        protocol=protocol,
        known=known,
        known_xy=xy[known_spots],
        target_xy=xy[targets][inside],
        target_rows=target_rows[inside],
        target_cols=target_cols[inside],
        truth=truth[inside],
        truth_depth=depth[targets][inside],
        genes=adata.var_names[gene_idx].to_numpy(),
        mask=mask,
        train_on=train_on,
    )


def _lost_blobs(xy: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Contiguous disks of spots covering about ``fraction`` of them."""
    n = len(xy)
    target = max(1, int(round(fraction * n)))
    hidden = np.zeros(n, dtype=bool)
    radius = max(1.0, np.sqrt(target / 3 / np.pi))  # about three blobs
    while hidden.sum() < target:
        centre = xy[rng.integers(n)]
        blob = np.linalg.norm(xy - centre, axis=1) <= radius
        room = target - hidden.sum()
        new = np.flatnonzero(blob & ~hidden)
        if len(new) > room:  # trim the last blob to its spots nearest the centre
            new = new[np.argsort(np.linalg.norm(xy[new] - centre, axis=1))[:room]]
        hidden[new] = True
    return hidden


# ----------------------------------------------------------------------------- methods


def _interpolate(method: str) -> Callable[[Split], MethodResult]:
    def run(split: Split) -> MethodResult:
        start = time.perf_counter()
        seen = _dense(_known_counts(split))
        depth_seen = np.asarray(split.known.X[_known_rows(split)].sum(axis=1)).ravel()
        values = np.column_stack([seen, depth_seen])
        pred = np.clip(_griddata(split, values, method), 0, None)
        return MethodResult(pred[:, :-1], pred[:, -1], time.perf_counter() - start)

    return run


def _known_rows(split: Split) -> np.ndarray:
    if split.mask is None:
        return np.ones(split.known.n_obs, dtype=bool)
    keys = site_keys(split.known.obs["array_row"].to_numpy(), split.known.obs["array_col"].to_numpy())
    return ~np.isin(keys, site_keys(split.mask[:, 0], split.mask[:, 1]))


def _griddata(split: Split, values: np.ndarray, method: str) -> np.ndarray:
    """scipy griddata from the known to the scored spots; nearest where ``method`` gives NaN.

    Linear and cubic interpolation are undefined outside the convex hull of the known spots.
    """
    pred = griddata(split.known_xy, values, split.target_xy, method=method)
    if method != "nearest" and np.isnan(pred).any():
        near = griddata(split.known_xy, values, split.target_xy, method="nearest")
        pred = np.where(np.isnan(pred), near, pred)
    return pred


def _interpolated_depth(split: Split) -> np.ndarray:
    return _griddata(split, np.asarray(split.known.X[_known_rows(split)].sum(axis=1)).ravel(), "linear")


def _known_counts(split: Split):
    return split.known.X[_known_rows(split)][:, split.known.var_names.get_indexer(split.genes)]


@dataclass
class _Seen:
    """Normalised expression, log depth and positions of the spots a method may see."""

    values: np.ndarray  # (n, genes of the split) normalised
    log_depth: np.ndarray
    xy: np.ndarray  # positions in units of the split's physical frame
    row: np.ndarray
    col: np.ndarray


def _seen(split: Split) -> _Seen:
    rows = _known_rows(split)
    x = split.known.X[rows]
    depth = np.asarray(x.sum(axis=1)).ravel().astype(np.float64)
    ok = depth > 0
    gene_idx = split.known.var_names.get_indexer(split.genes)
    return _Seen(
        values=normalize(_dense(x[:, gene_idx])[ok], depth[ok]),
        log_depth=np.log(depth[ok]),
        xy=split.known_xy[ok],
        row=split.known.obs["array_row"].to_numpy()[rows][ok],
        col=split.known.obs["array_col"].to_numpy()[rows][ok],
    )


def _classical(smoothing: str) -> Callable[[Split], MethodResult]:
    """Low-rank reconstruction of the known spots, then linear interpolation or kernel smoothing.

    Rank and bandwidths are chosen on down(known) -> known, never on the scored spots; the
    ``linear`` baseline interpolates scores and log depth linearly, the ``kernel`` baseline
    chooses Gaussian bandwidths for both.
    """
    kernel_grid = tuple(h for h in BANDWIDTH_GRID if h is not None)
    depth_grid = (None,) if smoothing == "linear" else tuple(h for h in DEPTH_BANDWIDTH_GRID if h is not None)
    grid = (None,) if smoothing == "linear" else kernel_grid

    def run(split: Split) -> MethodResult:
        start = time.perf_counter()
        seen = _seen(split)
        keep = lattice_of(split.known).coset(seen.row, seen.col)  # all four down-sampling pairs
        pitch = xy_pitch(seen.xy)
        params, _ = select_classical_params(
            seen.values,
            seen.xy / pitch,
            keep,
            bandwidths=grid,
            log_depth=seen.log_depth,
            depth_bandwidths=depth_grid,
        )
        est, log_depth = classical_estimate(
            seen.values, seen.log_depth, seen.xy / pitch, split.target_xy / pitch, params
        )
        pred_depth = np.exp(log_depth)
        counts = denormalize(np.clip(est, 0, None), pred_depth)
        return MethodResult(counts, pred_depth, time.perf_counter() - start, params.describe())

    return run


def _residual_cnn(seed: int, device: str) -> Callable[[Split], MethodResult]:
    """The DIST-like residual CNN (:mod:`.cnn_baseline`) trained on the known spots' coset pairs."""

    def run(split: Split) -> MethodResult:
        start = time.perf_counter()
        seen = _seen(split)
        half_pitch = split.mask is None
        est, extra = fit_predict(
            seen.values,
            seen.row,
            seen.col,
            lattice_of(split.known),
            split.target_rows if half_pitch else split.target_rows // 2,
            split.target_cols if half_pitch else split.target_cols // 2,
            half_pitch,
            seed=seed,
            device=str(resolve_device(device)),
        )
        pred_depth = np.exp(linear_weights(seen.xy, split.target_xy) @ seen.log_depth)
        counts = denormalize(np.clip(est, 0, None), pred_depth)
        return MethodResult(counts, pred_depth, time.perf_counter() - start, extra)

    return run


def xy_pitch(xy: np.ndarray) -> float:
    """Nearest-neighbour distance of a set of lattice positions (its pitch)."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def _stentrans(
    preset_name: str, epochs: int | None, seed: int, device: str
) -> Callable[[Split], MethodResult]:
    def run(split: Split) -> MethodResult:
        start = time.perf_counter()
        kind = lattice_of(split.train_on).kind
        # ``epochs`` is for the presets that learn; the default estimator trains nothing
        config = preset(
            preset_name, kind, epochs=None if preset_name == "default" else epochs, seed=seed, device=device
        )
        model = train(split.train_on, config, split.mask)
        slide = slide_from_adata(split.known, split.mask)
        sites = sites_at(slide, split.target_rows, split.target_cols)
        gene_idx = slide.genes.get_indexer(split.genes)
        counts, depth = predict(model, slide, gene_idx, sites, device=device)
        if depth is None:  # a raw-count model predicts no depth: give it interpolated depth
            depth = _interpolated_depth(split)
        return MethodResult(
            counts,
            depth,
            time.perf_counter() - start,
            {
                "best_epoch": model.history.get("best_epoch", [None])[0],
                **{f"classical_{k}": v for k, v in model.classical.describe().items()},
            },
        )

    return run


def method_table(epochs: int | None = None, seed: int = 0, device: str = "auto") -> dict[str, Callable]:
    """Every method of the benchmark by name."""
    table: dict[str, Callable] = {
        "stentrans": _stentrans("default", epochs, seed, device),
        "stentrans_transformer": _stentrans("transformer", epochs, seed, device),
        "stentrans_published": _stentrans("published", epochs, seed, device),
    }
    table.update({m: _interpolate(m) for m in INTERPOLATION})
    table["lowrank_linear"] = _classical("linear")
    table["lowrank_kernel"] = _classical("kernel")
    table["residual_cnn"] = _residual_cnn(seed, device)
    return table


# ----------------------------------------------------------------------------- metrics


def pearson_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r per column; NaN where either side has zero variance."""
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    denom = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(axis=0) / denom
    return np.where(denom > 1e-12, r, np.nan)


def score(result: MethodResult, split: Split) -> dict:
    """Per-method summary: Pearson r on counts and on normalised values, RMSE (normalised)."""
    r_counts = pearson_per_gene(result.counts, split.truth)
    truth_norm = normalize(split.truth, split.truth_depth)
    pred_norm = normalize(np.clip(result.counts, 0, None), np.maximum(result.depth, 1e-9))
    r_norm = pearson_per_gene(pred_norm, truth_norm)
    scored = ~np.isnan(r_counts)
    return {
        "median_pcc": float(np.nanmedian(r_counts)) if scored.any() else float("nan"),
        "mean_pcc": float(np.nanmean(r_counts)) if scored.any() else float("nan"),
        "median_pcc_norm": float(np.nanmedian(r_norm)) if (~np.isnan(r_norm)).any() else float("nan"),
        "mean_pcc_norm": float(np.nanmean(r_norm)) if (~np.isnan(r_norm)).any() else float("nan"),
        "rmse_norm": float(np.sqrt(np.mean((pred_norm - truth_norm) ** 2))),
        "n_genes_scored": int(scored.sum()),
        "n_genes_excluded": int((~scored).sum()),
        "seconds": round(result.seconds, 3),
        "pcc": [None if np.isnan(v) else round(float(v), 5) for v in r_counts],
        **result.extra,
    }


def evaluate(
    adata: ad.AnnData,
    protocol: str = "heldout",
    *,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    n_genes: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    dataset: str = "",
    callback: Callable[[str, dict], None] | None = None,
) -> dict:
    """Run every method on one split of a protocol and score it.

    Returns the JSON-ready report ``{"dataset", "protocol", "n_genes", "n_heldout_spots",
    "methods": {name: {"median_pcc", "mean_pcc", "median_pcc_norm", ..., "seconds"}}}``.
    """
    split = make_split(adata, protocol, n_genes=n_genes, seed=seed)
    table = method_table(epochs=epochs, seed=seed, device=device)
    unknown = set(methods) - set(table)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {sorted(table)}")
    report = {
        "dataset": dataset,
        "protocol": protocol,
        "n_genes": int(len(split.genes)),
        "n_heldout_spots": int(len(split.target_rows)),
        "n_known_spots": int(len(split.known_xy)),
        "seed": seed,
        "genes": [str(g) for g in split.genes],
        "methods": {},
    }
    if protocol == "paper":
        report["warning"] = "published (leaky) protocol: stEnTrans is scored on spots it trained on"
    for name in methods:
        summary = score(table[name](split), split)
        report["methods"][name] = summary
        if callback is not None:
            callback(name, summary)
    return report


__all__ = [
    "evaluate",
    "make_split",
    "pearson_per_gene",
    "PROTOCOLS",
    "DEFAULT_METHODS",
]
