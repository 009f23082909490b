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

Beside r, every method gets the gene-specific fidelity metrics of :mod:`.fidelity` at the
scored spots (gene-specific r, co-expression r against the measured truth and against its
signal, PC1 share and effective rank of the prediction, and the ARI of a fixed clustering
against annotated labels when ``labels`` names them), computed against structure fitted on the
seen spots only.

Every method runs the same way (:mod:`.estimators`): ``fit`` on the slide the protocol trains
on, then ``predict`` from the slide it shows at the scored sites (for ``paper`` every method
fits on the full slide). Scores are per-gene Pearson r at the scored spots, on counts (the
paper's headline) and on library-size-normalised log expression (truth normalised by its own
depth), plus RMSE on the normalised scale and the count level (each gene's predicted counts
summed over the scored spots against its measured counts, median over genes; 1 = the measured
level). Genes whose truth or prediction has zero variance at
the scored spots are excluded and counted. Every method predicts counts *and* each spot's depth
(a method that predicts raw counts only, the published recipe, is given linearly interpolated
depth for the normalised scores).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import scipy.sparse as sp
from scipy.interpolate import griddata

from .classical import LowRankBasis, normalize
from .errors import ConfigError, InputError, ReferenceSlideError
from .estimators import METHOD_ALIASES, METHODS, TrainEvent, canonical_method, method_estimator
from .estimators.interpolation import InterpolationModel
from .fidelity import (
    N_AXES,
    cluster_ari,
    coexpression_r,
    coexpression_signal_r,
    count_split_halves,
    covariance_correlation,
    covariance_spectrum,
    gene_specific_r,
    is_counts,
    neighbour_weights,
    signal_covariance,
    spatially_variable,
    spectrum,
    upper_agreement,
)
from .io import lattice_of
from .io.enhanced import refuse_enhanced
from .metrics import count_level, count_levels, pearson_per_gene
from .regions import random_disks
from .sites import OutputSites, sites_at
from .slide import Slide, counts_of, require_anndata

PROTOCOLS = ("heldout", "lost", "paper")
DEFAULT_METHODS = METHODS
N_COUNT_SPLITS = 5  # binomial splits averaged for the truth's signal correlations
MIN_RELIABILITY_SPOTS = 20  # scored spots below which the signal's reliability is not judged
#: split-spot agreement from which the signal correlations are trusted (verdict, tables), and
#: under which they are not determined at all
RELIABLE_SIGNAL = 0.5
WEAK_SIGNAL = 0.2


def signal_grade(reliability: float | None) -> str | None:
    """How well a split determines the signal's correlations: ``"well"``, ``"weakly"``, ``"not"``.

    ``reliability`` is the split-half agreement of :func:`truth_signal` (a lower bound of the
    whole estimate's): from :data:`RELIABLE_SIGNAL` well (the verdict counts the metric), from
    :data:`WEAK_SIGNAL` weakly; None when it was not judged (None or NaN).
    """
    if reliability is None or not np.isfinite(reliability):
        return None
    return "well" if reliability >= RELIABLE_SIGNAL else "weakly" if reliability >= WEAK_SIGNAL else "not"


def signal_note(reliability: float) -> str:
    """Two lines: what ``coexpression_r_signal`` is, and how well this split determines it
    (:func:`signal_grade`)."""
    what = (
        "(signal): co-expression r against the truth's correlations with their Poisson noise removed "
        "(count splitting); the plain co-expression r favours estimates that keep noise like the truth's"
    )
    grade = signal_grade(reliability)
    if grade is None:
        return (
            f"{what}\n(signal) not judged here: under {MIN_RELIABILITY_SPOTS} scored spots, under three "
            "gene pairs with a measurable signal, or a truth that is not integer counts"
        )
    agree = (
        f"(signal) here: two halves of the scored spots agree on those correlations at r = {reliability:.2f}"
    )
    return (
        f"{what}\n{agree}: "
        + {
            "well": "well determined",
            "weakly": "weakly determined, compare with care",
            "not": "not determined (too few or too shallow spots)",
        }[grade]
    )


