"""Save and load trained models: one file, tensors and plain values only (no pickled objects)."""

from __future__ import annotations

from pathlib import Path

import torch

from .classical import ClassicalParams
from .files import atomic_path
from .presets import TrainConfig
from .training import TrainedModel

FORMAT = "napari-stentrans-model"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a valid napari-stentrans model."""


def save_model(model: TrainedModel, path: str | Path) -> Path:
    """Write a trained model to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict.items()},
        "lattice_kind": model.lattice_kind,
        "classical": model.classical.describe(),
        "target_sum": float(model.target_sum),
        "training_genes": list(model.training_genes),
        "history": {k: [float(x) for x in v] for k, v in model.history.items()},
        "torch_version": str(torch.__version__),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(path: str | Path) -> TrainedModel:
    """Load a model saved by :func:`save_model`.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, not a napari-stentrans model, or inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: not a readable model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a napari-stentrans model file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: model format version {payload.get('format_version')} is not supported"
        )
    try:
        model = TrainedModel(
            config=TrainConfig.from_dict(payload["config"]),
            state_dict=payload["state_dict"],
            lattice_kind=str(payload["lattice_kind"]),
            classical=ClassicalParams.from_description(payload["classical"]),
            target_sum=float(payload["target_sum"]),
            training_genes=[str(g) for g in payload["training_genes"]],
            history={k: list(v) for k, v in payload["history"].items()},
        )
        model.build("cpu")  # checks that the weights fit the architecture
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: inconsistent model file ({type(exc).__name__}: {exc})") from exc
    return model
