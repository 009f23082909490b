"""The learned presets: the transformer's correction of the classical estimate, and the published recipe.

``transformer`` (and ``default`` with ``epochs > 0``) first fits the classical estimator, then
trains a Vision Transformer that predicts a correction on top of it (:mod:`..training`); the
network starts at zero. The network is kept only when, on the same held-out genes, pairs and
region, its correlation score (per-gene r + gene-specific r + co-expression r) beats that of the
``default`` preset's estimate (low-rank plus shrunk gene residuals, chosen on the slide) and its
held-out loss beats both the default's and that of the low-rank estimate it corrects
(:func:`gate`); otherwise the fitted model *is* the
default's classical model, exactly what ``fit(slide)`` gives (no network is stored or run). ``published`` trains the authors'
network on raw counts with no classical base.

Applied to another slide, a learned model reuses its weights; its classical base is re-chosen
on that slide unless asked to keep it (:meth:`~.classical.ClassicalModel.for_slide`).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..classical import TARGET_SUM, denormalize
from ..config import DEFAULT_RUNTIME, Config, Runtime
from ..device import resolve_device
from ..errors import InputError
from ..lattice import CHILD_OFFSETS, BrickRaster, IndexRaster, scatter
from ..model import StEnTransViT
from ..sites import OutputSites, with_input_spots
from ..slide import Slide
from ..training import gene_columns, train_network
from .base import (
    BatchTooLarge,
    CountCalibration,
    Estimator,
    FitRequest,
    FittedModel,
    Predictor,
    TrainEvent,
    staged,
)
from .classical import MIN_USABLE_SPOTS, ClassicalEstimator, ClassicalModel, ClassicalPredictor

#: the note of a learned preset whose trained network the gate refused
NOT_KEPT = (
    "the learned correction did not beat the default's estimate on held-out genes of this slide, "
    "so the result is the default's classical estimate (no network)"
)
#: the note when no epoch improved the held-out loss (best epoch 0) or no epoch ran
NOTHING_LEARNED = (
    "training did not improve the held-out loss of this slide (best epoch 0), so the result is "
    "the default's classical estimate (no network)"
)


def fitted_elsewhere(note: str) -> str:
    """A refused network's note (:data:`NOT_KEPT`, :data:`NOTHING_LEARNED`) said of the slide the
    model was fitted on, for a model file used on another slide (it said "this slide" of a slide
    it never trained on)."""
    return note.replace("this slide", "that slide")


def default_model(slide: Slide, config: Config) -> ClassicalModel:
    """The ``default`` preset's classical model fitted on ``slide`` (what ``fit(slide)`` gives)."""
    return _default_estimator(slide, config).fit_model(slide)


def _default_config(config: Config, lattice_kind: str | None = None) -> Config:
    """The ``default`` preset's configuration with ``config``'s seed."""
    from ..config import preset

    return preset("default", lattice_kind, seed=config.seed)


def _default_estimator(slide: Slide, config: Config) -> ClassicalEstimator:
    return ClassicalEstimator(_default_config(config, slide.lattice.kind))


def corrects_default(config: Config) -> bool:
    """Whether ``config``'s classical base is the ``default`` preset's own estimate on any slide.

    The classical fit depends on the classical options, the training genes and the seed only;
    when they match the default's, the base the network corrects *is* the default's estimate
    (low-rank plus shrunk gene residuals) and is fitted once.
    """
    default = _default_config(config)
    return (
        config.classical == default.classical
        and config.data.n_train_genes == default.data.n_train_genes
        and config.data.min_detection == default.data.min_detection
        and config.data.normalization == default.data.normalization
    )


def as_default(classical: ClassicalModel, slide: Slide) -> ClassicalModel:
    """The base a network corrects, when it is the default's estimate, as the ``default`` fit.

    The same parameters and basis; the configuration and name are the ``default`` preset's, so
    a refused network's result records the configuration that made the estimate, exactly as
    ``fit(slide)`` would.
    """
    return replace(classical, config=_default_config(classical.config, slide.lattice.kind), name="default")


