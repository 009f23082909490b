"""Learning across slides: pretrain one correction network on many slides, fine-tune it on another.

Pretraining (:func:`pretrain_events`) trains the transformer's correction (the ``transformer``
preset's network, :mod:`.estimators.learned`) on the honest self-supervised pairs of several
slides at once (:func:`.training.train_slides`): every slide keeps its own lattice raster,
cosets, symmetries, hole-filling pairs, classical estimate, held-out genes and held-out region;
nothing is merged. The network sees one gene at a time (its image, the input mask and the
classical estimate at the input spots: three channels), so it is gene-agnostic: slides need not
share genes, and the model applies to a slide with other genes. Genes are matched by name
nowhere in training; the model records the union of the training genes for provenance only.

Applying a pretrained model to a slide (:func:`finetune_events`) fits the classical estimate on
that slide, then judges the pretrained correction on the slide's own held-out genes at its
held-out region (the same validation as a per-slide fit), optionally after ``epochs`` of
fine-tuning on the slide's pairs that starts from the pretrained weights. When neither the
pretrained nor a fine-tuned network beats both the ``default`` preset's estimate there (low-rank
plus shrunk gene residuals, chosen on the slide, scored on the same held-out genes, pairs and
region) and the low-rank estimate it corrects (:func:`.estimators.learned.gate`), the result is that default's classical model fitted on the
slide (a :class:`~.estimators.classical.ClassicalModel` whose ``note`` says so), exactly what
``fit(slide)`` gives.

Under ``torchrun`` both run data-parallel (:func:`.training.train_slides`).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import replace

from .classical import TARGET_SUM
from .config import Config
from .errors import ConfigError, InputError
from .estimators.base import FittedModel, StopFlag, TrainEvent
from .estimators.classical import MIN_USABLE_SPOTS, ClassicalEstimator, ClassicalModel
from .io.common import source_of
from .slide import Slide

NOT_IMPROVED = (
    "the learned correction did not improve held-out genes on this slide; the result is the "
    "classical estimate"
)


def slide_name(slide: Slide, fallback: str) -> str:
    """The slide's source file as read (``uns['stentrans_lattice']['source']``), else ``fallback``."""
    return source_of(slide.adata) or fallback


def _training_part(slide: Slide, config: Config):
    """The slide's training genes and validation genes (:func:`~.training.gene_columns`), their
    values and its classical model (None without a base); the training genes' names."""
    from .training import TrainingSlide, gene_columns

    train_idx, gene_idx, val_genes = gene_columns(slide, config)
    values = slide.expression(gene_idx, config.data.normalization, TARGET_SUM)
    n_train = len(train_idx)
    classical = None
    if config.network.residual:
        classical = ClassicalEstimator(config).fit_model(slide, values=values[:, :n_train])
    part = TrainingSlide(slide, values, classical, n_train=n_train, val_genes=val_genes)
    return part, [str(g) for g in slide.genes[train_idx]]


