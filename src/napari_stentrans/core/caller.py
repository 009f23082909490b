"""Warnings of the public API that name the user's line, not the engine's module.

A warning issued deep in a reader or the fit (``DuplicateGeneNamesWarning`` in
``core/io/spaceranger.py``, ``NetworkNotKeptWarning`` in the estimators) would otherwise point
at a file the user never wrote, and Python's default filter would show it once per engine line
rather than once per call of theirs.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

F = TypeVar("F", bound=Callable)

#: where the package's modules lie: a warning issued from one of them is the engine's
PACKAGE = str(Path(__file__).resolve().parents[1]) + os.sep
#: categories Python hides by default: left where they were issued, so the usual filters hide them
HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def engine_warning(warning: warnings.WarningMessage) -> bool:
    """Whether a recorded warning is the engine's own to re-issue at the caller's line: issued
    from the package's modules or of one of its classes, and not of a category Python hides."""
    if issubclass(warning.category, HIDDEN):
        return False
    here = str(Path(warning.filename).resolve()).startswith(PACKAGE)
    return here or warning.category.__module__.startswith(__package__.split(".")[0])


def warns_at_caller(func: F) -> F:
    """Re-issue the engine's warnings ``func`` issues as if its caller's line had issued them.

    They are recorded while ``func`` runs, through the caller's own filters (an ignored warning
    stays ignored, an ``error`` filter raises where it is issued), and issued, in order, when it
    returns or raises (a warning that came before an error still reaches the user). Warnings of
    other libraries that pass the filters are shown where they were issued, as without this
    decorator (a reader's ``DeprecationWarning`` from a dependency stays hidden). Only in the
    main thread: ``warnings.catch_warnings`` swaps process-global state, so two overlapping calls
    in napari's workers (a slide read while Train reads its references) could leave every later
    warning recorded into a finished call's list; a worker's call keeps its warnings' own lines.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return func(*args, **kwargs)
        said: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as said:
                return func(*args, **kwargs)
        finally:
            for warning in said:
                if engine_warning(warning):
                    warnings.warn(warning.message, warning.category, stacklevel=2)
                else:
                    warnings.showwarning(
                        warning.message,
                        warning.category,
                        warning.filename,
                        warning.lineno,
                        warning.file,
                        warning.line,
                    )

    return wrapper  # type: ignore[return-value]


__all__ = ["HIDDEN", "PACKAGE", "engine_warning", "warns_at_caller"]
