"""Save and load fitted models: one safetensors file, tensors and JSON only (no pickle, no code).

Format 2 (this one): a `safetensors <https://huggingface.co/docs/safetensors>`_ file whose
metadata entry ``napari-stentrans`` holds a JSON description (format, kind, preset,
configuration, lattice, classical choice, training genes, history, versions) and whose tensors
are the network weights of a learned model. A classical model (the ``default`` preset, or a
learned preset whose validation kept epoch 0) stores no tensors at all, and reading it needs
neither torch nor pickle. The compute device is never stored: a model fitted on a GPU loads
anywhere.

Format 1 (``torch.save`` files of version 0.1.0) still loads, through torch's weights-only
reader; its stored ``device`` is ignored.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .classical import TARGET_SUM, ClassicalParams
from .config import Config
from .errors import CheckpointError, ConfigError
from .estimators.base import FittedModel, typed_history, typed_validation
from .estimators.classical import ClassicalModel
from .files import atomic_path

FORMAT = "napari-stentrans-model"
FORMAT_VERSION = 2
METADATA_KEY = "napari-stentrans"


def _classical_part(model: ClassicalModel) -> dict:
    return {
        "params": model.params.describe(),
        "basis_genes": list(model.basis_genes),
        "slide_fingerprint": model.slide_fingerprint,
        "target_sum": float(model.target_sum),
        "note": model.note,
        **({"requested_config": model.requested.to_dict()} if model.requested is not None else {}),
    }


def save_model(model: FittedModel, path: str | Path) -> Path:
    """Write a fitted preset model to ``path`` (``.safetensors``) atomically.

    Raises
    ------
    CheckpointError
        ``model`` is not a preset's model (the evaluation's baselines are not saved), or was
        fitted with reference slides.
    """
    from .. import __version__

    path = Path(path)
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "lattice_kind": model.lattice_kind,
        "history": typed_history(model.history),
        "validation": typed_validation(model.validation),
        "versions": {"napari-stentrans": __version__},
    }
    tensors: dict[str, np.ndarray] = {}
    if isinstance(model, ClassicalModel) and model.reference is not None:
        raise CheckpointError(
            "a model fitted with reference slides is not saved: its basis belongs to those slides and "
            "this slide; fit it again with the same references where it is needed"
        )
    if isinstance(model, ClassicalModel):
        description.update(kind="classical", config=model.config.to_dict(), classical=_classical_part(model))
    else:
        from .estimators.learned import LearnedModel

        if not isinstance(model, LearnedModel):
            raise CheckpointError(f"{type(model).__name__}: only the presets' models are saved")
        import torch

        description.update(
            kind="learned",
            config=model.config.to_dict(),
            classical=None if model.classical is None else _classical_part(model.classical),
            training_genes=list(model.training_genes),
            slide_fingerprint=model.slide_fingerprint,
            target_sum=float(model.target_sum),
        )
        if model.pretrained_on:  # the slides a pretrained network learned from
            description["pretrained_on"] = [dict(s) for s in model.pretrained_on]
        description["versions"]["torch"] = str(torch.__version__)
        tensors = {k: v.detach().cpu().float().contiguous().numpy() for k, v in model.state_dict.items()}
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(description)})
    return path


def load_model(path: str | Path) -> FittedModel:
    """Load a model saved by :func:`save_model` (or a format 1 ``.pt`` file of version 0.1.0).

    Raises
    ------
    CheckpointError
        The file is missing, truncated, not a napari-stentrans model, of an unknown format
        version, or inconsistent (weights that do not fit the stored architecture, non-finite
        weights, invalid configuration).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        description, tensors = _read_safetensors(path)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own types for foreign or corrupt files
        if zipfile.is_zipfile(path):
            return _load_format_1(path)
        raise CheckpointError(_not_a_model(path, exc)) from exc
    try:
        return _from_description(description, tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"{path}: inconsistent model file ({type(exc).__name__}: {exc})") from exc


def _read_safetensors(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        metadata = f.metadata() or {}
        if METADATA_KEY not in metadata:
            raise CheckpointError(f"{path}: not a napari-stentrans model file")
        description = json.loads(metadata[METADATA_KEY])
        if not isinstance(description, dict) or description.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a napari-stentrans model file")
        if description.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: model format version {description.get('format_version')} is not supported"
            )
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    return description, tensors


def _config(data: dict) -> Config:
    data = {k: v for k, v in data.items() if k != "device"}  # a runtime choice; never applied from a file
    classical = data.get("classical")
    if (
        isinstance(classical, dict)
        and "calibrate_counts" in classical
        and "calibration_bandwidth" not in classical
    ):
        # saved before the local count factors (2026-12-01): it keeps the slide-wide factor it wrote
        data["classical"] = {**classical, "calibration_bandwidth": None}
    return Config.from_dict(data)


# one-entry lists a model file's history held beside the per-epoch lists before 2026-12-02
_SINGLE_VALUES = (
    "best_epoch",
    "default_val_loss",
    "default_val_score",
    "classical_val_score",
    "classical_val_loss",
    "val_score",
)


