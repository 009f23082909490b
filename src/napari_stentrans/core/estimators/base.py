"""What every estimator shares: ``fit(slide) -> fitted model``, ``fitted.predictor(slide, sites)``.

An :class:`Estimator` fits on a prepared slide and returns a :class:`FittedModel`; fitting is one
generator of :class:`TrainEvent` progress reports with a stop flag (:meth:`Estimator.fit_events`),
which the CLI's progress bar and the napari worker both drive. A fitted model predicts counts at
any set of output sites of any slide of its lattice type through a :class:`Predictor`, one gene
batch at a time, so memory is bounded by the batch and not by the number of genes; ``enhance``
(an AnnData in memory) and ``write`` (an ``.h5ad`` streamed to disk) are built on it.

Nothing here imports torch: only learned models do (:mod:`.learned`, :mod:`.cnn`).
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..config import DEFAULT_RUNTIME, Runtime
from ..errors import InputError, TrainingStopped
from ..io.common import source_of
from ..slide import MaskLike, Slide, as_slide

if TYPE_CHECKING:
    import anndata as ad

    from ..config import ClassicalConfig
    from ..sites import OutputSites
    from ..streaming import StreamedSlide

CLASSICAL_CHOICES = ("auto", "keep", "refit")
MEASURED_CHOICES = ("estimate", "keep")


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class TrainEvent:
    """One progress report of a fit.

    ``kind`` is ``"stage"`` (the work before training: ``message`` names the stage, e.g.
    ``"choosing rank and smoothers on 4 coset pairs"``, ``step`` of ``n_steps`` of its
    items are done, ``0`` when it begins), ``"prepared"`` (data ready, before any step;
    ``message`` says what was chosen), ``"step"``, ``"epoch"`` (after validation),
    ``"finished"`` or ``"stopped"`` (stop flag; no model is produced). Times are seconds since
    the fit started (training's own events: since training started); ``eta`` is the expected
    rest.
    """

    kind: str
    epoch: int
    n_epochs: int
    step: int
    n_steps: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    elapsed: float
    eta: float | None
    device: str
    message: str = ""


#: the steps of the work before training: ``(stage, done, total)``, ``done = 0`` when it begins;
#: the generator returns what the stages built
StageSteps = Generator[tuple[str, int, int], None, object]


def stage_event(message: str, done: int, total: int, elapsed: float, device: str = "cpu") -> TrainEvent:
    """A ``"stage"`` event: ``done`` of ``total`` items of the stage ``message``."""
    return TrainEvent("stage", 0, 0, done, total, None, None, None, elapsed, None, device, message)


def stage_text(event: TrainEvent) -> str:
    """A ``"stage"`` event in words: ``"STAGE: 2/4 (3.1 s)"``, ``"STAGE... (from 0.4 s)"`` as it
    begins (seconds since the fit began: the start line is not the stage's duration), ``"STAGE..."``
    at the start (a write's own clock always said "from 0.0 s")."""
    if event.step == 0:
        return f"{event.message}..." + (f" (from {event.elapsed:.1f} s)" if event.elapsed >= 0.05 else "")
    return f"{event.message}: {event.step}/{event.n_steps} ({event.elapsed:.1f} s)"


def end_text(event: TrainEvent, elapsed: bool = False) -> str:
    """``"fit finished (MESSAGE)"`` or ``"training stopped (MESSAGE, 1.5 s)"``: a ``finished`` or
    ``stopped`` event in words, ``fit`` for a fit without epochs (a classical fit trains nothing)."""
    what = "fit" if event.n_epochs == 0 else "training"
    seconds = f", {event.elapsed:.1f} s" if elapsed else ""
    return f"{what} {event.kind} ({event.message}{seconds})"


def staged(
    steps: StageSteps, start: float, stop: StopFlag | None = None, device: str = "cpu", prefix: str = ""
) -> Generator[TrainEvent, None, object]:
    """Drive ``steps``, yielding a ``"stage"`` event per report; returns what ``steps`` returns.

    ``start`` is the fit's :func:`time.perf_counter` at its start; ``prefix`` is put before each
    stage's name (e.g. which of several fits it is). Once ``stop.is_set()`` the work ends before
    the next stage item with a ``"stopped"`` event, and None is returned.
    """
    while True:
        if stop is not None and stop.is_set():
            steps.close()
            elapsed = time.perf_counter() - start
            yield TrainEvent(
                "stopped", 0, 0, 0, 0, None, None, None, elapsed, None, device, "stopped by request"
            )
            return None
        try:
            message, done, total = next(steps)
        except StopIteration as end:
            return end.value
        yield stage_event(prefix + message, done, total, time.perf_counter() - start, device)


def run_fit(
    events: Generator[TrainEvent, None, FittedModel | None], callback: Callable[[TrainEvent], None] | None
) -> FittedModel | None:
    """Drive a fit's event generator to the end; ``callback`` sees every event. None if stopped."""
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value
        if callback is not None:
            callback(event)


@dataclass(frozen=True)
class FitRequest:
    """What a fit is asked to do.

    Attributes
    ----------
    slide
        The prepared slide (lost sites are never used).
    genes
        Indices of the genes the caller will predict; estimators that learn from the genes they
        predict (the evaluation's low-rank baselines, the CNN) use them, the others choose their
        own training genes.
    device
        Where learned models train (:class:`~..config.Runtime`).
    stop
        When ``stop.is_set()`` the fit ends within one step with a ``"stopped"`` event and
        returns None.
    """

    slide: Slide
    genes: np.ndarray | None = None
    device: str = "auto"
    stop: StopFlag | None = None


class Estimator(ABC):
    """A method that fits on one slide (see module docstring)."""

    #: the method's name in reports (``stentrans``, ``linear``, ``lowrank_kernel``, ...)
    name: str = ""

    @abstractmethod
    def events(self, request: FitRequest) -> Generator[TrainEvent, None, FittedModel | None]:
        """Fit as asked, yielding progress events; the generator returns the fitted model."""

    def fit_events(
        self,
        slide: Slide,
        *,
        genes: np.ndarray | None = None,
        device: str = "auto",
        stop: StopFlag | None = None,
    ) -> Generator[TrainEvent, None, FittedModel | None]:
        """Fit on ``slide``, yielding progress events (see :class:`FitRequest`)."""
        return self.events(FitRequest(slide, genes, device, stop))

    def fit(
        self,
        slide: Slide,
        *,
        genes: np.ndarray | None = None,
        device: str = "auto",
        stop: StopFlag | None = None,
        callback: Callable[[TrainEvent], None] | None = None,
    ) -> FittedModel | None:
        """:meth:`fit_events` to the end; ``callback`` sees every event. None if stopped."""
        return run_fit(self.fit_events(slide, genes=genes, device=device, stop=stop), callback)


def instant_fit(
    message: Callable[[FittedModel], str], model_factory: Callable[[], FittedModel]
) -> Generator[TrainEvent, None, FittedModel]:
    """The events of a fit without steps: ``prepared`` (saying what was chosen), ``finished``."""
    start = time.perf_counter()
    model = model_factory()
    elapsed = time.perf_counter() - start
    yield TrainEvent("prepared", 0, 0, 0, 0, None, None, None, elapsed, None, "cpu", message(model))
    yield TrainEvent("finished", 0, 0, 0, 0, None, None, None, elapsed, 0.0, "cpu", "no network to train")
    return model


class OutOfMemoryFallback(RuntimeWarning):
    """The device ran out of memory; prediction went on with smaller gene batches."""


class NetworkNotKeptWarning(UserWarning):
    """A learned preset's network was not kept: the model is the ``default``'s classical estimate.

    Its ``note`` says why (training never improved the held-out loss, or the gate refused the
    network). The CLI prints the note and napari's verdict says it; the Python API warns, as
    a user who asked for ``"transformer"`` would otherwise not know the result is the default's.
    """


def warn_if_network_not_kept(model: FittedModel | None) -> None:
    """Warn (:class:`NetworkNotKeptWarning`) when ``model`` is a learned fit that fell back."""
    note = getattr(model, "note", "")
    if model is not None and note and not model.uses_network:
        warnings.warn(
            f"{note}; model.note keeps this, model.history the training's losses and model.validation the gate's numbers",
            NetworkNotKeptWarning,
            stacklevel=3,
        )


class BatchTooLarge(Exception):
    """Raised by :meth:`Predictor.predict_counts` when a gene batch does not fit the device."""


class Predictor(ABC):
    """Predicted counts of a fitted model at fixed output sites of one slide, a gene batch at a time.

    Everything that does not depend on the genes (rasters, the low-rank basis, smoothing
    weights, the output depth, the network) is prepared in the constructor.

    Attributes
    ----------
    depth
        ``(n_sites,)`` the depth the counts are scaled by at the sites, or None for models that
        predict raw counts directly (the published recipe).
    notes
        Provenance of choices made for this slide (e.g. where the classical rank came from).
    """

    depth: np.ndarray | None = None
    params = None  # the classical parameters used at these sites, when there is a classical estimate
    #: scales each gene batch to the measured counts' level (:class:`CountCalibration`), or None
    calibration: CountCalibration | None = None

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}

    def calibrate(
        self,
        slide: Slide,
        sites: OutputSites,
        at_spots: Callable[[OutputSites], Predictor],
        config: ClassicalConfig,
    ) -> None:
        """Scale every gene batch by a :class:`CountCalibration` to the measured counts' level.

        When ``sites`` hold every usable spot of ``slide`` (``enhance``: measured sites), the
        factors come from this prediction's own rows there; otherwise ``at_spots(spot_sites(slide))``
        builds the same model's predictor at those spots (evaluation: held-out sites only).
        ``config`` gives the neighbourhood and prior of the local factors.
        """
        rows = usable_spot_rows(slide, sites)
        local = {"bandwidth": config.calibration_bandwidth, "prior": config.calibration_prior}
        if rows is not None:
            self.calibration = CountCalibration(slide, sites, rows=rows, **local)
        else:
            self.calibration = CountCalibration(slide, sites, at_spots=at_spots(spot_sites(slide)), **local)
        self.notes["count_level"] = self.calibration.note

    @abstractmethod
    def predict_counts(self, gene_idx: np.ndarray) -> np.ndarray:
        """Predicted counts ``(n_sites, len(gene_idx))`` (float32); may raise :class:`BatchTooLarge`."""

    def batches(
        self, gene_idx: np.ndarray, batch_size: int = 256, stop: StopFlag | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, counts)``: predicted counts of ``gene_idx[start:start + n]``.

        A batch too large for the device halves the batch (with an :class:`OutOfMemoryFallback`
        warning) and retries; :class:`~..errors.TrainingStopped` is raised between batches once
        ``stop`` is set.
        """
        start = 0
        while start < len(gene_idx):
            if stop is not None and stop.is_set():
                raise TrainingStopped("enhancement stopped by request; nothing was written")
            chunk = gene_idx[start : start + batch_size]
            try:
                counts = self.predict_counts(chunk)
                if self.calibration is not None:
                    counts = self.calibration.apply(chunk, counts)
            except BatchTooLarge as exc:
                if batch_size == 1:
                    raise (exc.__cause__ or exc) from None
                batch_size = max(1, batch_size // 2)
                warnings.warn(
                    f"{exc}; continuing with {batch_size} genes per batch", OutOfMemoryFallback, stacklevel=2
                )
                continue
            counts = counts.astype(np.float32, copy=False)
            self._check_finite(counts, chunk)
            yield start, counts
            start += len(chunk)

    def _check_finite(self, counts: np.ndarray, chunk: np.ndarray) -> None:
        """Raise InputError when a prediction holds NaN or infinity (a model with broken weights,
        a diverged training): checked per batch, before anything reaches the output."""
        finite = np.isfinite(counts)
        if finite.all():
            return
        bad = ~finite.all(axis=0)
        first = int(chunk[np.flatnonzero(bad)[0]])
        genes = getattr(getattr(self, "slide", None), "genes", None)
        name = repr(str(genes[first])) if genes is not None else f"#{first}"
        raise InputError(
            f"the model predicted NaN or infinite counts for gene {name} and {int(bad.sum()) - 1} "
            f"other(s) of this batch ({int((~finite).sum())} values); the model's weights or the "
            "input are broken; nothing was written"
        )

    def release(self) -> None:
        """Free what prediction held (network weights, device memory)."""
        if self.calibration is not None and self.calibration.at_spots is not None:
            self.calibration.at_spots.release()


def spot_sites(slide: Slide) -> OutputSites:
    """The output sites of ``slide``'s usable spots (kind ``measured``), in spot order."""
    from ..sites import sites_at

    usable = slide.usable
    return sites_at(slide, 2 * slide.row[usable], 2 * slide.col[usable], kind="measured")


def usable_spot_rows(slide: Slide, sites: OutputSites) -> np.ndarray | None:
    """Rows of ``sites`` that are measured sites of ``slide``'s usable spots, in the spots' order
    (row ``i`` is the ``i``-th usable spot, as ``slide.counts[slide.usable]``), when every usable
    spot has one (the output sites of ``enhance``); None otherwise.

    Output sites are sorted by kind and position, not by spot: a slide's spots come in any order.
    """
    rows = np.flatnonzero((sites.kind == "measured") & (sites.spot >= 0))
    rows = rows[slide.usable[sites.spot[rows]]]
    if len(rows) != slide.n_usable or len(np.unique(sites.spot[rows])) != slide.n_usable:
        return None
    return rows[np.argsort(sites.spot[rows], kind="stable")]


class CountCalibration:
    """Per-gene, per-site factors that bring a model's predicted counts to the measured counts' level.

    Every estimate of log-normalised values is turned into counts by ``expm1``; smoothing a log
    averages it, and the mean of a log is below the log of the mean (Jensen's inequality), the
    more so the sparser the gene. Uncalibrated, ``X`` of the default summed to 0.35-0.66 of the
    measured counts at held-out spots (DLPFC 151673: 0.35; docs/design.md), and the shortfall
    differs between regions: a gene's level differences between regions come out flattened.

    The factor of gene ``g`` at site ``s`` is

        F_sg = (Y_sg + a) / (P_sg + a / f_g),   then rescaled per gene (``e_g``, below),

    with ``Y_sg`` and ``P_sg`` the gene's measured and predicted counts at the usable spots,
    summed with the normalised Gaussian weights of ``bandwidth`` input pitches around ``s`` and
    multiplied by the effective number of spots of those weights (``1 / sum w^2``), ``f_g`` the
    gene's slide-wide factor (measured over predicted counts summed over the usable spots) and
    ``a`` the ``prior`` in counts: a neighbourhood with few measured counts of the gene keeps
    ``f_g``; one with many takes its own ratio (a Poisson-gamma posterior mean of the local
    ratio). ``e_g`` makes the calibrated prediction at the usable spots sum to the measured
    counts exactly. ``bandwidth=None`` is the slide-wide factor alone. Pearson r on counts is
    unchanged by a per-gene factor, not by a per-site one.

    Parameters
    ----------
    slide
        The slide: its measured counts at the usable spots are the targets.
    sites
        The sites the calibrated prediction is made at (their positions place the local factors).
    rows
        Rows of the calibrated prediction that are the usable spots (:func:`usable_spot_rows`):
        the factors come from the prediction itself.
    at_spots
        Otherwise, the same model's :class:`Predictor` at the usable spots (:func:`spot_sites`),
        run once more per gene batch.
    bandwidth, prior
        :class:`~..config.ClassicalConfig` ``calibration_bandwidth`` and ``calibration_prior``.
    """

    #: the note of a slide-wide factor per gene (``bandwidth=None``)
    NOTE = "each gene scaled to sum to its measured counts over the measured spots"
    #: the note of an estimate of log-normalised values written without the factors
    OFF = "not calibrated: the back-transformed estimate, below the measured counts (calibrate_counts=False)"
    #: the note of a model that predicts raw counts (the published recipe)
    RAW = "the network's raw counts, not calibrated (the published recipe; negative values set to 0)"

    def __init__(
        self,
        slide: Slide,
        sites: OutputSites,
        *,
        rows: np.ndarray | None = None,
        at_spots: Predictor | None = None,
        bandwidth: float | None = None,
        prior: float = 100.0,
    ) -> None:
        if (rows is None) == (at_spots is None):
            raise ValueError("CountCalibration takes either rows or at_spots")
        self.rows, self.at_spots = rows, at_spots
        self.bandwidth, self.prior = bandwidth, float(prior)
        measured = slide.counts[slide.usable]
        # lost or near-empty spots whose counts are not in the totals; a spot without counts
        # adds nothing, so an empty spot and one absent from the matrix give the same note
        self.left_out = int(np.sum(~slide.usable & (slide.depth > 0)))
        self.totals = np.asarray(measured.sum(axis=0), dtype=np.float64).ravel()
        self.measured = self.to_sites = self.to_spots = None
        if bandwidth is not None:  # the local factors read each gene batch's columns
            self.measured = measured.tocsc()
            spot_xy = slide.positions(slide.usable)
            self.to_sites = _count_weights(spot_xy, sites.positions(slide), bandwidth)
            if rows is None:
                self.to_spots = _count_weights(spot_xy, spot_xy, bandwidth)

    @property
    def note(self) -> str:
        """What was done, for ``uns["stentrans"]["count_level"]``."""
        # it said "(lost spots left out)" on slides without any
        left_out = (
            f" (the counts of {self.left_out} lost or near-empty spot{'s' * (self.left_out != 1)} left out)"
            if self.left_out
            else ""
        )
        if self.bandwidth is None:
            return self.NOTE + left_out
        return (
            f"each gene scaled to its measured counts within about {self.bandwidth:g} input spot "
            f"pitch{'es' * (self.bandwidth != 1)} of every site (shrunk toward its slide-wide level by "
            f"{self.prior:g} counts), summing to its measured counts over the measured spots{left_out}"
        )

    def apply(self, gene_idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """``counts`` ``(n_sites, len(gene_idx))``, the prediction of these genes, calibrated.

        A gene predicted 0 at every usable spot is left as it is; one never measured there is 0.
        Site-sized arrays are float32 and updated in place: the streamed writer's memory is
        bounded by a few gene batches.
        """
        at_spots = counts[self.rows] if self.at_spots is None else self.at_spots.predict_counts(gene_idx)
        predicted = np.clip(np.asarray(at_spots, dtype=np.float32), 0, None)
        totals = self.totals[gene_idx]
        slide_wide = _ratio(totals, predicted.sum(axis=0, dtype=np.float64))
        if self.bandwidth is None:
            return counts * slide_wide[None, :].astype(np.float32)
        measured = self.measured[:, gene_idx].toarray().astype(np.float32, copy=False)
        local = self._local(self.to_sites, measured, predicted, slide_wide)
        if self.to_spots is None:
            at_spot = local[self.rows]
        else:
            at_spot = self._local(self.to_spots, measured, predicted, slide_wide)
        at_spot *= predicted
        local *= _ratio(totals, at_spot.sum(axis=0, dtype=np.float64)).astype(np.float32)[None, :]
        local *= counts
        return local

    def _local(
        self, weights, measured: np.ndarray, predicted: np.ndarray, slide_wide: np.ndarray
    ) -> np.ndarray:
        """``(n_targets, n_genes)`` float32 local factors, shrunk toward ``slide_wide`` (0 where it is 0)."""
        never = slide_wide == 0
        local = np.asarray(weights @ measured, dtype=np.float32)
        local += np.float32(self.prior)
        denominator = np.asarray(weights @ predicted, dtype=np.float32)
        denominator += (self.prior / np.where(never, 1.0, slide_wide)).astype(np.float32)[None, :]
        local /= denominator
        local[:, never] = 0.0
        return local


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, 1 where the denominator is 0."""
    ok = denominator > 0
    return np.where(ok, numerator / np.where(ok, denominator, 1.0), 1.0)


def _count_weights(source_xy: np.ndarray, target_xy: np.ndarray, bandwidth: float):
    """Normalised Gaussian weights ``(n_target, n_source)`` times each row's effective number of
    sources (``1 / sum w^2``): a product with counts is a local sum of counts, not a mean."""
    import scipy.sparse as sp

    from ..classical import kernel_weights

    weights = kernel_weights(source_xy, target_xy, bandwidth)
    effective = 1.0 / np.asarray(weights.multiply(weights).sum(axis=1)).ravel()
    return (sp.diags(effective) @ weights).astype(np.float32).tocsr()


class MeasuredCounts:
    """Puts the measured counts of measured sites into predicted counts (``measured="keep"``).

    Every measured spot that is usable (not lost) keeps its own counts in ``X``; imputed and
    new sites keep the model's estimate. For users who want the enhanced slide to agree with
    the measurement wherever there is one (``layers["measured"]`` holds them in either case).
    Applied by the writers after the pattern check has seen the estimate, so the check judges
    the model, not the measurement.
    """

    NOTE = "measured counts kept in X"

    def __init__(self, slide: Slide, sites: OutputSites) -> None:
        rows = np.flatnonzero((sites.kind == "measured") & (sites.spot >= 0))
        spots = sites.spot[rows]
        usable = slide.usable[spots]
        self.rows = rows[usable]
        # the kept spots' rows, once, by column: each gene batch slices its columns only
        self.measured = slide.counts[spots[usable]].tocsc()

    def put(self, counts: np.ndarray, gene_idx: np.ndarray) -> np.ndarray:
        """``counts`` ``(n_sites, len(gene_idx))`` with the measured rows replaced (in place)."""
        counts[self.rows] = self.measured[:, gene_idx].toarray()
        return counts


def _measured_counts(measured: str) -> bool:
    """Whether ``measured`` asks to keep the measured counts; a ConfigError for anything else."""
    if measured not in MEASURED_CHOICES:
        from ..errors import ConfigError

        raise ConfigError(f"measured: {measured!r} is not allowed; expected one of {MEASURED_CHOICES}")
    return measured == "keep"


def typed_history(history: dict) -> dict[str, list]:
    """A training history as plain lists: ``epoch`` as integers, every other value a float."""
    return {k: [int(x) if k == "epoch" else float(x) for x in v] for k, v in history.items()}


def typed_validation(values: dict) -> dict[str, int | float]:
    """A validation's single values as plain numbers: ``best_epoch`` an integer, the rest floats."""
    return {k: int(v) if k == "best_epoch" else float(v) for k, v in values.items()}


class FittedModel(ABC):
    """A model fitted on a slide; apply it with :meth:`enhance` or :meth:`write`.

    Attributes
    ----------
    name
        The preset (``default``, ``transformer``, ``published``) or method that made it.
    lattice_kind
        The lattice type it applies to.
    training_genes
        Genes it learned from.
    history
        Training history, one entry per epoch (``epoch``, ``train_loss``, ``val_loss``,
        ``seconds``; ``pandas.DataFrame(model.history)`` is its table); empty without training.
    validation
        The validation's single values: ``best_epoch`` (0: no epoch beat the start), and where
        the gate judged the network ``default_val_loss``, ``val_score``, ``default_val_score``,
        ``classical_val_score`` (a pretrained model also ``classical_val_loss``); empty without
        training.
    """

    name: str
    lattice_kind: str
    training_genes: list[str]
    history: dict
    validation: dict
    min_detection: float = 0.10

    @property
    def uses_network(self) -> bool:
        """Whether prediction runs a network (False: the classical estimate or a baseline)."""
        return False

    @abstractmethod
    def predictor(
        self, slide: Slide, sites: OutputSites, *, runtime: Runtime = DEFAULT_RUNTIME, classical: str = "auto"
    ) -> Predictor:
        """A :class:`Predictor` of this model at ``sites`` of ``slide``.

        ``classical`` says what to do with a classical rank and smoothers chosen at fit time:
        ``"auto"`` keeps them on the slide the model was fitted on and re-chooses them on any
        other slide, ``"keep"`` always keeps them, ``"refit"`` always re-chooses them.
        """

    def describe(self) -> dict:
        """Plain values for reports and ``uns["stentrans"]``."""
        return {"preset": self.name, "n_training_genes": len(self.training_genes)}

    def __repr__(self) -> str:
        """One line: what made it, where it applies, what it learned (never its weights)."""
        parts = [
            f"{self.name!r}",
            f"{self.lattice_kind} lattice",
            # a classical estimate trains nothing: its genes are those of its low-rank basis
            f"{len(self.training_genes)} {'training' if self.uses_network else 'basis'} genes",
        ]
        epochs = self.history.get("epoch", []) if isinstance(self.history, dict) else []
        if self.uses_network:
            parts.append(f"network trained {int(max(epochs)) if len(epochs) else 0} epoch(s)")
        params = getattr(self, "params", None) or getattr(getattr(self, "classical", None), "params", None)
        if params is not None and hasattr(params, "rank"):
            parts.append(f"classical rank {params.rank}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def save(self, path: str | Path) -> Path:
        """Write the model to a ``.safetensors`` file (:func:`~..checkpoint.save_model`); presets only."""
        from ..checkpoint import save_model

        return save_model(self, path)

    # ------------------------------------------------------------------ applying the model

    def _check(self, slide: Slide, classical: str) -> None:
        """Raise :class:`InputError` for a slide of another lattice or an unknown ``classical``."""
        if classical not in CLASSICAL_CHOICES:
            raise InputError(f"classical: {classical!r} is not allowed; expected one of {CLASSICAL_CHOICES}")
        if slide.lattice.kind != self.lattice_kind:
            raise InputError(
                f"the model was fitted on a {self.lattice_kind} lattice but this slide is {slide.lattice.kind}"
            )

    def predict(
        self,
        slide: Slide,
        sites: OutputSites,
        gene_idx: np.ndarray,
        *,
        device: str = "auto",
        batch_size: int = 256,
        stop: StopFlag | None = None,
        classical: str = "auto",
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted counts ``(n_sites, n_genes)`` at ``sites`` and the depth used (None: raw counts)."""
        self._check(slide, classical)
        counts, predictor = self._predict_all(
            slide, sites, gene_idx, Runtime(device, batch_size), stop, classical
        )
        return counts, predictor.depth

    def _predict_all(
        self,
        slide: Slide,
        sites: OutputSites,
        gene_idx: np.ndarray,
        runtime: Runtime,
        stop: StopFlag | None,
        classical: str,
    ) -> tuple[np.ndarray, Predictor]:
        predictor = self.predictor(slide, sites, runtime=runtime, classical=classical)
        result = np.zeros((len(sites), len(gene_idx)), dtype=np.float32)
        try:
            for start, counts in predictor.batches(gene_idx, runtime.batch_size, stop):
                result[:, start : start + counts.shape[1]] = counts
        finally:
            predictor.release()
        return result, predictor

    def enhance(
        self,
        data: ad.AnnData | Slide,
        *,
        mask: MaskLike = None,
        genes=None,
        device: str = "auto",
        stop: StopFlag | None = None,
        classical: str = "auto",
        measured: str = "estimate",
        fill_holes: bool | str | None = None,
    ) -> ad.AnnData:
        """The enhanced slide in memory: a 2x denser lattice with re-estimated, imputed and new sites.

        Parameters
        ----------
        data
            A slide from :func:`napari_stentrans.read` (raw counts, lattice coordinates) or a
            prepared :class:`~..slide.Slide`; never modified.
        mask
            Lost sites (see :meth:`Slide.from_adata`): never used as input, imputed.
        genes
            Genes to enhance: names (var_names, or symbols in a ``var`` symbol column when the
            var_names are ids; written in the order given), an integer N (the N most variable
            detected genes), or None for every gene detected in at least ``min_detection`` of
            the spots.
        device
            ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        stop
            Stop flag; :class:`~..errors.TrainingStopped` is raised when it is set.
        classical
            ``auto``, ``keep`` or ``refit`` (see :meth:`predictor`).
        measured
            ``"estimate"``: measured sites hold the model's estimate like every other site;
            ``"keep"``: they hold their measured counts (imputed and new sites are estimated).
        fill_holes
            Which sites without a measurement to impute (:meth:`Slide.from_adata
            <..slide.Slide.from_adata>`): ``"auto"`` (the default for an AnnData), ``True``
            (every enclosed site too) or ``False`` (only lost sites and measured spots without
            counts). An :class:`~..slide.ImputedSitesWarning` says when far more sites are
            imputed than spots were measured.

        Returns
        -------
        AnnData with one row per output site: ``X`` predicted counts (sites x genes, float32),
        ``obs`` with half-pitch ``array_row``/``array_col``, ``kind`` and ``barcode``;
        ``obsm["spatial"]`` in the input's image pixels, ``obsm["spatial_um"]`` in micrometres;
        ``layers["measured"]`` the measured counts; ``uns["stentrans"]`` the model, its
        parameters, versions and training history.
        """
        from ..output import assemble
        from ..patterns import PatternCheck, warn_shared_patterns

        keep = _measured_counts(measured)
        slide, gene_idx, sites = self._job(as_slide(data, mask, fill_holes), None, genes, classical)
        counts, predictor = self._predict_all(slide, sites, gene_idx, Runtime(device), stop, classical)
        np.clip(counts, 0, None, out=counts)  # counts are never negative (raw-count models)
        check = PatternCheck(slide, sites, gene_idx, predictor.depth)
        check.add(0, counts)
        if keep:
            MeasuredCounts(slide, sites).put(counts, gene_idx)
            predictor.notes["measured_sites"] = MeasuredCounts.NOTE
        patterns = check.result()
        warn_shared_patterns(patterns)
        return assemble(slide, self, gene_idx, sites, counts, predictor, patterns)

    def write(
        self,
        data: ad.AnnData | Slide,
        path: str | Path,
        *,
        mask: MaskLike = None,
        genes=None,
        device: str = "auto",
        stop: StopFlag | None = None,
        batch_size: int = 256,
        inputs: tuple = (),
        classical: str = "auto",
        measured: str = "estimate",
        fill_holes: bool | str | None = None,
        callback: Callable[[TrainEvent], None] | None = None,
    ) -> StreamedSlide:
        """Enhance and stream the result into ``path`` (``.h5ad``) gene batch by gene batch.

        The same AnnData as :meth:`enhance` (``X`` chunked on disk; the same parameters),
        written atomically: a stop,
        an error or Ctrl-C leaves no file and keeps any previous one. It never replaces the
        slide's own source file nor any of ``inputs``. ``callback`` sees a ``"stage"`` event
        (:func:`stage_event`) as the writing begins and after every gene batch, counting genes
        written (seconds from the start of the write): all genes of a Visium slide take seconds
        to tens of seconds after the fit.

        Raises
        ------
        InputError
            ``path`` is an input file.
        """
        from ..files import refuse_inputs
        from ..patterns import warn_shared_patterns
        from ..streaming import write_streamed

        keep = _measured_counts(measured)
        slide = as_slide(data, mask, fill_holes)
        source = source_of(slide.adata)
        refuse_inputs(path, [*inputs, *([source] if source else [])])
        slide, gene_idx, sites = self._job(slide, None, genes, classical)
        progress = None
        if callback is not None:
            start, what = time.perf_counter(), f"writing {len(gene_idx)} genes at {len(sites)} sites"

            def progress(done: int) -> None:
                callback(stage_event(what, done, len(gene_idx), time.perf_counter() - start))

            progress(0)  # before the predictor: a model from another slide re-chooses its smoothers there
        predictor = self.predictor(slide, sites, runtime=Runtime(device, batch_size), classical=classical)
        if keep:
            predictor.notes["measured_sites"] = MeasuredCounts.NOTE
        try:
            written = write_streamed(
                slide,
                self,
                gene_idx,
                sites,
                predictor,
                path,
                batch_size,
                stop,
                measured=MeasuredCounts(slide, sites) if keep else None,
                progress=progress,
            )
        finally:
            predictor.release()
        warn_shared_patterns(written.uns["patterns"])
        return written

    def _job(self, data, mask, genes, classical: str) -> tuple[Slide, np.ndarray, OutputSites]:
        from ..sites import output_sites

        slide = as_slide(data, mask)
        self._check(slide, classical)
        gene_idx = slide.gene_indices(genes, self.min_detection)
        slide.warn_imputation(stacklevel=3)  # once per prepared slide
        return slide, gene_idx, output_sites(slide)


__all__ = [
    "StageSteps",
    "stage_event",
    "stage_text",
    "end_text",
    "staged",
    "Estimator",
    "FittedModel",
    "Predictor",
    "TrainEvent",
    "StopFlag",
    "run_fit",
    "OutOfMemoryFallback",
    "NetworkNotKeptWarning",
    "warn_if_network_not_kept",
    "typed_history",
    "typed_validation",
    "CountCalibration",
    "spot_sites",
    "usable_spot_rows",
]
