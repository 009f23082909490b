"""Atomic output files: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad

from .errors import InputError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path``
    is left as it was.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refuse_inputs(path: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Raise :class:`InputError` when ``path`` is one of the existing files ``inputs`` (None skipped)."""
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).exists() and path.resolve() == Path(source).resolve():
            raise InputError(f"{path}: refusing to overwrite the input slide")


def write_h5ad(adata: ad.AnnData, path: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write an AnnData to ``.h5ad`` atomically, refusing to replace any of ``inputs``."""
    path = Path(path)
    refuse_inputs(path, inputs)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
