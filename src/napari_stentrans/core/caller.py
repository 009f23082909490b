"""Warnings of the public API that name the user's line, not the engine's module.

A warning issued deep in a reader or the fit (``DuplicateGeneNamesWarning`` in
``core/io/spaceranger.py``, ``NetworkNotKeptWarning`` in the estimators) would otherwise point
at a file the user never wrote, and Python's default filter would show it once per engine line
rather than once per call of theirs.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def warns_at_caller(func: F) -> F:
    """Re-issue the warnings ``func`` issues as if its caller's line had issued them.

    They are recorded while ``func`` runs and issued, in order, when it returns or raises (a
    warning that came before an error still reaches the user), each through the caller's own
    warning filters. Only in the main thread: ``warnings.catch_warnings`` swaps process-global
    state, so two overlapping calls in napari's workers (a slide read while Train reads its
    references) could leave every later warning recorded into a finished call's list; a worker's
    call keeps its warnings' own lines.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return func(*args, **kwargs)
        said: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                return func(*args, **kwargs)
        finally:
            for warning in said:
                warnings.warn(warning.message, warning.category, stacklevel=2)

    return wrapper  # type: ignore[return-value]


__all__ = ["warns_at_caller"]
