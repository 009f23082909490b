"""npe2 reader: Space Ranger folders, .h5ad and legacy ST count tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

TABLE = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")


def _readable(path: Path) -> bool:
    name = path.name.lower()
    if path.is_dir():
        return (path / "spatial").is_dir() or any(path.glob("*filtered_feature_bc_matrix*"))
    return path.is_file() and (name.endswith(".h5ad") or name.endswith(TABLE))


def get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for a slide, or None (never raises) for anything else."""
    try:
        if isinstance(path, list):
            if len(path) != 1:
                return None
            path = path[0]
        return read_slide_layers if _readable(Path(path)) else None
    except (OSError, TypeError, ValueError):
        return None


def read_slide_layers(path: str | list[str]) -> list[tuple]:
    """Read a slide with the core reader and build its H&E and gene layers."""
    from ..core.errors import SeveralLibrariesError
    from ..core.io import read
    from .layers import slide_layers

    path = Path(path[0] if isinstance(path, list) else path)
    try:
        adata = read(path)
    except SeveralLibrariesError as several:
        return _library_layers(path, several.libraries)
    return slide_layers(adata, name=path.name.split(".")[0])


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
