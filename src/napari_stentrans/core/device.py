"""Compute devices for the learned models (imports torch)."""

from __future__ import annotations

import torch

from .config import Runtime
from .errors import DeviceError


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device of a :class:`~.config.Runtime` device name.

    ``auto`` picks CUDA, then MPS, then the CPU; explicit names are checked.

    Raises
    ------
    ConfigError
        A name that is no device (``"tpu"``).
    DeviceError
        CUDA or MPS asked for but not available in this PyTorch build or on this machine.
    """
    Runtime(device=name)  # validates the name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r} requested but CUDA is not available in this PyTorch build "
            f"({torch.__version__}); use --device cpu or install a CUDA build of PyTorch"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} requested but MPS is not available")
    return device


__all__ = ["resolve_device"]