@dataclass
class Split:
    """What the methods may see and where they are scored.

    ``known`` is an AnnData in its own lattice coordinates; ``target_rows``/``target_cols`` are
    the scored spots in the half-pitch coordinates of ``known`` (for ``lost``: doubled
    coordinates of the hidden spots); ``truth`` their counts; ``mask`` the lost sites passed to
    the methods (``lost`` only); ``train_on`` the slide the methods fit on; ``target_xy`` the
    scored spots' positions in pitch units of the full slide. ``known_slide`` and
    ``train_slide`` are those prepared once, ``sites`` the scored sites, ``gene_idx`` the
    evaluated genes' columns, ``target_obs`` the scored spots' rows in the slide's ``obs``,
    ``n_outside`` the held-out spots outside the convex hull of the seen ones (not scored).
    """

    protocol: str
    known: ad.AnnData
    target_rows: np.ndarray
    target_cols: np.ndarray
    target_xy: np.ndarray
    truth: np.ndarray  # (n_targets, n_genes) counts of the evaluated genes
    truth_depth: np.ndarray  # total counts over all genes
    genes: np.ndarray  # names of the evaluated genes
    mask: np.ndarray | None
    train_on: ad.AnnData
    known_slide: Slide
    train_slide: Slide
    sites: OutputSites
    gene_idx: np.ndarray
    target_obs: np.ndarray
    n_outside: int = 0


@dataclass
class Reference:
    """What every method is judged against besides the truth, fitted on the seen spots only.

    ``spatial`` indexes the (at most) 100 evaluated genes with the highest Moran's I on the seen
    spots; ``mean`` and ``axes`` are the seen spots' mean and top principal axes (normalised
    values, all evaluated genes); ``truth_norm`` the truth normalised by its own depth;
    ``labels`` the scored spots' annotations (None without annotations); ``signal`` the truth's
    gene-gene correlations over ``spatial`` without Poisson sampling noise
    (:func:`truth_signal`; None when the truth is not integer counts),
    ``signal_reliability`` how well the scored spots determine them and ``signal_spectrum``
    the PC1 share and effective rank of that signal (NaN without counts).
    """

    spatial: np.ndarray
    mean: np.ndarray
    axes: np.ndarray
    truth_norm: np.ndarray
    labels: np.ndarray | None
    signal: np.ndarray | None = None
    signal_reliability: float = float("nan")
    signal_spectrum: tuple[float, float] = (float("nan"), float("nan"))


