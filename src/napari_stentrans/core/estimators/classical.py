"""The classical estimator: a low-rank reconstruction smoothed to every site, parameters chosen in fit.

``fit`` chooses, on the slide's own self-supervised pairs, the rank of the reconstruction, the
smoother of its spot scores (linear interpolation or a Gaussian kernel), the depth smoother
(or a stacked mixture of smoothers), and for sites in gaps a rank and smoothers of their own
chosen on hole-filling pairs shaped like the slide's gaps (:mod:`..classical` has the
mathematics). The fitted :class:`ClassicalModel` holds only those choices (no network, no
torch) and predicts at any sites: the basis is fitted on the predicting slide's spots.

The same class, configured differently, is the ``default`` preset and the low-rank baselines of
the evaluation (``lowrank_linear``, ``lowrank_kernel``: one smoother family, the single best
depth smoother, no gap smoothers, the basis on the evaluated genes).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ..classical import (
    BANDWIDTH_GRID,
    COEXPRESSION_WEIGHT,
    DEPTH_BANDWIDTH_GRID,
    RANK_GRID,
    RESIDUAL_SMOOTHER_GRID,
    TARGET_SUM,
    ClassicalParams,
    LowRankBasis,
    canonical_order,
    classical_params_steps,
    denormalize,
    dropout_pairs,
    gene_residuals_steps,
    hole_pairs,
    noise_factor,
    residual_shrinkage,
    run_steps,
    smooth,
    smoothing_weights,
)
from ..config import DEFAULT_RUNTIME, Config, Runtime
from ..errors import InputError
from ..fidelity import morans_i, neighbour_weights
from ..reference import ReferenceBasis, fit_reference_basis
from ..sites import OutputSites
from ..slide import Slide
from .base import (
    CountCalibration,
    Estimator,
    FitRequest,
    FittedModel,
    Predictor,
    StageSteps,
    TrainEvent,
    staged,
)

MIN_USABLE_SPOTS = 8  # fewer spots make no self-supervised pair to choose on

# (expression smoothers, depth smoothers) per ClassicalConfig.smoothers; None = linear interpolation
_GRIDS: dict[str, tuple[tuple, tuple]] = {
    "all": (BANDWIDTH_GRID, DEPTH_BANDWIDTH_GRID),
    "linear": ((None,), (None,)),
    "kernel": (
        tuple(h for h in BANDWIDTH_GRID if h is not None),
        tuple(h for h in DEPTH_BANDWIDTH_GRID if h is not None),
    ),
}


def choose_params(slide: Slide, values: np.ndarray, config: Config) -> ClassicalParams:
    """Rank and smoothers of the classical estimate, chosen on ``slide``'s own pairs.

    Parameters
    ----------
    slide
        The prepared slide.
    values
        ``(n_usable, n_genes)`` log-normalised expression of the usable spots (the basis genes).
    config
        ``config.classical`` says which candidates, how depth is chosen and whether gaps get
        their own parameters; ``config.seed`` seeds the hole-filling pairs.

    The choice runs many small matrix products: BLAS is held to one thread, so a loaded machine
    does not lose it to thread oversubscription (docs/benchmarks.md). :func:`choose_params_steps`
    is the same choice reporting its progress.
    """
    return run_steps(choose_params_steps(slide, values, config))


def _pairs(steps: Generator, what: str, pairs: str) -> Generator[tuple[str, int, int], None, object]:
    """``(stage, done, total)`` for each ``(done, total)`` of a stepwise choice on ``pairs``; its result.

    BLAS is held to one thread while the choice computes, released at each yield (a generator
    runs on its consumer's thread: a limit held across a yield would bind the consumer's work).
    """
    while True:
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                done, total = next(steps)
        except StopIteration as end:
            return end.value
        yield f"{what} on {total} {pairs}", done, total


def choose_params_steps(
    slide: Slide, values: np.ndarray, config: Config
) -> Generator[tuple[str, int, int], None, ClassicalParams]:
    """:func:`choose_params`, yielding ``(stage, pairs done, pairs)`` as the choice goes on.

    The stages: rank and smoothers on the coset pairs, the rank again with shrunk gene residuals on
    the same pairs (``gene_residuals="shrunk"``), and the same two for sites in gaps on hole-filling
    pairs shaped like the slide's gaps (``gap_smoothers``).
    """
    usable = slide.usable
    # every pair, random ones too, is drawn over the spots sorted by position: the same slide
    # listed in another (barcode) order gets the same choice
    order = canonical_order(slide.positions(usable))
    values = values[order]
    rows, cols = slide.row[usable][order], slide.col[usable][order]
    keep = slide.lattice.coset(rows, cols)  # all four coset pairs
    positions, log_depth = slide.positions(usable)[order], np.log(slide.depth[usable][order])
    bandwidths, depth_bandwidths = _GRIDS[config.classical.smoothers]
    choice = dict(
        log_depth=log_depth,
        depth_choice=config.classical.depth_choice,
        bandwidths=bandwidths,
        depth_bandwidths=depth_bandwidths,
    )
    residuals = config.classical.gene_residuals == "shrunk"
    params, _ = yield from _pairs(
        classical_params_steps(values, positions, keep, **choice),
        "choosing rank and smoothers",
        "coset pairs",
    )
    # the residuals' rank and smoother: on same-scale dropout pairs, for both site groups
    dropped = dropout_pairs(len(positions), np.random.default_rng(config.seed)) if residuals else []
    shared: dict = {}  # the dropout pairs' bases and metrics, computed once for both site groups
    if residuals:
        params = yield from _with_residuals(params, values, positions, dropped, shared)
    with threadpool_limits(limits=1, user_api="blas"):
        hole_sizes = slide.hole_sizes() if config.classical.gap_smoothers else ()
        pairs = (
            hole_pairs(positions, hole_sizes, np.random.default_rng(config.seed)) if len(hole_sizes) else []
        )
    if len(hole_sizes):  # gaps to fill: their smoothers are chosen on gaps of the same size
        holes, scores = yield from _pairs(
            classical_params_steps(values, positions, pairs, scale=1.0, **choice),
            "choosing gap smoothers",
            "hole-filling pairs",
        )
        if scores:  # gaps of one or two sites make no pair with >= 3 targets: keep the main choice
            if residuals:
                holes = yield from _with_residuals(holes, values, positions, dropped, shared, gaps=True)
            params = replace(params, holes=holes)
    return params


def _with_residuals(
    params: ClassicalParams,
    values: np.ndarray,
    positions: np.ndarray,
    pairs: list[np.ndarray],
    cache: dict,
    gaps: bool = False,
) -> Generator[tuple[str, int, int], None, ClassicalParams]:
    """``params`` with the rank and the residuals' smoother chosen, with shrunk gene residuals.

    On same-scale dropout pairs (:func:`~..classical.dropout_pairs`), with co-expression r
    counted twice: chosen on the coset and hole pairs (the scores' own smoother only, weights
    1/1/1) the bar of issue 12 held in 64 of 108 accuracy runs, chosen so in 71 (69 for the rule
    picked on 17 slides and applied to the 18th; docs/design.md, sixth session). The
    shrinkage's ``kappa`` comes from :data:`~..classical.RESIDUAL_GRID` (one value: fixed).
    """
    what = f"choosing {'gap ' if gaps else ''}rank and residual smoother"
    (rank, kappa, smoother), _ = yield from _pairs(
        gene_residuals_steps(
            values,
            positions,
            pairs,
            params.bandwidth,
            scale=1.0,
            residual_bandwidths=RESIDUAL_SMOOTHER_GRID,
            coexpression_weight=COEXPRESSION_WEIGHT,
            cache=cache,
        ),
        what,
        "dropout pairs",
    )
    return replace(params, rank=rank, residual=kappa, residual_bandwidth=smoother)


def _usable_digest(slide: Slide) -> str:
    return hashlib.sha1(np.packbits(slide.usable).tobytes()).hexdigest()[:12]


@dataclass(eq=False, repr=False)  # FittedModel.__repr__: one short line
class ClassicalModel(FittedModel):
    """The fitted classical estimator: its chosen parameters and the genes of its basis.

    Attributes
    ----------
    config
        The configuration it was fitted with.
    params
        Rank and smoothers (and those for gaps, and the depth mixture).
    lattice_kind
        Lattice type of the slide it was fitted on.
    basis_genes
        Genes the basis and the choice used on the fitting slide.
    slide_fingerprint
        :attr:`Slide.fingerprint` of that slide.
    history, note, requested
        When it is the result of a learned preset whose network was not kept: the training
        history, a line saying so, and that preset's configuration (``config`` is the
        default's, which made the estimate).
    reference
        Gene loadings fitted with same-tissue reference slides (:mod:`..reference`), or None:
        the basis is fitted on the slide's own spots.
    """

    config: Config
    params: ClassicalParams
    lattice_kind: str
    basis_genes: list[str] = field(repr=False)
    slide_fingerprint: str
    target_sum: float = TARGET_SUM
    history: dict = field(default_factory=dict, repr=False)
    validation: dict = field(default_factory=dict, repr=False)
    note: str = ""
    name: str = "default"
    requested: Config | None = field(default=None, repr=False)
    reference: ReferenceBasis | None = field(default=None, repr=False)
    _bases: dict = field(default_factory=dict, repr=False)

    @property
    def training_genes(self) -> list[str]:
        return self.basis_genes

    @property
    def min_detection(self) -> float:
        return self.config.data.min_detection

    def describe(self) -> dict:
        out = {
            "preset": self.name,
            "estimator": "classical",
            "classical": self.params.describe(),
            "n_training_genes": len(self.basis_genes),
        }
        if self.note:
            out["note"] = self.note
        if self.reference is not None:
            out["reference"] = self.reference.describe()
        return out

    def basis_gene_indices(self, slide: Slide) -> np.ndarray:
        """The basis genes on ``slide``: its most variable genes, or the fitted ones by name."""
        if self.config.classical.basis_genes == "given":
            idx = slide.genes.get_indexer(self.basis_genes)
            if (idx < 0).any():
                raise InputError(
                    f"{int((idx < 0).sum())} gene(s) of the model's basis are not in this slide, "
                    f"e.g. {self.basis_genes[int(np.flatnonzero(idx < 0)[0])]!r}"
                )
            return idx
        return slide.training_genes(self.config.data.n_train_genes, self.config.data.min_detection)

    def basis(self, slide: Slide, values: np.ndarray | None = None) -> LowRankBasis:
        """The low-rank basis of ``slide``'s usable spots, fitted once per slide and mask.

        ``values`` (the log-normalised expression of :attr:`basis_genes`, when the caller has
        it) saves computing it again. The rank covers both the main and the gap parameters.
        With a :attr:`reference`, the axes are the reference's (``values`` gives its genes).
        """
        key = (slide.fingerprint, _usable_digest(slide))
        if key not in self._bases:
            if values is None and self.reference is None:
                values = slide.expression(self.basis_gene_indices(slide), "log1p", self.target_sum)
            rank = max(self.params.rank, self.params.for_holes.rank)
            if len(self._bases) >= 2:  # e.g. a napari slide repainted: keep the latest ones only
                self._bases.pop(next(iter(self._bases)))
            if self.reference is not None:  # the reference slides' axes, this slide's scores
                columns = (
                    None if values is None else pd.Index(self.basis_genes).get_indexer(self.reference.genes)
                )
                shared = (
                    None
                    if columns is None or (columns < 0).any()
                    else np.ascontiguousarray(values[:, columns])
                )
                self._bases[key] = self.reference.basis(slide, rank, shared)
            else:
                self._bases[key] = LowRankBasis.fit(values, rank)
        return self._bases[key]

    def for_slide(self, slide: Slide, classical: str = "auto") -> tuple[ClassicalModel, str]:
        """This model, or one re-chosen on ``slide``, and a line saying which.

        ``"auto"``: kept on the slide it was fitted on, re-chosen on another; ``"keep"``: always
        kept; ``"refit"``: always re-chosen.
        """
        same = slide.fingerprint == self.slide_fingerprint
        if classical == "keep" or (classical == "auto" and same):
            return self, "chosen on this slide" if same else "kept from the slide the model was fitted on"
        refit = ClassicalEstimator(self.config, name=self.name).fit_model(slide)
        return refit, "re-chosen on this slide"

    def predictor(
        self, slide: Slide, sites: OutputSites, *, runtime: Runtime = DEFAULT_RUNTIME, classical: str = "auto"
    ) -> ClassicalPredictor:
        model, source = self.for_slide(slide, classical)
        predictor = ClassicalPredictor(model, slide, sites)
        predictor.notes["classical_choice"] = source
        # gap parameters kept from another slide say nothing where no site lies in a gap
        used = model.params if predictor.fills_gaps else replace(model.params, holes=None)
        predictor.notes["classical_summary"] = used.summary()
        predictor.params = model.params
        if model.config.classical.calibrate_counts:
            predictor.calibrate(
                slide, sites, lambda spots: ClassicalPredictor(model, slide, spots), model.config.classical
            )
        else:
            predictor.notes["count_level"] = CountCalibration.OFF
        return predictor


@dataclass(eq=False, repr=False)  # FittedModel.__repr__: one short line
class _SiteGroup:
    """Sites sharing one parameter set: their smoothed scores and, with gene residuals, the weights."""

    rows: np.ndarray
    rank: int
    smoothed: np.ndarray  # (n_rows, rank) smoothed low-rank scores
    weights: sp.csr_matrix | None = None  # (n_rows, n_usable) smoother of the gene residuals
    noise: np.ndarray | None = None  # (n_rows,) noise_factor of those weights
    kappa: float = 0.0


class ClassicalPredictor(Predictor):
    """The classical estimate at fixed sites: scores and depth smoothed once, loadings per gene batch."""

    def __init__(self, model: ClassicalModel, slide: Slide, sites: OutputSites) -> None:
        super().__init__()
        self.model = model
        self.params = model.params  # the parameters used here (the model's or re-chosen ones)
        self.slide = slide
        src_xy = slide.positions(slide.usable)
        dst_xy = sites.positions(slide)
        self.basis = model.basis(slide)
        in_gap = slide.in_gap(dst_xy)  # sites in gaps take the smoothers chosen on hole-filling pairs
        self.fills_gaps = bool(in_gap.any())
        log_depth = np.log(slide.depth[slide.usable])
        self.groups: list[_SiteGroup] = []
        self.depth = np.empty(len(sites))
        for rows, params in model.params.site_groups(in_gap):
            rank = min(params.rank, self.basis.max_rank)
            scores = self.basis.scores[:, :rank]
            if params.residual is None:
                self.groups.append(
                    _SiteGroup(rows, rank, smooth(src_xy, dst_xy[rows], params.bandwidth, scores))
                )
            else:  # each gene's residual is smoothed too: keep its weights
                weights = smoothing_weights(src_xy, dst_xy[rows], params.bandwidth)
                residual_weights = params.residual_weights(src_xy, dst_xy[rows], weights)
                group = _SiteGroup(
                    rows,
                    rank,
                    weights @ scores,
                    residual_weights,
                    noise_factor(residual_weights),
                    params.residual,
                )
                self.groups.append(group)
            self.depth[rows] = np.exp(params.smooth_log_depth(src_xy, dst_xy[rows], log_depth))
        self.neighbours = (
            neighbour_weights(src_xy) if any(g.weights is not None for g in self.groups) else None
        )

    def normalised(self, values: np.ndarray) -> np.ndarray:
        """The classical estimate ``(n_sites, genes)`` of log-normalised expression at the sites.

        ``values`` are the genes' log-normalised values at the usable spots.
        """
        out = np.empty((len(self.depth), values.shape[1]), dtype=np.float32)
        loadings = {rank: self.basis.loadings(values, rank) for rank in {g.rank for g in self.groups}}
        residuals: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # rank -> residual, its Moran's I
        for group in self.groups:
            mean, coef = loadings[group.rank]
            out[group.rows] = group.smoothed @ coef + mean
            if group.weights is not None:
                if group.rank not in residuals:  # gap and non-gap sites often share the rank
                    residual = values - mean - self.basis.scores[:, : group.rank] @ coef
                    residuals[group.rank] = residual, morans_i(residual, self.neighbours)
                residual, moran = residuals[group.rank]
                shrink = residual_shrinkage(moran, group.noise, group.kappa)
                out[group.rows] += (shrink * (group.weights @ residual)).astype(np.float32)
        return out

    def predict_counts(self, gene_idx: np.ndarray) -> np.ndarray:
        values = self.slide.expression(gene_idx, "log1p", self.model.target_sum)
        # one depth model for every site (measured ones too): a dotted map otherwise
        return denormalize(np.clip(self.normalised(values), 0.0, None), self.depth, self.model.target_sum)


class ClassicalEstimator(Estimator):
    """Chooses the classical estimator's parameters on a slide (see module docstring).

    Parameters
    ----------
    config
        ``config.classical`` and ``config.data`` matter; the rest is recorded.
    name
        Name of the fitted model (``default`` or a preset that trained nothing; a baseline's
        method name in the evaluation).
    reference
        Same-tissue reference slides (:mod:`..reference`): the basis's gene loadings are fitted
        on them pooled with the slide; None: on the slide alone.
    reference_names
        A name per reference slide for the record (e.g. its file).
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        name: str | None = None,
        reference: list[Slide] | None = None,
        reference_names: list[str] | None = None,
    ) -> None:
        self.config = config or Config()
        self.name = name or self.config.preset
        self.reference = list(reference) if reference else None
        self.reference_names = reference_names

    def fit_model(
        self, slide: Slide, genes: np.ndarray | None = None, values: np.ndarray | None = None
    ) -> ClassicalModel:
        """Fit without events (see :meth:`fit_events`); ``values`` of the basis genes may be given."""
        return run_steps(self.fit_model_steps(slide, genes, values))

    def fit_model_steps(
        self, slide: Slide, genes: np.ndarray | None = None, values: np.ndarray | None = None
    ) -> StageSteps:
        """:meth:`fit_model`, yielding ``(stage, done, total)`` as it goes (:func:`choose_params_steps`).

        Returns the :class:`ClassicalModel`.

        Raises
        ------
        InputError
            Fewer than 8 usable spots, or a basis on given genes without ``genes``.
        """
        if slide.n_usable < MIN_USABLE_SPOTS:
            raise InputError(
                f"only {slide.n_usable} usable spots: the classical choice needs at least {MIN_USABLE_SPOTS}"
            )
        config = self.config
        if config.classical.basis_genes == "given":
            if genes is None:
                raise InputError("this estimator fits on given genes: pass genes=...")
            gene_idx = np.asarray(genes)
        else:
            gene_idx = slide.training_genes(config.data.n_train_genes, config.data.min_detection)
        if values is None:
            # the basis genes (the most variable), not the genes enhanced and written
            what = f"normalising the {len(gene_idx)} basis genes at {slide.n_usable} spots"
            yield what, 0, 1
            values = slide.expression(gene_idx, "log1p", TARGET_SUM)
            yield what, 1, 1
        reference = None
        if self.reference is not None:  # checked (genes shared, not the slide itself) before the choice
            reference = fit_reference_basis(
                slide,
                gene_idx,
                self.reference,
                max(RANK_GRID),
                self.reference_names,
                seed=config.seed,
                values=values,
            )
        params = yield from choose_params_steps(slide, values, config)
        model = ClassicalModel(
            config=config,
            params=params,
            lattice_kind=slide.lattice.kind,
            basis_genes=[str(g) for g in slide.genes[gene_idx]],
            slide_fingerprint=slide.fingerprint,
            name=self.name,
            reference=reference,
        )
        # one basis serves both site groups: its rank is the larger of theirs
        rank, gap_rank = params.rank, params.for_holes.rank
        what = f"fitting the low-rank basis (rank {max(rank, gap_rank)}" + (
            f"; {rank} at measured sites, {gap_rank} in gaps)" if gap_rank != rank else ")"
        )
        yield what, 0, 1
        model.basis(slide, values)  # fitted here once; training and prediction on this slide reuse it
        yield what, 1, 1
        return model

    def events(self, request: FitRequest) -> Generator[TrainEvent, None, ClassicalModel | None]:
        slide, genes, stop = request.slide, request.genes, request.stop
        start = time.perf_counter()
        model = yield from staged(self.fit_model_steps(slide, genes), start, stop)
        if model is None:
            return None
        elapsed = time.perf_counter() - start
        # the choice in full is the result's (uns classical_summary: the CLI's summary line, the
        # napari verdict); the progress line printed it a second time
        message = (
            f"{slide.n_usable} spots, a basis of {len(model.basis_genes)} genes; classical estimate "
            f"chosen (rank {model.params.rank})"
        )
        yield TrainEvent("prepared", 0, 0, 0, 0, None, None, None, elapsed, None, "cpu", message)
        yield TrainEvent("finished", 0, 0, 0, 0, None, None, None, elapsed, 0.0, "cpu", "no network to train")
        return model


__all__ = [
    "ClassicalEstimator",
    "ClassicalModel",
    "ClassicalPredictor",
    "choose_params",
    "choose_params_steps",
]