def pretrain_events(
    slides: Sequence[Slide],
    config: Config,
    device: str = "auto",
    stop: StopFlag | None = None,
    names: Sequence[str] | None = None,
) -> Generator[TrainEvent, None, FittedModel | None]:
    """Train one correction network on the pairs of several slides, yielding progress events.

    Parameters
    ----------
    slides
        Prepared slides of one lattice type (each keeps its own lattice; none is merged).
    config
        A learned configuration (``transformer`` preset, ``epochs > 0``).
    device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; under ``torchrun`` each process
        passes its own device.
    stop
        Stop flag: the run ends within one step with a ``"stopped"`` event and returns None.
    names
        A name per slide for the model's provenance (default: the files they were read from).

    Returns
    -------
    A :class:`~.estimators.learned.LearnedModel` whose ``pretrained_on`` lists the slides
    (name, fingerprint, spots, training genes); None when stopped.

    Raises
    ------
    InputError
        No slide, slides of different lattice types, the same slide twice (equal
        :attr:`~.slide.Slide.fingerprint`: a path given twice, or a copy), or a slide with too
        few usable spots.
    ConfigError
        A configuration that trains nothing.
    """
    from .device import resolve_device
    from .estimators.learned import LearnedModel
    from .training import train_slides

    slides = list(slides)
    if not slides:
        raise InputError("pretraining needs at least one slide")
    names = [slide_name(s, f"slide {i + 1}") for i, s in enumerate(slides)] if names is None else list(names)
    if len(names) != len(slides):
        raise InputError(f"{len(names)} names for {len(slides)} slides")
    if not config.learns or config.optim.epochs == 0:
        raise ConfigError(f"epochs: {config.optim.epochs} trains nothing; pretraining needs epochs > 0")
    kinds = sorted({s.lattice.kind for s in slides})
    if len(kinds) > 1:
        listing = ", ".join(f"{n} ({s.lattice.kind})" for n, s in zip(names, slides, strict=True))
        raise InputError(
            f"pretraining needs slides of one lattice type; got {listing}: pretrain one model per type"
        )
    first_of: dict[str, int] = {}
    for i, slide in enumerate(slides):
        # the same slide twice (one path given twice, or a copy) would weigh it double, and be
        # recorded as two slides in the model's provenance
        first = first_of.setdefault(slide.fingerprint, i)
        if first != i:
            raise InputError(
                f"{names[first]} and {names[i]} are the same slide (fingerprint {slide.fingerprint}): "
                "give each slide once"
            )
    for name, slide in zip(names, slides, strict=True):
        if slide.n_usable < MIN_USABLE_SPOTS:
            raise InputError(
                f"{name}: only {slide.n_usable} usable spots: too few to train on (at least {MIN_USABLE_SPOTS})"
            )
    torch_device = resolve_device(device)
    parts, genes = zip(*(_training_part(s, config) for s in slides), strict=True)
    result = yield from train_slides(list(parts), config, torch_device, stop, "")
    if result is None:
        return None
    training_genes = sorted(set().union(*genes))
    pretrained_on = [
        {
            "name": name,
            "fingerprint": slide.fingerprint,
            "n_spots": int(slide.n_usable),
            "n_training_genes": len(g),
        }
        for name, slide, g in zip(names, slides, genes, strict=True)
    ]
    return LearnedModel(
        config=config,
        state_dict=result.state_dict,
        lattice_kind=kinds[0],
        classical=parts[0].classical,  # re-chosen on every slide the model is applied to
        training_genes=training_genes,
        slide_fingerprint="",  # fitted on no single slide: the classical choice is always re-made
        history=result.history,
        validation=result.validation,
        pretrained_on=pretrained_on,
    )


def pretrain(
    slides: Sequence,
    config: Config | str = "transformer",
    *,
    device: str = "auto",
    stop: StopFlag | None = None,
    callback=None,
    names: Sequence[str] | None = None,
    **overrides,
) -> FittedModel | None:
    """Pretrain one correction network on several slides (see :func:`pretrain_events`).

    Parameters
    ----------
    slides
        AnnData slides from :func:`napari_stentrans.read` or prepared :class:`Slide` objects.
    config
        A preset name (``"transformer"``) or a :class:`Config`; ``overrides`` by flat name
        (``epochs=5``, ``n_train_genes=500``, ``seed=1``, ...).
    callback
        Called with every :class:`TrainEvent`.

    Returns
    -------
    The pretrained model (save it with ``model.save``; apply it with :func:`finetune`), or
    None when ``stop`` was set.
    """
    from .estimators.base import run_fit
    from .fitting import resolve_config
    from .slide import as_slide

    prepared = [as_slide(s) for s in slides]
    if not prepared:
        raise InputError("pretraining needs at least one slide")
    resolved = resolve_config(config, prepared[0].lattice.kind, overrides)
    return run_fit(pretrain_events(prepared, resolved, device, stop, names), callback)


