"""Per-gene agreement between predictions and measurements."""

from __future__ import annotations

import numpy as np


def pearson_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``pred`` with the same column of ``truth``.

    Parameters
    ----------
    pred, truth
        ``(n_sites, n_genes)`` arrays on the same sites.

    Returns
    -------
    ``(n_genes,)`` r; NaN where either side has (numerically) zero variance.
    """
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    denom = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    return np.divide((p * t).sum(axis=0), denom, out=np.full(p.shape[1], np.nan), where=denom > 1e-12)


__all__ = ["pearson_per_gene"]
