"""Every method behind one interface: ``Estimator.fit(slide) -> FittedModel``, ``FittedModel.predictor``.

=====================  ==========================================================  ===========
name                   what                                                        torch
=====================  ==========================================================  ===========
``default``            the ``default`` preset: the classical estimator              no
``transformer``        the ``transformer`` preset: classical + learned ViT correction  yes
``published``          the ``published`` preset: the authors' recipe                yes
``nearest``/``linear``/``cubic``  interpolation of counts and depth                 no
``lowrank``            the previous default: no gene residuals, no count calibration  no
``lowrank_linear``     low-rank + linear interpolation, on the evaluated genes      no
``lowrank_kernel``     low-rank + Gaussian kernels, on the evaluated genes          no
``residual_cnn``       the DIST-like residual CNN                                   yes
=====================  ==========================================================  ===========

Only the learned ones import torch, and only when they are built. The presets are named as
everywhere else (``--preset``, ``st.preset``); their names in version 0.2.0 and earlier (``stentrans``,
``stentrans_transformer``, ``stentrans_published``) are still accepted (:data:`METHOD_ALIASES`).
"""

from __future__ import annotations

from dataclasses import replace

from ..config import ClassicalConfig, Config, preset
from ..methods import METHOD_ALIASES, METHOD_HELP, METHODS, canonical_method
from .base import Estimator, FittedModel, Predictor, TrainEvent, run_fit
from .classical import ClassicalEstimator, ClassicalModel
from .interpolation import InterpolationEstimator

PRESET_OF = {"default": "default", "transformer": "transformer", "published": "published"}


def make_estimator(config: Config, reference=None, reference_names: list[str] | None = None) -> Estimator:
    """The estimator a configuration describes: classical alone when it trains no network.

    ``reference`` (prepared slides of the same tissue, :mod:`..reference`) shapes the classical
    estimate's basis; only the classical presets take it.

    Raises
    ------
    ConfigError
        ``reference`` with a preset that trains a network.
    """
    if not config.learns:
        return ClassicalEstimator(config, reference=reference, reference_names=reference_names)
    if reference:
        from ..errors import ConfigError

        raise ConfigError(
            f"reference: the {config.preset} preset trains a network, which does not take reference "
            "slides; use the default preset (a reference shapes its low-rank basis)"
        )
    from .learned import LearnedEstimator  # imports torch

    return LearnedEstimator(config)


def method_estimator(name: str, lattice_kind: str, *, epochs: int | None = None, seed: int = 0) -> Estimator:
    """The estimator of an evaluation method by name (see module docstring).

    ``epochs`` applies to the presets that learn (``transformer``, ``published``); the default
    trains nothing. The names of :data:`METHOD_ALIASES` are accepted.
    """
    name = canonical_method(name)
    if name in PRESET_OF:
        learned = name != "default" and epochs is not None
        return make_estimator(
            preset(PRESET_OF[name], lattice_kind, seed=seed, **({"epochs": epochs} if learned else {}))
        )
    if name in ("nearest", "linear", "cubic"):
        return InterpolationEstimator(name)
    if name == "lowrank":
        config = preset("default", lattice_kind, seed=seed)
        # the previous default as it wrote X: no gene residuals, no count calibration
        classical = replace(config.classical, gene_residuals="none", calibrate_counts=False)
        return ClassicalEstimator(replace(config, classical=classical), name=name)
    if name in ("lowrank_linear", "lowrank_kernel"):
        classical = ClassicalConfig(
            smoothers="linear" if name == "lowrank_linear" else "kernel",
            depth_choice="best",
            gap_smoothers=False,
            basis_genes="given",
            gene_residuals="none",
            calibrate_counts=False,
        )
        return ClassicalEstimator(Config(classical=classical, seed=seed), name=name)
    if name == "residual_cnn":
        from .cnn import CNNEstimator  # imports torch

        return CNNEstimator(seed=seed)
    from ..errors import ConfigError

    raise ConfigError(f"method: {name!r} is not allowed; expected one of {', '.join(METHODS)}")


__all__ = [
    "Estimator",
    "FittedModel",
    "Predictor",
    "TrainEvent",
    "run_fit",
    "ClassicalEstimator",
    "ClassicalModel",
    "make_estimator",
    "method_estimator",
    "METHODS",
    "METHOD_ALIASES",
    "METHOD_HELP",
    "canonical_method",
]
