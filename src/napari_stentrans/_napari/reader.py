"""npe2 reader: every input the core reader takes (:func:`~..core.io.input_format`), enhanced slides included."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for a slide, or None (never raises) for anything else.

    A path is claimed exactly when the core reader would read it (one definition of the
    supported inputs, :func:`napari_stentrans.core.io.input_format`).
    """
    from ..core.io import input_format

    try:
        if isinstance(path, list):
            if len(path) != 1:
                return None
            path = path[0]
        return read_slide_layers if input_format(Path(path)) is not None else None
    except (OSError, TypeError, ValueError):
        return None


def read_slide_layers(path: str | list[str]) -> list[tuple]:
    """Read a slide with the core reader and build its H&E and gene layers.

    An enhanced slide (written by napari-stentrans) opens as its ``"GENE x2"`` layers at the
    half pitch, over its H&E.
    """
    from ..core.io import is_enhanced, read
    from .layers import enhanced_file_layers, slide_layers

    path = Path(path[0] if isinstance(path, list) else path)
    adata = read(path)
    name = path.name.split(".")[0]
    if is_enhanced(adata):
        return enhanced_file_layers(adata, name=name)
    return slide_layers(adata, name=name)
