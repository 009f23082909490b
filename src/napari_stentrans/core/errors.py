"""The engine's exceptions: one base class for every problem a user can fix.

Front ends turn exactly these into a one-line message (the CLI: ``stentrans: error: ...``, exit
status 2; napari: a notification). Any other exception is a bug in the engine and keeps its
traceback. Each class also derives from the built-in exception it refines, so ``except
ValueError`` keeps working in user code.
"""

from __future__ import annotations


class StentransError(Exception):
    """A problem with the input, the configuration or the request; the message names it."""


class ReadError(StentransError, ValueError):
    """A file that cannot be read as a slide; the message names the file and the problem."""


class SeveralLibrariesError(ReadError):
    """A file holding several libraries (sections) read without choosing one.

    ``libraries`` lists their names in file order, so a front end can offer them (the napari
    reader opens each as its own set of layers).
    """

    def __init__(self, message: str, libraries: list[str]) -> None:
        super().__init__(message)
        self.libraries = list(libraries)


class LatticeError(StentransError, ValueError):
    """Coordinates that lie on no supported lattice."""


class ConfigError(StentransError, ValueError):
    """An invalid configuration value; the message names the field, the value and what is allowed."""


class CheckpointError(StentransError, ValueError):
    """A file that is not a valid napari-stentrans model."""


class InputError(StentransError, ValueError):
    """A request that cannot be met: unknown genes, a bad mask, an output that would replace an input."""


class ReferenceSlideError(InputError):
    """A reference slide (``reference=``, ``--reference``) that cannot be used.

    ``name`` is the reference as given (its path on the command line, ``reference N`` by
    default), or None when the problem concerns the references together; ``problem`` says what
    is wrong and what to do. The CLI prints ``--reference NAME: PROBLEM``.
    """

    def __init__(self, name: str | None, problem: str) -> None:
        self.name = name
        self.problem = problem
        if name is None:
            super().__init__(problem)
        else:
            label = name if name.startswith("reference ") else f"reference {name}"
            super().__init__(f"{label}: {problem}")


class WriteError(StentransError, OSError):
    """An output that cannot be written: missing or read-only folder, a name too long, too little
    free space, a full disk, or another run writing the same output. Nothing was written."""


class DeviceError(StentransError, RuntimeError):
    """The requested compute device is not available in this PyTorch build or on this machine."""


class TrainingStopped(RuntimeError):
    """Fitting or enhancement was stopped on request (stop flag); nothing was produced or written.

    Not a :class:`StentransError`: it is the user's own request, not a problem (the CLI exits
    with status 130, as for Ctrl-C).
    """


__all__ = [
    "StentransError",
    "ReadError",
    "SeveralLibrariesError",
    "LatticeError",
    "ConfigError",
    "CheckpointError",
    "InputError",
    "DeviceError",
    "WriteError",
    "TrainingStopped",
]