def truth_signal(
    counts: np.ndarray, depth: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray | None, float, tuple[float, float]]:
    """The truth's signal correlations by count splitting, their split-spot reliability, and the
    signal's PC1 share and effective rank.

    Parameters
    ----------
    counts
        ``(spots, genes)`` measured counts at the scored spots.
    depth
        ``(spots,)`` their depth (total counts); each half is normalised by half of it.
    rng
        Seeded generator of the binomial splits and of the two halves of the spots.

    Returns
    -------
    :func:`.fidelity.signal_correlation` ``(genes, genes)`` from :data:`N_COUNT_SPLITS` splits of
    every spot; the agreement (:func:`.fidelity.upper_agreement`) of the same estimate on two
    random disjoint halves of the spots: near 1 when the spots determine the correlations, near
    0 when their estimate is noise (NaN under :data:`MIN_RELIABILITY_SPOTS` spots); and
    :func:`.fidelity.covariance_spectrum` of the signal's covariance, what the truth's PC1 share
    and effective rank are without their Poisson noise. ``(None, NaN, (NaN, NaN))`` when
    ``counts`` are not non-negative integers (binomial splitting needs counts).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not is_counts(counts):
        return None, float("nan"), (float("nan"), float("nan"))
    counts = counts.astype(np.int64)

    def estimate(rows: np.ndarray) -> np.ndarray:
        return signal_covariance(count_split_halves(counts[rows], depth[rows], rng, N_COUNT_SPLITS))

    n = len(counts)
    cov = estimate(np.arange(n))
    signal, spectrum_ = covariance_correlation(cov), covariance_spectrum(cov)
    if n < MIN_RELIABILITY_SPOTS:
        return signal, float("nan"), spectrum_
    order = rng.permutation(n)
    halves = [covariance_correlation(estimate(part)) for part in (order[: n // 2], order[n // 2 :])]
    return signal, upper_agreement(*halves), spectrum_


def judged_against(split: Split, labels: np.ndarray | None = None, seed: int = 0) -> Reference:
    """The split's :class:`Reference` (``labels``: one annotation per spot of the slide, or None).

    ``seed`` seeds the count splitting of :func:`truth_signal`.
    """
    slide = split.known_slide
    seen = slide.expression(split.gene_idx)  # log-normalised, usable seen spots
    spatial = spatially_variable(seen, neighbour_weights(slide.positions(slide.usable)))
    basis = LowRankBasis.fit(seen, N_AXES)
    target_labels = None
    if labels is not None:
        target_labels = np.asarray(labels, dtype=object)[split.target_obs]
    signal, reliability, signal_spectrum = truth_signal(
        _dense(split.truth)[:, spatial],
        np.asarray(split.truth_depth, dtype=np.float64),
        np.random.default_rng(seed),
    )
    return Reference(
        spatial=spatial,
        mean=basis.mean.astype(np.float64),
        axes=basis.components.astype(np.float64),
        truth_norm=normalize(split.truth, split.truth_depth),
        labels=target_labels,
        signal=signal,
        signal_reliability=reliability,
        signal_spectrum=signal_spectrum,
    )


def truth_scores(ref: Reference, seed: int = 0) -> dict:
    """The measured slide's own values at the scored spots, which the methods are read against.

    PC1 share and effective rank of the truth (normalised values over ``ref.spatial``), the
    same without its Poisson noise (``signal_pc1_share``, ``signal_effective_rank``), how well
    the scored spots determine the signal's correlations (``signal_coexpression_reliability``)
    and, with labels, the ARI of the fixed clustering of the truth (``ari``, over
    ``n_labelled`` annotated spots; ``seed`` seeds its k-means).
    """
    pc1, rank = spectrum(ref.truth_norm[:, ref.spatial])
    truth = {
        "pc1_share": pc1,
        "effective_rank": rank,
        "signal_coexpression_reliability": ref.signal_reliability,
        "signal_pc1_share": ref.signal_spectrum[0],
        "signal_effective_rank": ref.signal_spectrum[1],
    }
    if ref.labels is not None:
        keep = _annotated(ref.labels)
        truth["ari"] = cluster_ari(ref.truth_norm[keep], ref.labels[keep], seed=seed)
        truth["n_labelled"] = int(keep.sum())  # scored spots with an annotation
    return truth


def _annotated(labels: np.ndarray) -> np.ndarray:
    """Which labels are real annotations (not missing, empty, "NA" or "undetermined", the her2st
    pathologists' label for spots they did not assign to a region)."""
    text = np.asarray([str(x) for x in labels])
    return ~np.isin(np.char.lower(np.char.strip(text)), ["", "nan", "na", "none", "undetermined"])


def fidelity(pred_norm: np.ndarray, ref: Reference, seed: int = 0) -> dict:
    """Gene-specific fidelity of normalised values ``(targets, genes)`` (see :mod:`.fidelity`)."""
    gs = gene_specific_r(pred_norm, ref.truth_norm, ref.mean, ref.axes)
    top = ref.spatial
    pc1, erank = spectrum(pred_norm[:, top])

    def median(x: np.ndarray) -> float:
        return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")

    out = {
        "gene_specific_r": median(gs[top]),
        # per gene, for the box plots of `evaluate --plot` (NaN where a residual is constant)
        "gene_specific_pcc": [None if np.isnan(v) else round(float(v), 5) for v in gs[top]],
        "gene_specific_r_all": median(gs),
        "coexpression_r": coexpression_r(pred_norm[:, top], ref.truth_norm[:, top]),
        "coexpression_r_signal": (
            coexpression_signal_r(pred_norm[:, top], ref.signal) if ref.signal is not None else float("nan")
        ),
        "pc1_share": pc1,
        "effective_rank": erank,
    }
    if ref.labels is not None:
        keep = _annotated(ref.labels)
        out["ari"] = cluster_ari(pred_norm[keep], ref.labels[keep], seed=seed)
    return out


@dataclass
class MethodResult:
    """Predictions of one method at the scored spots and its wall time (fit and predict)."""

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
        raise ConfigError(f"protocol: {protocol!r} is not allowed; expected one of {PROTOCOLS}")
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
    if n_genes is not None and len(gene_idx) > n_genes:  # by their variance at the seen spots
        gene_idx = Slide.from_adata(adata, mask=targets).most_variable(gene_idx, n_genes)
    truth = _dense(adata.X[targets][:, gene_idx])
    # score only spots inside the convex hull of the known spots, where every method predicts
    inside = ~np.isnan(griddata(xy[known_spots], np.zeros(known_spots.sum()), xy[targets], method="linear"))
    target_rows, target_cols = target_rows[inside], target_cols[inside]
    known_slide = Slide.from_adata(known, mask)
    train_slide = known_slide if train_on is known else Slide.from_adata(train_on)
    return Split(
        protocol=protocol,
        known=known,
        target_rows=target_rows,
        target_cols=target_cols,
        target_xy=xy[targets][inside],
        truth=truth[inside],
        truth_depth=depth[targets][inside],
        genes=adata.var_names[gene_idx].to_numpy(),
        mask=mask,
        train_on=train_on,
        known_slide=known_slide,
        train_slide=train_slide,
        sites=sites_at(known_slide, target_rows, target_cols),
        gene_idx=gene_idx,  # the known slide has the slide's genes
        target_obs=np.flatnonzero(targets)[inside],
        n_outside=int(np.sum(~inside)),
    )


def _lost_blobs(xy: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Contiguous disks of spots covering about ``fraction`` of them (about three blobs)."""
    target = max(1, int(round(fraction * len(xy))))
    return random_disks(xy, rng, target, max(1.0, np.sqrt(target / 3 / np.pi)), trim=True)


# ----------------------------------------------------------------------------- methods


def run_method(
    name: str,
    split: Split,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    reference: list[Slide] | None = None,
    reference_names: list[str] | None = None,
    progress: Callable[[TrainEvent], None] | None = None,
) -> MethodResult:
    """Fit one method on the split's training slide and predict at its scored sites.

    ``progress`` sees every event of the fit (:class:`~.estimators.TrainEvent`).

    ``reference``: same-tissue slides (:mod:`.reference`, checked by :func:`check_references`)
    given to the classical methods (``default``, ``lowrank``, ``lowrank_linear``,
    ``lowrank_kernel``) for their basis; the other methods do not take them
    (``extra["reference"]`` says which did).

    Raises
    ------
    ConfigError
        An unknown method name.
    """
    from .estimators.classical import ClassicalEstimator

    start = time.perf_counter()
    kind = split.known_slide.lattice.kind
    estimator = method_estimator(name, kind, epochs=epochs, seed=seed)
    uses_reference = bool(reference) and isinstance(estimator, ClassicalEstimator)
    if uses_reference:
        estimator.reference, estimator.reference_names = list(reference), reference_names
    model = estimator.fit(split.train_slide, genes=split.gene_idx, device=device, callback=progress)
    # the paper protocol predicts from x_d with what was chosen on the full slide
    counts, depth = model.predict(
        split.known_slide, split.sites, split.gene_idx, device=device, classical="keep"
    )
    if depth is None:  # a raw-count model predicts no depth: give it interpolated depth
        depth = InterpolationModel("linear", kind).predictor(split.known_slide, split.sites).depth
    described = model.describe()
    extra = {f"classical_{k}": v for k, v in described.get("classical", {}).items()}
    if "best_epoch" in described or "best_epoch" in model.validation:
        extra["best_epoch"] = described.get("best_epoch", model.validation.get("best_epoch"))
    if getattr(model, "note", ""):  # e.g. a learned preset whose network was not kept, and why
        extra["note"] = model.note
    if reference:
        extra["reference"] = uses_reference
    return MethodResult(counts, depth, time.perf_counter() - start, extra)


def check_references(adata: ad.AnnData, references: list[Slide], names: list[str]) -> None:
    """Refuse a reference slide that is, or holds most spots of, the evaluated slide.

    A reference carrying the evaluated slide's scored spots would leak their truth into the
    basis. Spots are compared by (array_row, array_col, total counts): a reference sharing more
    than half of its spots with the slide is refused, as is one of another lattice type.

    Raises
    ------
    ReferenceSlideError
        Such a reference (named), or one of another lattice type.
    """
    from .fitting import reference_slides

    full = Slide.from_adata(adata)
    reference_slides(references, full, names)  # of the slide's lattice type
    own = set(zip(full.row.tolist(), full.col.tolist(), np.round(full.depth).tolist(), strict=True))
    for ref, name in zip(references, names, strict=True):
        spots = zip(ref.row.tolist(), ref.col.tolist(), np.round(ref.depth).tolist(), strict=True)
        shared = sum(spot in own for spot in spots)
        if ref.fingerprint == full.fingerprint or shared > len(ref.row) / 2:
            raise ReferenceSlideError(
                name,
                f"holds {shared} of the evaluated slide's spots (same position and "
                "counts): a reference must be another slide, or the scored spots' truth would leak into "
                "the basis",
            )


# ----------------------------------------------------------------------------- metrics


def score(result: MethodResult, split: Split, ref: Reference | None = None, seed: int = 0) -> dict:
    """Per-method summary: Pearson r on counts and on normalised values, RMSE (normalised), and
    the fidelity metrics of :func:`fidelity` when a :class:`Reference` is given."""
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
        "count_level": count_level(result.counts, split.truth),
        "n_genes_scored": int(scored.sum()),
        "n_genes_excluded": int((~scored).sum()),
        "seconds": round(result.seconds, 3),
        "pcc": [None if np.isnan(v) else round(float(v), 5) for v in r_counts],
        # per gene, in the order of "genes": which genes run above or below their measured level
        "count_levels": [
            None if np.isnan(v) else round(float(v), 4) for v in count_levels(result.counts, split.truth)
        ],
        **(fidelity(pred_norm, ref, seed) if ref is not None else {}),
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
    labels: str | np.ndarray | None = None,
    callback: Callable[[str, dict], None] | None = None,
    reference: list | None = None,
    reference_names: list[str] | None = None,
    progress: Callable[[str, TrainEvent], None] | None = None,
) -> dict:
    """Run every method on one split of a protocol and score it.

    Parameters
    ----------
    methods
        Names from :data:`~.estimators.METHODS` (``default``, ``transformer``, ``published``,
        ``linear``, ...); the presets' former names ``stentrans``, ``stentrans_transformer`` and
        ``stentrans_published`` are accepted and reported under the new ones.
    labels
        Annotations of the spots (an ``obs`` column name, or one value per spot): the ARI of the
        fixed clustering pipeline (:func:`.fidelity.cluster_ari`) on each method's prediction at
        the scored spots, beside the same pipeline on the measured truth there.
    reference
        Other slides of the same tissue (AnnData or Slides; never the evaluated slide, checked
        by :func:`check_references`) given to the classical methods for their basis
        (:mod:`.reference`); ``reference_names`` name them in the report.
    callback
        Called with each method's name and summary once it is scored.
    progress
        Called with a method's name and each event of its fit
        (:class:`~.estimators.TrainEvent`: stages, training steps, epochs) while it runs.

    Returns
    -------
    The JSON-ready report ``{"dataset", "protocol", "n_genes", "n_heldout_spots", "truth":
    {"pc1_share", "effective_rank", "signal_coexpression_reliability", "signal_pc1_share",
    "signal_effective_rank", "ari"}, "methods":
    {name: {"median_pcc", "mean_pcc", "median_pcc_norm", ..., "gene_specific_r",
    "coexpression_r", "coexpression_r_signal", "pc1_share", ...}}}``.
    """
    require_anndata(adata, accepts_slide=False)
    unknown = set(methods) - set(METHODS) - set(METHOD_ALIASES)
    if unknown:
        raise ConfigError(f"methods: unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if n_genes is not None and (
        isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or n_genes < 1
    ):  # 0 scored nothing (a table of NaN), -3 sliced all genes but three
        raise ConfigError(f"n_genes: {n_genes!r} is not allowed; expected an integer >= 1")
    if isinstance(labels, str):
        if labels not in adata.obs:
            raise InputError(f"labels: obs has no column {labels!r}; columns: {list(adata.obs.columns)}")
        labels = adata.obs[labels].to_numpy()
    elif labels is not None and len(labels) != adata.n_obs:
        raise InputError(f"labels: {len(labels)} values for {adata.n_obs} spots")
    refuse_enhanced(adata)  # predictions scored as truth would mean nothing
    adata = counts_of(adata)  # log values scored as counts would too
    methods = tuple(dict.fromkeys(canonical_method(m) for m in methods))
    references = None
    if reference:
        from .reference import reference_names as default_names
        from .slide import as_slide

        references = [as_slide(r) for r in reference]
        reference_names = default_names(len(references), reference_names)
        check_references(adata, references, reference_names)
    split = make_split(adata, protocol, n_genes=n_genes, seed=seed)
    ref = judged_against(split, labels, seed)
    report = {
        "dataset": dataset,
        "protocol": protocol,
        "n_genes": int(len(split.genes)),
        "n_heldout_spots": int(len(split.target_rows)),
        "n_known_spots": int(split.known_slide.not_lost.sum()),
        "n_outside_spots": split.n_outside,  # held out, outside the seen spots' hull: not scored
        "seed": seed,
        "genes": [str(g) for g in split.genes],
        "spatial_genes": [str(split.genes[i]) for i in ref.spatial],
        "truth": truth_scores(ref, seed),
        "methods": {},
    }
    if protocol == "paper":
        report["warning"] = "published (leaky) protocol: stEnTrans is scored on spots it trained on"
    if references:
        report["reference"] = [
            f"{name} (fingerprint {r.fingerprint}, {r.n_usable} spots)"
            for r, name in zip(references, reference_names, strict=True)
        ]
    for name in methods:
        result = run_method(
            name,
            split,
            epochs=epochs,
            seed=seed,
            device=device,
            reference=references,
            reference_names=reference_names,
            progress=None if progress is None else functools.partial(progress, name),
        )
        summary = score(result, split, ref, seed)
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
