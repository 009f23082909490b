"""Output files: checked before any work, written to temporaries beside the targets, renamed
together at the end.

Every writer of the project goes through :func:`atomic_outputs` (or :func:`atomic_path` for one
file): an error, Ctrl-C or SIGTERM leaves no temporary and keeps any previous output; several
outputs of one command appear together or not at all; an exclusive commit (no ``--overwrite``)
never replaces a file another run wrote meanwhile; an ``OSError`` (full disk, read-only folder)
becomes one :class:`~.errors.WriteError`. Temporaries are named ``.NAME.PID.XXXXXXXX.tmp``, so a
later run removes those a killed run (``kill -9``, power loss) left behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np

from .errors import InputError, StentransError, WriteError

# bytes a temporary name adds to the target's (".", ".PID." up to 7 digits, 8 random, ".tmp"),
# twice: writers nest (the CLI's temporary is itself written through a temporary)
TMP_EXTRA = 2 * 24
# a temporary without a process id (versions before 0.3) is stale after this long untouched
STALE_SECONDS = 3600.0
_TMP_PID = re.compile(r"\.(\d+)\.[A-Za-z0-9_]{8}\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a pid at all
        return True
    return True


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporaries of ``path`` left by runs that died (``kill -9``, power loss).

    A temporary ``.NAME.PID.XXXXXXXX.tmp`` (or a nested ``..NAME...tmp``) is stale when its
    process no longer exists; one without a process id when untouched for an hour. Temporaries of
    live processes (another run writing now) are left alone. Returns the removed paths.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    prefixes = (f".{path.name}.", f"..{path.name}.")
    now = time.time()
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefixes) and name.endswith(".tmp")):
            continue
        match = _TMP_PID.search(name)
        try:
            if match is not None:
                pid = int(match.group(1))
                stale = pid != os.getpid() and not _pid_alive(pid)
            else:
                stale = now - entry.lstat().st_mtime > STALE_SECONDS
            if stale and not entry.is_dir():
                entry.unlink()
                removed.append(entry)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


# temporary -> its target, so a failure deep in a nested writer names the user's output
_TARGETS: dict[Path, Path] = {}


def _shown(path: Path) -> Path:
    while path in _TARGETS:
        path = _TARGETS[path]
    return path


def _new_temporary(path: Path) -> Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"{_shown(path)}: cannot create a file in {path.parent} ({_reason(exc)})") from exc
    os.close(fd)
    return Path(name)


def _reason(exc: OSError) -> str:
    """One short line for an OSError (h5py's messages span lines and quote HDF5's internals)."""
    text = " ".join((exc.strerror or str(exc) or type(exc).__name__).split())
    if exc.errno == errno.ENOSPC or "No space left on device" in text or "errno = 28" in text:
        return "no space left on device"
    if exc.errno == errno.EDQUOT or "Disk quota exceeded" in text:
        return "disk quota exceeded"
    return text if len(text) <= 160 else text[:157] + "..."


def check_output(path: str | Path, *, overwrite: bool = False, store: bool = False) -> Path:
    """Check that ``path`` can be written, before any work is done.

    Refused, each with one :class:`~.errors.WriteError`: a folder; a symbolic link to a missing
    file or an existing file without ``overwrite``; a missing output folder; a file name too long
    for the folder's file system (temporaries add :data:`TMP_EXTRA` bytes); a folder where no file
    can be created (read-only, no permission, read-only file system: probed by creating one).
    ``store``: the output is a folder (a SpatialData ``.zarr`` store), replaced as a whole.
    """
    path = Path(path)
    folder = path.parent
    try:
        name_max = os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    length = len(os.fsencode(path.name))
    if length + TMP_EXTRA > name_max:  # checked first: stat() itself fails on such a name
        raise WriteError(
            f"{folder / path.name[:40]}...: output file name is {length} bytes; at most "
            f"{name_max - TMP_EXTRA} bytes in this folder (temporaries add {TMP_EXTRA})"
        )
    if path.is_dir() and not store:
        raise WriteError(f"{path}: output is a folder; give a file name")
    if path.is_symlink() and not path.exists() and not overwrite:
        raise WriteError(
            f"{path}: output is a symbolic link to a missing file ({os.readlink(path)}); "
            "pass --overwrite to replace the link"
        )
    if path.exists() and not overwrite:
        raise WriteError(f"{path}: output exists; pass --overwrite to replace it")
    if not folder.is_dir():
        raise WriteError(f"{path}: output folder {folder} does not exist")
    _new_temporary(path).unlink()  # the only sure test of writability (read-only mounts, ACLs)
    return path


def check_free_space(needs: dict[Path, int], margin: float = 0.05) -> None:
    """Raise WriteError when the outputs' file systems lack room for ``needs`` (bytes per output).

    Outputs on one file system add up; ``margin`` (a fraction) and 1 MB are kept in reserve.
    """
    per_device: dict[int, tuple[Path, int]] = {}
    for path, size in needs.items():
        folder = Path(path).parent
        device = folder.stat().st_dev
        first, total = per_device.get(device, (Path(path), 0))
        per_device[device] = (first, total + int(size))
    for path, total in per_device.values():
        free = shutil.disk_usage(path.parent).free
        needed = total * (1 + margin) + (1 << 20)
        if needed > free:
            raise WriteError(
                f"{path}: the output needs about {_mb(needed)} (with a reserve) but {path.parent} has "
                f"{_mb(free)} free; free some space or write elsewhere"
            )


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


class OutputBatch:
    """Temporaries of the outputs of one command, renamed onto their targets by :meth:`commit`."""

    def __init__(self, exclusive: bool = False) -> None:
        self.exclusive = exclusive
        self.pending: list[tuple[Path, Path]] = []  # (temporary, target)

    def path(self, target: str | Path) -> Path:
        """A new temporary for ``target`` in its folder (stale temporaries of ``target`` removed)."""
        target = Path(target)
        clean_stale_temporaries(target)
        tmp = _new_temporary(target)
        self.pending.append((tmp, target))
        _TARGETS[tmp] = target
        return tmp

    def commit(self) -> None:
        """Rename every temporary onto its target; when one fails, undo the renames made so far
        that created a file (replaced files cannot be restored), then raise WriteError."""
        umask = os.umask(0)
        os.umask(umask)
        if self.exclusive:
            for _, target in self.pending:
                if os.path.lexists(target):
                    raise _appeared(target)
        done: list[Path] = []
        try:
            for tmp, target in self.pending:
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
                self._rename(tmp, target)
                done.append(target)
        except BaseException:
            if self.exclusive:
                for target in done:
                    target.unlink(missing_ok=True)
            raise
        for tmp, _ in self.pending:
            _TARGETS.pop(tmp, None)
        self.pending = []

    def _rename(self, tmp: Path, target: Path) -> None:
        if not self.exclusive:
            os.replace(tmp, target)
            return
        try:  # link() fails when the target exists: two runs cannot both create it
            os.link(tmp, target)
        except FileExistsError:
            raise _appeared(target) from None
        except OSError:  # a file system without hard links: check, then rename
            if os.path.lexists(target):
                raise _appeared(target) from None
            os.replace(tmp, target)
        else:
            tmp.unlink()

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
            _TARGETS.pop(tmp, None)
        self.pending = []


def _appeared(target: Path) -> WriteError:
    return WriteError(
        f"{_shown(target)}: the file appeared while this run was working (another run writing the same "
        "output?); nothing was written; pass --overwrite to replace it"
    )


@contextmanager
def atomic_outputs(exclusive: bool = False) -> Iterator[OutputBatch]:
    """Write several outputs together: ``batch.path(target)`` gives a temporary for each.

    On success all temporaries are renamed onto their targets (``exclusive``: only onto targets
    that still do not exist); on any exception (Ctrl-C included) every temporary is removed and
    the targets are left as they were. An ``OSError`` (full disk, I/O error, folder removed)
    becomes a :class:`~.errors.WriteError` naming the outputs.
    """
    batch = OutputBatch(exclusive)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_h5py_close(previous_hook)
    try:
        yield batch
        batch.commit()
    except StentransError:
        raise
    except OSError as exc:
        targets = ", ".join(str(_shown(t)) for _, t in batch.pending) or "output"
        raise WriteError(f"{targets}: writing failed ({_reason(exc)}); nothing was written") from exc
    finally:
        batch.discard()
        sys.unraisablehook = previous_hook


def _quiet_h5py_close(previous):
    """An unraisable-exception hook that drops h5py's failures to close objects of a file whose
    writes failed (a full disk: one traceback per dataset, pages of them); the write failure
    itself is reported as one WriteError. Anything else goes to ``previous``."""

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, OSError) and "h5py" in repr(unraisable.object):
            return
        previous(unraisable)

    return hook


@contextmanager
def atomic_path(path: str | Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path``
    is left as it was (see :func:`atomic_outputs`).
    """
    with atomic_outputs(exclusive) as batch:
        yield batch.path(path)


