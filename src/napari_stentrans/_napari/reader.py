"""npe2 reader: every input the core reader takes (:func:`~..core.io.input_format`), enhanced slides included."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for a slide, or None (never raises) for anything else.

    A path is claimed when the core reader would read it (one definition of the supported
    inputs, :func:`napari_stentrans.core.io.input_format`), except text tables that do not look
    like counts (:func:`~..core.io.st_table.looks_like_counts_table`): napari opens CSVs of
    points, labels and annotations too, and those are left to their readers.
    """
    from ..core.io import input_format
    from ..core.io.st_table import looks_like_counts_table

    try:
        if isinstance(path, list):
            if len(path) != 1:
                return None
            path = path[0]
        kind = input_format(Path(path))
        if kind == "table" and not looks_like_counts_table(Path(path)):
            return None
        return read_slide_layers if kind is not None else None
    except (OSError, TypeError, ValueError):
        return None


def read_slide_layers(path: str | list[str]) -> list[tuple]:
    """Read a slide with the core reader and build its H&E and gene layers.

    An enhanced slide (written by napari-stentrans) opens as its ``"GENE x2"`` layers at the
    half pitch, over its H&E; a file of several libraries as one slide per library.
    """
    from ..core.errors import SeveralLibrariesError
    from ..core.io import is_enhanced, read
    from .layers import enhanced_file_layers, slide_layers

    path = Path(path[0] if isinstance(path, list) else path)
    try:
        adata = read(path)
    except SeveralLibrariesError as several:
        return _library_layers(path, several.libraries)
    name = path.name.split(".")[0]
    if is_enhanced(adata):
        warning = (adata.uns["stentrans"].get("patterns") or {}).get("warning")
        if warning:  # what `stentrans enhance` printed when it wrote the file
            from napari.utils.notifications import show_warning

            show_warning(f"{path.name}: {warning}")
        return enhanced_file_layers(adata, name=name)
    return slide_layers(adata, name=name)


def _library_layers(path: Path, libraries: list[str]) -> list[tuple]:
    """A file of several libraries (sections): each its own slide, layers named by library.

    Sections never share a lattice; each gets its own slide (for the widgets) and its layers'
    names start with the library. Only the first library's layers are visible: the sections
    would otherwise lie over one another.
    """
    from ..core.io import read
    from .layers import slide_layers

    out = []
    for k, library in enumerate(libraries):
        layers = slide_layers(read(path, library=library), name=f"{path.name.split('.')[0]} {library}")
        for _, attrs, _ in layers:
            if attrs["metadata"]["stentrans"]["role"] == "gene":
                attrs["name"] = f"{library} {attrs['name']}"
            if k:
                attrs["visible"] = False
        out.extend(layers)
    return out