def base_message(classical: ClassicalModel, corrects: bool) -> str:
    """What the ``"prepared"`` event says of the base the network corrects: its rank (the whole
    choice is the result's ``classical_summary``, which the CLI's summary line prints)."""
    kind = "low-rank + gene residuals" if classical.params.residual is not None else "low-rank only"
    what = "the network corrects the default's estimate" if corrects else "the network's classical base"
    return f"; {what} ({kind}, rank {classical.params.rank})"


def baseline_copy(model: ClassicalModel) -> ClassicalModel:
    """``model`` with its own basis cache, for scoring on training genes (its cache stays its own)."""
    return replace(model, _bases={})


def gate(result, config: Config) -> bool:
    """Whether the trained network is kept: :meth:`~..training.TrainResult.beats_baseline`
    with the configuration's ``restore_best`` (the best epoch's loss, else the last one's)."""
    return result.beats_baseline(config.optim.restore_best)


@dataclass(eq=False, repr=False)  # FittedModel.__repr__: one short line
class LearnedModel(FittedModel):
    """A trained network, with the classical model it corrects (None for the published recipe).

    Attributes
    ----------
    config
        The configuration it was trained with (architecture, data, pairs, optimiser).
    state_dict
        The network weights (on the CPU).
    classical
        The classical model the network corrects, or None.
    """

    config: Config
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    lattice_kind: str
    classical: ClassicalModel | None
    training_genes: list[str] = field(repr=False)
    slide_fingerprint: str
    history: dict = field(default_factory=dict, repr=False)
    validation: dict = field(default_factory=dict, repr=False)
    target_sum: float = TARGET_SUM
    pretrained_on: list[dict] = field(default_factory=list)

    @classmethod
    def trained_on(
        cls, slide: Slide, config: Config, classical: ClassicalModel | None, gene_idx: np.ndarray, result
    ) -> LearnedModel:
        """The model of a network trained on ``slide``'s genes ``gene_idx`` (``result``: the
        :func:`~..training.train_network` outcome, with ``state_dict`` and ``history``)."""
        return cls(
            config=config,
            state_dict=result.state_dict,
            lattice_kind=slide.lattice.kind,
            classical=classical,
            training_genes=[str(g) for g in slide.genes[gene_idx]],
            slide_fingerprint=slide.fingerprint,
            history=result.history,
            validation=result.validation,
        )

    @property
    def name(self) -> str:
        return self.config.preset

    @property
    def min_detection(self) -> float:
        return self.config.data.min_detection

    @property
    def uses_network(self) -> bool:
        return True

    def build(self, device: str | torch.device = "cpu") -> StEnTransViT:
        """The network with the trained weights, in evaluation mode."""
        net = StEnTransViT(self.config.network)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()

    def describe(self) -> dict:
        out = {
            "preset": self.name,
            "estimator": "transformer correction" if self.classical is not None else "network",
            "n_training_genes": len(self.training_genes),
            "best_epoch": int(self.validation.get("best_epoch", -1)),
        }
        if self.classical is not None:
            out["classical"] = self.classical.params.describe()
        if self.pretrained_on:
            # strings (an .h5ad's uns holds no list of dicts)
            out["pretrained_on"] = [
                f"{s['name']} (fingerprint {s['fingerprint']}, {s['n_spots']} spots)"
                for s in self.pretrained_on
            ]
        return out

    def predictor(
        self, slide: Slide, sites: OutputSites, *, runtime: Runtime = DEFAULT_RUNTIME, classical: str = "auto"
    ) -> NetworkPredictor:
        predictor = NetworkPredictor(self, slide, sites, runtime, classical)
        if self.config.classical.calibrate_counts and self.config.data.normalization == "log1p":
            predictor.calibrate(
                slide,
                sites,
                lambda spots: NetworkPredictor(
                    self,
                    slide,
                    spots,
                    runtime,
                    classical,
                    base_model=None if predictor.base is None else predictor.base.model,
                    net=predictor.net,
                ),
                self.config.classical,
            )
        else:
            raw = self.config.data.normalization != "log1p"
            predictor.notes["count_level"] = CountCalibration.RAW if raw else CountCalibration.OFF
        return predictor


