"""Every method behind one interface: ``Estimator.fit(slide) -> FittedModel``, ``FittedModel.predictor``.

=====================  ==========================================================  ===========
name                   what                                                        torch
=====================  ==========================================================  ===========
``stentrans``          the ``default`` preset: the classical estimator              no
``stentrans_transformer``  classical estimate + learned ViT correction              yes
``stentrans_published``    the authors' recipe                                      yes
``nearest``/``linear``/``cubic``  interpolation of counts and depth                 no
``lowrank``            the default without gene residuals (the previous default)    no
``lowrank_linear``     low-rank + linear interpolation, on the evaluated genes      no
``lowrank_kernel``     low-rank + Gaussian kernels, on the evaluated genes          no
``residual_cnn``       the DIST-like residual CNN                                   yes
=====================  ==========================================================  ===========

Only the learned ones import torch, and only when they are built.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import ClassicalConfig, Config, preset
from .base import Estimator, FittedModel, Predictor, TrainEvent, run_fit
from .classical import ClassicalEstimator, ClassicalModel
from .interpolation import InterpolationEstimator

METHODS = (
    "stentrans",
    "stentrans_transformer",
    "stentrans_published",
    "nearest",
    "linear",
    "cubic",
    "lowrank",
    "lowrank_linear",
    "lowrank_kernel",
    "residual_cnn",
)
PRESET_OF = {
    "stentrans": "default",
    "stentrans_transformer": "transformer",
    "stentrans_published": "published",
}


def make_estimator(config: Config) -> Estimator:
    """The estimator a configuration describes: classical alone when it trains no network."""
    if not config.learns:
        return ClassicalEstimator(config)
    from .learned import LearnedEstimator  # imports torch

    return LearnedEstimator(config)


def method_estimator(name: str, lattice_kind: str, *, epochs: int | None = None, seed: int = 0) -> Estimator:
    """The estimator of an evaluation method by name (see module docstring).

    ``epochs`` applies to the presets that learn (``stentrans_transformer``,
    ``stentrans_published``); the default trains nothing.
    """
    if name in PRESET_OF:
        learned = name != "stentrans" and epochs is not None
        return make_estimator(
            preset(PRESET_OF[name], lattice_kind, seed=seed, **({"epochs": epochs} if learned else {}))
        )
    if name in ("nearest", "linear", "cubic"):
        return InterpolationEstimator(name)
    if name == "lowrank":
        config = preset("default", lattice_kind, seed=seed)
        classical = replace(config.classical, gene_residuals="none")
        return ClassicalEstimator(replace(config, classical=classical), name=name)
    if name in ("lowrank_linear", "lowrank_kernel"):
        classical = ClassicalConfig(
            smoothers="linear" if name == "lowrank_linear" else "kernel",
            depth_choice="best",
            gap_smoothers=False,
            basis_genes="given",
            gene_residuals="none",
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
]