def refuse_inputs(path: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Raise :class:`InputError` when ``path`` is one of the existing files ``inputs`` (None skipped)."""
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).exists() and path.resolve() == Path(source).resolve():
            raise InputError(f"{path}: refusing to overwrite the input slide")


def write_h5ad(adata: ad.AnnData, path: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Write an AnnData to ``.h5ad`` atomically, refusing to replace any of ``inputs``.

    Images in ``uns["spatial"][library]["images"]`` are written gzip-compressed (see
    :func:`take_images`); ``adata`` is left as it was.
    """
    path = Path(path)
    refuse_inputs(path, inputs)
    spatial = adata.uns.get("spatial")
    with atomic_path(path) as tmp:
        images = take_images(adata.uns)
        try:
            adata.write_h5ad(tmp)
        finally:
            if spatial is not None:
                adata.uns["spatial"] = spatial
        write_images(tmp, images)
    return path


def take_images(uns: dict) -> dict[tuple[str, str], np.ndarray]:
    """Replace ``uns["spatial"]`` by a copy without its image arrays (left as empty groups) and
    return them by ``(library, resolution)``.

    anndata writes arrays uncompressed: an H&E image stored compressed in the input (130 KB for a
    mostly blank 12,000 x 12,000 px image) would otherwise become 432 MB in every output.
    """
    taken: dict[tuple[str, str], np.ndarray] = {}
    spatial = uns.get("spatial")
    if not isinstance(spatial, dict):
        return taken
    stripped = {}
    for library, entry in spatial.items():
        if isinstance(entry, dict) and isinstance(entry.get("images"), dict):
            kept = {}
            for resolution, image in entry["images"].items():
                if isinstance(image, np.ndarray) and image.size:
                    taken[(str(library), str(resolution))] = image
                else:
                    kept[resolution] = image
            entry = {**entry, "images": kept}
        stripped[library] = entry
    uns["spatial"] = stripped
    return taken


def write_images(path: Path, images: dict[tuple[str, str], np.ndarray]) -> None:
    """Write images taken by :func:`take_images` into the ``.h5ad`` at ``path``, gzip-compressed."""
    if not images:
        return
    import h5py
    from anndata.io import write_elem

    with h5py.File(path, "r+") as f:
        for (library, resolution), image in images.items():
            write_elem(
                f["uns"]["spatial"][library]["images"],
                resolution,
                image,
                dataset_kwargs={"compression": "gzip", "compression_opts": 4},
            )
