"""The Python API's entry points: fit a preset on a slide, enhance it, write it.

::

    import napari_stentrans as st
    adata = st.read("slide/")
    model = st.fit(adata)                                # the default preset: seconds, no training
    enhanced = model.enhance(adata, mask=lost_sites)     # AnnData in memory
    model.write(adata, "out.h5ad", genes=500)            # streamed to disk, gene batch by gene batch
    model.save("model.safetensors"); st.load_model("model.safetensors").enhance(other_slide)

:class:`Trainer` is the same fit as a generator of progress events with a stop flag; the CLI's
progress bar and the napari worker both drive it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anndata as ad
import numpy as np

from .caller import warns_at_caller
from .config import Config, Runtime, preset
from .errors import ConfigError, TrainingStopped
from .estimators import make_estimator
from .estimators.base import FittedModel, StopFlag, TrainEvent
from .slide import MaskLike, Slide, as_slide


def resolve_config(config: Config | str, lattice_kind: str, overrides: dict) -> Config:
    """A configuration from a preset name (for the slide's lattice) or a Config, with overrides."""
    if isinstance(config, str):
        return preset(config, lattice_kind, **overrides)
    if not isinstance(config, Config):
        raise ConfigError(f"config: {config!r} is not allowed; expected a preset name or a Config")
    return config.with_overrides(**overrides)


class Trainer:
    """One fit as a generator of progress events; iterate :meth:`run`, then read :attr:`result`.

    Parameters
    ----------
    data
        The slide (an AnnData from :func:`napari_stentrans.read`, or a prepared Slide); never
        modified.
    config
        A preset name (``"default"``, ``"transformer"``, ``"published"``) or a :class:`Config`.
    mask
        Lost sites: never used as input or target (the forms of :meth:`Slide.from_adata
        <.slide.Slide.from_adata>`: barcodes, ``(k, 2)`` pairs, a boolean per spot, a table or
        a CSV file).
    fill_holes
        Which sites without a measurement are imputed (:meth:`Slide.from_adata
        <.slide.Slide.from_adata>`); ``None``: ``"auto"``, or a Slide's own choice.
    device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (learned presets train there).
    reference
        Slides of the same tissue (AnnData or prepared Slides, never the slide itself) whose
        spots join the slide's own in fitting the classical estimate's low-rank gene loadings,
        genes matched by name; the rest of the fit is the slide's own (:mod:`.reference` has
        the exact rule). Classical presets only.
    reference_names
        A name per reference slide for ``uns["stentrans"]`` (e.g. its file).
    overrides
        Options by their flat names (``epochs=5``, ``n_train_genes=500``, ``seed=1``, ...).

    Raises
    ------
    ConfigError
        An unknown preset or option, or an invalid value (before any work); a reference with a
        preset that trains a network.
    InputError
        A reference that is the slide itself or shares too few genes with it (at fit time,
        before anything is written).
    """

    def __init__(
        self,
        data: ad.AnnData | Slide,
        config: Config | str = "default",
        *,
        mask: MaskLike = None,
        device: str = "auto",
        fill_holes: bool | str | None = None,
        reference: list | None = None,
        reference_names: list[str] | None = None,
        **overrides,
    ) -> None:
        self.slide = as_slide(data, mask, fill_holes)
        self.config = resolve_config(config, self.slide.lattice.kind, overrides)
        self.device = Runtime(device=device).device
        references = reference_slides(reference, self.slide, reference_names)
        self.estimator = make_estimator(self.config, references, reference_names)
        self.result: FittedModel | None = None

    def run(self, stop: StopFlag | None = None) -> Iterator[TrainEvent]:
        """Fit, yielding progress events; sets :attr:`result` when the fit finishes.

        When ``stop.is_set()`` becomes true the fit ends within one step with a ``"stopped"``
        event and :attr:`result` stays None.
        """
        self.result = yield from self.estimator.fit_events(self.slide, device=self.device, stop=stop)


def fit(
    data: ad.AnnData | Slide,
    config: Config | str = "default",
    *,
    mask: MaskLike = None,
    device: str = "auto",
    stop: StopFlag | None = None,
    callback: Callable[[TrainEvent], None] | None = None,
    fill_holes: bool | str | None = None,
    reference: list | None = None,
    reference_names: list[str] | None = None,
    **overrides,
) -> FittedModel | None:
    """Fit a preset on a slide (see :class:`Trainer` for the parameters).

    Returns
    -------
    The fitted model (apply it with ``model.enhance`` / ``model.write``, save it with
    ``model.save``), or None when ``stop`` was set. A learned preset whose network was not kept
    gives the ``default``'s classical estimate, with its ``note`` and a
    :class:`~.estimators.base.NetworkNotKeptWarning`.
    """
    from .estimators.base import warn_if_network_not_kept

    trainer = Trainer(
        data,
        config,
        mask=mask,
        device=device,
        fill_holes=fill_holes,
        reference=reference,
        reference_names=reference_names,
        **overrides,
    )
    for event in trainer.run(stop):
        if callback is not None:
            callback(event)
    warn_if_network_not_kept(trainer.result)
    return trainer.result


def reference_slides(
    reference: list | None, slide: Slide, names: list[str] | None = None
) -> list[Slide] | None:
    """The reference slides prepared (lattice checked against ``slide``'s), or None.

    ``names`` name the references in errors (default ``reference N``).

    Raises
    ------
    ReferenceSlideError
        A reference of another lattice type than ``slide``.
    """
    if reference is None or (isinstance(reference, list | tuple) and len(reference) == 0):
        return None
    if not isinstance(reference, list | tuple):
        reference = [reference]
    from .errors import ReferenceSlideError
    from .reference import reference_names

    slides = [as_slide(r) for r in reference]
    names = reference_names(len(slides), names)
    for name, ref in zip(names, slides, strict=True):
        if ref.lattice.kind != slide.lattice.kind:
            raise ReferenceSlideError(
                name,
                f"on a {ref.lattice.kind} lattice but the slide is {slide.lattice.kind}: "
                "give reference slides of the same technology",
            )
    return slides


def _fitted(slide, config, device, stop, callback, overrides) -> FittedModel:
    model = fit(slide, config, device=device, stop=stop, callback=callback, **overrides)
    if model is None:
        raise TrainingStopped("training stopped by request; nothing was written")
    return model


@warns_at_caller
def enhance(
    data: ad.AnnData | Slide,
    *,
    mask: MaskLike = None,
    genes: None | int | list[str] | np.ndarray = None,
    config: Config | str = "default",
    device: str = "auto",
    stop: StopFlag | None = None,
    callback: Callable[[TrainEvent], None] | None = None,
    measured: str = "estimate",
    fill_holes: bool | str | None = None,
    reference: list | None = None,
    reference_names: list[str] | None = None,
    **overrides,
) -> ad.AnnData:
    """Fit a preset on the slide and return the enhanced slide (one preparation of the slide).

    Equivalent to ``fit(data, config, mask=mask, fill_holes=fill_holes).enhance(data,
    mask=mask, genes=genes, measured=measured, fill_holes=fill_holes)``; see
    :meth:`FittedModel.enhance <.estimators.base.FittedModel.enhance>` for the result.

    Every option is checked before any work: an unknown gene name, an invalid option or
    ``measured`` value fails at once, not after the fit. ``reference``: same-tissue slides for
    the basis (see :class:`Trainer`); they are recorded in ``uns["stentrans"]["model"]["reference"]``.

    Raises
    ------
    ConfigError
        An unknown preset or option, or an invalid value.
    InputError
        Unknown gene names (or no gene to enhance), a mask that cannot be used.
    TrainingStopped
        ``stop`` was set; nothing was produced.
    """
    from .estimators.base import _measured_counts

    _measured_counts(measured)
    Runtime(device=device)
    slide = as_slide(data, mask, fill_holes)
    resolved = resolve_config(config, slide.lattice.kind, overrides)
    slide.gene_indices(genes, resolved.data.min_detection)  # a typo fails here, not after training
    references = {"reference": reference, "reference_names": reference_names} if reference else {}
    model = _fitted(slide, resolved, device, stop, callback, references)
    return model.enhance(slide, genes=genes, device=device, stop=stop, measured=measured)


__all__ = ["Trainer", "fit", "enhance", "resolve_config"]
