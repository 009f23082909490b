"""napari-stentrans: spatial transcriptomics enhancement with stEnTrans.

Public API (imported lazily, so ``import napari_stentrans`` is cheap)::

    import napari_stentrans as st
    adata = st.read("slide/")                 # Space Ranger folder, .h5ad or ST table
    enhanced = st.enhance(adata)              # fit on the slide itself and enhance (in memory)
    st.write_enhanced(adata, "out.h5ad")      # the same, streamed to disk gene batch by batch
    model = st.train(adata, st.preset("default", "hex"))
    st.save_model(model, "model.pt"); st.load_model("model.pt")
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_API = {
    "read": "napari_stentrans.core.io",
    "ReadError": "napari_stentrans.core.io",
    "Lattice": "napari_stentrans.core.lattice",
    "LatticeError": "napari_stentrans.core.lattice",
    "detect_lattice": "napari_stentrans.core.lattice",
    "preset": "napari_stentrans.core.presets",
    "TrainConfig": "napari_stentrans.core.presets",
    "ModelConfig": "napari_stentrans.core.model",
    "Trainer": "napari_stentrans.core.training",
    "TrainEvent": "napari_stentrans.core.training",
    "TrainedModel": "napari_stentrans.core.training",
    "train": "napari_stentrans.core.training",
    "enhance": "napari_stentrans.core.enhance",
    "TrainingStopped": "napari_stentrans.core.enhance",
    "save_model": "napari_stentrans.core.checkpoint",
    "load_model": "napari_stentrans.core.checkpoint",
    "CheckpointError": "napari_stentrans.core.checkpoint",
    "write_h5ad": "napari_stentrans.core.files",
    "write_enhanced": "napari_stentrans.core.streaming",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover
    from .core.checkpoint import CheckpointError, load_model, save_model  # noqa: F401
    from .core.enhance import TrainingStopped, enhance  # noqa: F401
    from .core.files import write_h5ad  # noqa: F401
    from .core.io import ReadError, read  # noqa: F401
    from .core.lattice import Lattice, LatticeError, detect_lattice  # noqa: F401
    from .core.model import ModelConfig  # noqa: F401
    from .core.presets import TrainConfig, preset  # noqa: F401
    from .core.streaming import write_enhanced  # noqa: F401
    from .core.training import TrainedModel, Trainer, TrainEvent, train  # noqa: F401


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_stentrans' has no attribute {name!r}")
