"""Warnings of the public API that name the user's line, not the engine's module.

A warning issued deep in a reader or the fit (``DuplicateGeneNamesWarning`` in
``core/io/spaceranger.py``, ``NetworkNotKeptWarning`` in the estimators) would otherwise point
at a file the user never wrote, and Python's default filter would show it once per engine line
rather than once per call of theirs.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def warns_at_caller(func: F) -> F:
    """Re-issue the warnings ``func`` issues as if its caller's line had issued them.

    They are recorded while ``func`` runs and issued, in order, when it returns or raises (a
    warning that came before an error still reaches the user), each through the caller's own
    warning filters. ``warnings.catch_warnings`` is process-global: meant for calls from the
    main thread, as the Python API's are.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
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