def _history(stored: dict, validation: dict | None) -> tuple[dict, dict]:
    """A stored history and validation as a model keeps them (per-epoch lists; single values).

    Files written before the validation's single values had their own entry kept them in the
    history as one-entry lists, and every value as a float: both are read as today's.
    """
    history = {k: list(v) for k, v in dict(stored).items()}
    single = {k: history.pop(k) for k in _SINGLE_VALUES if k in history}
    values = {k: v[0] for k, v in single.items() if len(v)} | dict(validation or {})
    return typed_history(history), typed_validation(values)


def _classical_model(
    part: dict, config: Config, lattice_kind: str, name: str, history: dict, validation: dict | None = None
) -> ClassicalModel:
    return ClassicalModel(
        config=config,
        params=ClassicalParams.from_description(part["params"]),
        lattice_kind=lattice_kind,
        basis_genes=[str(g) for g in part["basis_genes"]],
        slide_fingerprint=str(part["slide_fingerprint"]),
        target_sum=float(part.get("target_sum", TARGET_SUM)),
        history=history,
        validation=dict(validation or {}),
        note=str(part.get("note", "")),
        name=name,
        requested=_config(part["requested_config"]) if "requested_config" in part else None,
    )


def _from_description(description: dict, tensors: dict[str, np.ndarray]) -> FittedModel:
    config = _config(description["config"])
    lattice_kind = str(description["lattice_kind"])
    history, validation = _history(description.get("history", {}), description.get("validation"))
    name = str(description.get("name", config.preset))
    if description["kind"] == "classical":
        if tensors:
            raise CheckpointError("a classical model holds no weights, but the file has some")
        return _classical_model(description["classical"], config, lattice_kind, name, history, validation)
    if description["kind"] != "learned":
        raise CheckpointError(f"unknown model kind {description['kind']!r}")
    part = description.get("classical")
    classical = None if part is None else _classical_model(part, config, lattice_kind, name, {})
    return _learned_model(
        config,
        tensors,
        lattice_kind,
        classical,
        [str(g) for g in description["training_genes"]],
        str(description.get("slide_fingerprint", "")),
        history,
        validation,
        float(description.get("target_sum", TARGET_SUM)),
        [dict(s) for s in description.get("pretrained_on", [])],
    )


def _learned_model(
    config,
    tensors,
    lattice_kind,
    classical,
    training_genes,
    fingerprint,
    history,
    validation,
    target_sum,
    pretrained_on=(),
):
    """A LearnedModel whose weights were checked against the architecture before any allocation."""
    import torch

    from .estimators.learned import LearnedModel
    from .model import StEnTransViT

    if config.network.residual and classical is None:
        raise CheckpointError("a correction network without its classical model")
    with torch.device("meta"):  # shapes only: a crafted architecture allocates nothing
        expected = {k: tuple(v.shape) for k, v in StEnTransViT(config.network).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit the stored architecture (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, shape in expected.items():
        array = np.asarray(tensors[key])
        if tuple(array.shape) != shape:
            raise CheckpointError(f"weight {key!r} has shape {array.shape}, the architecture needs {shape}")
        if not np.isfinite(array).all():
            raise CheckpointError(f"weight {key!r} holds NaN or infinite values")
    return LearnedModel(
        config=config,
        state_dict={k: torch.from_numpy(np.array(tensors[k], dtype=np.float32)) for k in expected},
        lattice_kind=lattice_kind,
        classical=classical,
        training_genes=training_genes,
        slide_fingerprint=fingerprint,
        history=history,
        validation=validation,
        target_sum=target_sum,
        pretrained_on=list(pretrained_on),
    )


def _not_a_model(path: Path, exc: Exception) -> str:
    """Why ``path`` is not a model, naming what it looks like when it is a slide (HDF5)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        return (
            f"{path}: an HDF5 file (a slide or enhanced .h5ad?), not a model; models are .safetensors "
            "files written by --save-model or model.save()"
        )
    return (
        f"{path}: not a readable model file ({type(exc).__name__}: {exc}); models are .safetensors files "
        "written by --save-model or model.save()"
    )


def _load_format_1(path: Path) -> FittedModel:
    """A ``torch.save`` model of version 0.1.0 (read with torch's weights-only unpickler)."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: not a readable model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a napari-stentrans model file")
    if payload.get("format_version") != 1:
        raise CheckpointError(
            f"{path}: model format version {payload.get('format_version')} is not supported"
        )
    try:
        config = Config.from_flat(payload["config"])
        lattice_kind = str(payload["lattice_kind"])
        history, validation = _history(payload["history"], None)
        genes = [str(g) for g in payload["training_genes"]]
        part = {"params": payload["classical"], "basis_genes": genes, "slide_fingerprint": ""}
        kept_epoch_0 = config.optim.restore_best and validation.get("best_epoch") == 0
        if config.network.residual and (config.optim.epochs == 0 or kept_epoch_0):
            return _classical_model(part, config, lattice_kind, config.preset, history, validation)
        tensors = {k: v.detach().cpu().float().numpy() for k, v in payload["state_dict"].items()}
        classical = (
            _classical_model(part, config, lattice_kind, config.preset, {})
            if config.network.residual
            else None
        )
        return _learned_model(
            config,
            tensors,
            lattice_kind,
            classical,
            genes,
            "",
            history,
            validation,
            float(payload["target_sum"]),
        )
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: inconsistent model file ({type(exc).__name__}: {exc})") from exc


__all__ = ["save_model", "load_model", "CheckpointError", "FORMAT_VERSION"]