def finetune_events(
    model: FittedModel,
    slide: Slide,
    epochs: int = 0,
    device: str = "auto",
    stop: StopFlag | None = None,
) -> Generator[TrainEvent, None, FittedModel | None]:
    """A learned model made for ``slide``: judged on its held-out genes, optionally fine-tuned.

    The classical estimate is fitted on ``slide`` (the model's configuration); the network
    starts from the model's weights and trains ``epochs`` epochs on the slide's own pairs
    (0: none), keeping the best validation epoch (epoch 0: the weights as given). When the kept
    network's held-out loss is not below that of the ``default`` preset's estimate on the same
    held-out genes, pairs and region (``validation['default_val_loss']``), the result is the
    ``default`` preset's classical model on the slide, with :data:`NOT_IMPROVED` as its note.

    Raises
    ------
    InputError
        ``model`` is not a correction network, or ``slide`` is of another lattice type or has
        too few usable spots.
    """
    from .device import resolve_device
    from .estimators.learned import (
        LearnedModel,
        as_default,
        base_message,
        baseline_copy,
        corrects_default,
        default_model,
        fitted_elsewhere,
        gate,
    )
    from .training import train_network

    if not isinstance(model, LearnedModel) or model.classical is None:
        kept = getattr(model, "note", "")  # a learned preset whose network was refused when fitted
        raise InputError(
            f"the model ({model.name}) is not a learned correction: nothing to fine-tune"
            + (f" (its network was not kept when it was fitted: {fitted_elsewhere(kept)})" if kept else "")
        )
    if slide.lattice.kind != model.lattice_kind:
        raise InputError(
            f"the model was trained on a {model.lattice_kind} lattice but this slide is {slide.lattice.kind}"
        )
    if slide.n_usable < MIN_USABLE_SPOTS:
        raise InputError(
            f"only {slide.n_usable} usable spots: too few to judge or fine-tune on (at least {MIN_USABLE_SPOTS})"
        )
    config: Config = model.config.with_overrides(epochs=epochs)
    part, genes = _training_part(slide, config)
    same = corrects_default(config)
    message = base_message(part.classical, same)
    default = as_default(part.classical, slide) if same else default_model(slide, config)
    result = yield from train_network(
        slide,
        part.values,
        config,
        part.classical,
        resolve_device(device),
        stop,
        message,
        model.state_dict,
        baseline=part.classical if same else baseline_copy(default),
        n_train=part.n_train,
        val_genes=part.val_genes,
    )
    if result is None:
        return None
    validation = result.validation
    if result.classical_val is not None:  # the pretrained network's base, judged on this slide
        validation["classical_val_loss"] = float(result.classical_val)
    if not gate(result, config):  # exactly what the per-slide default gives on this slide
        return replace(
            default, name=config.preset, history=result.history, validation=validation, note=NOT_IMPROVED
        )
    return LearnedModel(
        config=config,
        state_dict=result.state_dict,
        lattice_kind=slide.lattice.kind,
        classical=part.classical,
        training_genes=genes,
        slide_fingerprint=slide.fingerprint,
        history=result.history,
        validation=validation,
        pretrained_on=list(model.pretrained_on),
    )


def finetune(
    model: FittedModel,
    data,
    *,
    epochs: int = 0,
    mask=None,
    device: str = "auto",
    stop: StopFlag | None = None,
    callback=None,
) -> FittedModel | None:
    """:func:`finetune_events` to the end (``data``: an AnnData or a Slide; ``mask``: lost sites).

    Returns
    -------
    The model for this slide (apply it with ``.enhance`` / ``.write``): a learned model, or the
    classical estimate when the correction does not improve held-out genes here (its ``note``
    says so, and a :class:`~.estimators.base.NetworkNotKeptWarning` is issued); None when
    ``stop`` was set.
    """
    from .estimators.base import run_fit, warn_if_network_not_kept
    from .slide import as_slide

    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ConfigError(f"epochs: {epochs!r} is not allowed; expected an integer >= 0")
    result = run_fit(finetune_events(model, as_slide(data, mask), epochs, device, stop), callback)
    warn_if_network_not_kept(result)
    return result


def uses_validation(model: FittedModel) -> bool:
    """Whether applying ``model`` to a slide should go through :func:`finetune_events` (pretrained)."""
    return bool(getattr(model, "pretrained_on", None))


def is_classical_fallback(model: FittedModel) -> bool:
    """Whether ``model`` is the classical estimate kept because the correction did not help."""
    return isinstance(model, ClassicalModel) and model.note == NOT_IMPROVED


__all__ = [
    "pretrain",
    "pretrain_events",
    "finetune",
    "finetune_events",
    "NOT_IMPROVED",
    "slide_name",
    "uses_validation",
    "is_classical_fallback",
]