class NetworkPredictor(Predictor):
    """The network's prediction at fixed sites: the fine slide (usable spots) is the input at
    pitch 1 and the network's 2x output gives the half-pitch sites."""

    def __init__(
        self,
        model: LearnedModel,
        slide: Slide,
        sites: OutputSites,
        runtime: Runtime,
        classical: str,
        base_model: ClassicalModel | None = None,
        net: StEnTransViT | None = None,
    ) -> None:
        """``base_model``: the classical model of the base when already chosen for this slide
        (else it is kept or re-chosen as ``classical`` says); ``net``: the network when another
        predictor of the same model holds it on the device already."""
        super().__init__()
        config = model.config
        self.model, self.slide = model, slide
        self.device = resolve_device(runtime.device)
        self.net = net if net is not None else model.build(self.device)
        usable = slide.usable
        u_row, u_col = slide.row[usable], slide.col[usable]
        raster_type = BrickRaster if config.data.raster == "brick" else IndexRaster
        raster = raster_type.covering(
            slide.lattice,
            np.concatenate([u_row, sites.fine_row]),
            np.concatenate([u_col, sites.fine_col]),
            pad=2,
        )
        self.shape = raster.shape
        self.in_flat = raster.flat_index(u_row, u_col)
        self.out_flat = self._output_pixels(raster, sites)
        self.keep_lr = np.zeros(self.shape[0] * self.shape[1], dtype=np.float32)
        self.keep_lr[self.in_flat] = 1.0
        self.base: ClassicalPredictor | None = None
        if config.network.residual:
            source = "as for the output sites"
            if base_model is None:
                base_model, source = model.classical.for_slide(slide, classical)
            # the base at the input spots is an input channel, as in training: it is computed
            # there even when the sites asked for leave the spots out (held-out sites only)
            base_sites = with_input_spots(sites, slide)
            self.base = ClassicalPredictor(base_model, slide, base_sites)
            self.base_flat = self._output_pixels(raster, base_sites)
            self.depth = self.base.depth[: len(sites)]
            self.notes.update(classical_choice=source, classical_summary=base_model.params.summary())
            self.params = base_model.params
        self.notes["device"] = str(self.device)

    def _output_pixels(self, raster, sites: OutputSites) -> np.ndarray:
        """Flat indices of ``sites`` in the 2x output raster (child ``(du, dv)`` of their fine pixel)."""
        fp, fq = raster.pixels(sites.fine_row, sites.fine_col)
        du, dv = CHILD_OFFSETS[sites.child, 0], CHILD_OFFSETS[sites.child, 1]
        return (2 * fp + du) * (2 * self.shape[1]) + (2 * fq + dv)

    def _network(self, values: np.ndarray) -> np.ndarray:
        n_genes = values.shape[1]
        h, w = self.shape
        lr = scatter(values, self.in_flat, (h, w)).reshape(n_genes, -1)
        channels = [lr]
        base_t = None
        if self.base is not None:
            base_hr = scatter(self.base.normalised(values), self.base_flat, (2 * h, 2 * w))
            channels += [
                np.broadcast_to(self.keep_lr, lr.shape),
                base_hr[:, ::2, ::2].reshape(n_genes, -1) * self.keep_lr,
            ]
            base_t = torch.from_numpy(base_hr).to(self.device)
        x = torch.from_numpy(np.stack(channels, axis=1).reshape(n_genes, -1, h, w)).to(self.device)
        with (
            torch.no_grad(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"),
        ):
            pred = self.net(x, base_t)
        return pred.float().reshape(n_genes, -1)[:, self.out_flat].cpu().numpy().T

    def predict_counts(self, gene_idx: np.ndarray) -> np.ndarray:
        config = self.model.config
        values = self.slide.expression(gene_idx, config.data.normalization, self.model.target_sum)
        try:
            pred = self._network(values)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise BatchTooLarge(f"out of memory on {self.device}") from exc
        if config.data.normalization == "log1p":
            # one depth model for every site (measured ones too): a dotted map otherwise
            pred = denormalize(np.clip(pred, 0.0, None), self.depth, self.model.target_sum)
        return pred

    def release(self) -> None:
        """Drop the network weights (and the CUDA cache) once prediction is done."""
        super().release()
        self.net = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class LearnedEstimator(Estimator):
    """Trains the network of a learned preset on the slide (see module docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.preset

    def events(self, request: FitRequest) -> Generator[TrainEvent, None, FittedModel | None]:
        slide, device, stop = request.slide, request.device, request.stop
        config = self.config
        start = time.perf_counter()
        torch_device = resolve_device(device)
        if slide.n_usable < MIN_USABLE_SPOTS:
            raise InputError(
                f"only {slide.n_usable} usable spots: too few to train on (at least {MIN_USABLE_SPOTS})"
            )
        # the genes that judge the network are drawn from every gene the output holds
        train_idx, gene_idx, val_genes = gene_columns(slide, config)
        values = yield from staged(self._normalised(slide, gene_idx), start, stop, str(torch_device))
        if values is None:
            return None
        n_train = len(train_idx)
        classical, default, baseline, message = None, None, None, ""
        if config.network.residual:
            # the classical estimate the network corrects, then the default's (the bar to beat);
            # one fit when they are the same (the transformer preset corrects the default)
            same = corrects_default(config)
            classical = yield from staged(
                ClassicalEstimator(config).fit_model_steps(slide, values=values[:, :n_train]),
                start,
                stop,
                str(torch_device),
                "the default's estimate: " if same else "classical base: ",
            )
            if classical is None:
                return None
            if same:  # the base is the bar: scored once, on the network's own validation
                default, baseline = as_default(classical, slide), classical
            else:
                default = yield from staged(
                    _default_estimator(slide, config).fit_model_steps(slide),
                    start,
                    stop,
                    str(torch_device),
                    "the default's estimate: ",
                )
                if default is None:
                    return None
                baseline = baseline_copy(default)
            message = base_message(classical, same)
        result = yield from train_network(
            slide,
            values,
            config,
            classical,
            torch_device,
            stop,
            message,
            baseline=baseline,
            n_train=n_train,
            val_genes=val_genes,
            clock=start,  # one clock with the stages before training
        )
        if result is None:
            return None
        nothing_learned = config.optim.epochs == 0 or (config.optim.restore_best and result.best_epoch == 0)
        if default is not None and (nothing_learned or not gate(result, config)):
            # exactly the per-slide default's model on this slide
            note = NOTHING_LEARNED if nothing_learned else NOT_KEPT
            return replace(
                default,
                name=config.preset,
                history=result.history,
                validation=result.validation,
                note=note,
                requested=config,
            )
        return LearnedModel.trained_on(slide, config, classical, train_idx, result)

    def _normalised(self, slide: Slide, gene_idx: np.ndarray):
        """Stage steps of the genes' values (the network's input normalisation)."""
        config = self.config
        what = f"normalising {len(gene_idx)} training and validation genes at {slide.n_usable} spots"
        yield what, 0, 1
        values = slide.expression(gene_idx, config.data.normalization, TARGET_SUM)
        yield what, 1, 1
        return values


__all__ = [
    "LearnedEstimator",
    "LearnedModel",
    "NetworkPredictor",
    "NOT_KEPT",
    "NOTHING_LEARNED",
    "fitted_elsewhere",
    "gate",
    "default_model",
]
