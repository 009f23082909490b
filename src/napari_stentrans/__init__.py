"""napari-stentrans: spatial transcriptomics enhancement with stEnTrans.

Public API (imported lazily: ``import napari_stentrans`` loads neither torch nor napari)::

    import napari_stentrans as st
    adata = st.read("slide/")                      # Space Ranger folder, .h5ad or ST table
    adata = st.read("sections.h5ad", library="A1") # one library of a file holding several
    model = st.fit(adata)                          # the default preset: classical, seconds
    enhanced = model.enhance(adata)                # 2x lattice + imputed lost spots, in memory
    model.write(adata, "out.h5ad")                 # the same, streamed to disk
    st.write_spatialdata(enhanced, "out.zarr")     # as a SpatialData store ([spatialdata] extra)
    model.save("model.safetensors")
    st.load_model("model.safetensors").enhance(other_slide)   # classical choice re-made there
    st.enhance(adata, config="transformer", epochs=5)          # fit and enhance in one call
    st.enhance(adata, reference=[adjacent_section])            # basis loadings pooled with a same-tissue slide
    pre = st.pretrain([slide_a, slide_b], epochs=5)            # one network learned on several slides
    st.finetune(pre, slide_c, epochs=2).enhance(slide_c)       # judged (and tuned) on slide_c first
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.2.0"

_API = {
    "read": "napari_stentrans.core.io",
    "Slide": "napari_stentrans.core.slide",
    "Lattice": "napari_stentrans.core.lattice",
    "detect_lattice": "napari_stentrans.core.lattice",
    "Config": "napari_stentrans.core.config",
    "DataConfig": "napari_stentrans.core.config",
    "ClassicalConfig": "napari_stentrans.core.config",
    "ModelConfig": "napari_stentrans.core.config",
    "PairConfig": "napari_stentrans.core.config",
    "OptimConfig": "napari_stentrans.core.config",
    "Runtime": "napari_stentrans.core.config",
    "preset": "napari_stentrans.core.config",
    "PRESETS": "napari_stentrans.core.config",
    "fit": "napari_stentrans.core.fitting",
    "enhance": "napari_stentrans.core.fitting",
    "Trainer": "napari_stentrans.core.fitting",
    "TrainEvent": "napari_stentrans.core.estimators.base",
    "FittedModel": "napari_stentrans.core.estimators.base",
    "load_model": "napari_stentrans.core.checkpoint",
    "save_model": "napari_stentrans.core.checkpoint",
    "evaluate": "napari_stentrans.core.evaluate",
    "pretrain": "napari_stentrans.core.pretrain",
    "finetune": "napari_stentrans.core.pretrain",
    "write_h5ad": "napari_stentrans.core.files",
    "write_spatialdata": "napari_stentrans.core.io.spatialdata",
    "StentransError": "napari_stentrans.core.errors",
    "ReadError": "napari_stentrans.core.errors",
    "SeveralLibrariesError": "napari_stentrans.core.errors",
    "LatticeError": "napari_stentrans.core.errors",
    "ConfigError": "napari_stentrans.core.errors",
    "CheckpointError": "napari_stentrans.core.errors",
    "InputError": "napari_stentrans.core.errors",
    "DeviceError": "napari_stentrans.core.errors",
    "TrainingStopped": "napari_stentrans.core.errors",
    # warnings a user may want to filter (warnings.filterwarnings("ignore", category=...))
    "OptionalPartWarning": "napari_stentrans.core.io",
    "DuplicateGeneNamesWarning": "napari_stentrans.core.io",
    "CountsFromRawWarning": "napari_stentrans.core.io",
    "LeftOutFeaturesWarning": "napari_stentrans.core.io",
    "ImputedSitesWarning": "napari_stentrans.core.slide",
    "NetworkNotKeptWarning": "napari_stentrans.core.estimators.base",
    "SharedPatternsWarning": "napari_stentrans.core.patterns",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover
    from .core.checkpoint import load_model, save_model  # noqa: F401
    from .core.config import (  # noqa: F401
        PRESETS,
        ClassicalConfig,
        Config,
        DataConfig,
        ModelConfig,
        OptimConfig,
        PairConfig,
        Runtime,
        preset,
    )
    from .core.errors import (  # noqa: F401
        CheckpointError,
        ConfigError,
        DeviceError,
        InputError,
        LatticeError,
        ReadError,
        SeveralLibrariesError,
        StentransError,
        TrainingStopped,
    )
    from .core.estimators.base import FittedModel, NetworkNotKeptWarning, TrainEvent  # noqa: F401
    from .core.evaluate import evaluate  # noqa: F401
    from .core.files import write_h5ad  # noqa: F401
    from .core.fitting import Trainer, enhance, fit  # noqa: F401
    from .core.io import (  # noqa: F401
        CountsFromRawWarning,
        DuplicateGeneNamesWarning,
        LeftOutFeaturesWarning,
        OptionalPartWarning,
        read,
    )
    from .core.io.spatialdata import write_spatialdata  # noqa: F401
    from .core.lattice import Lattice, detect_lattice  # noqa: F401
    from .core.patterns import SharedPatternsWarning  # noqa: F401
    from .core.pretrain import finetune, pretrain  # noqa: F401
    from .core.slide import ImputedSitesWarning, Slide  # noqa: F401


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_stentrans' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API with the module's own names, for ``dir()`` and tab completion (PEP 562)."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
