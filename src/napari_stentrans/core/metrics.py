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


def count_level(pred: np.ndarray, truth) -> float:
    """How the predicted counts' level compares with the measured: the median over genes of
    ``sum(pred) / sum(truth)`` over the sites.

    Parameters
    ----------
    pred
        ``(n_sites, n_genes)`` predicted counts (negative values count as 0).
    truth
        ``(n_sites, n_genes)`` measured counts on the same sites (dense or SciPy sparse).

    Returns
    -------
    1 when each gene's prediction sums to its measured counts; below 1 when it runs low. NaN
    when no gene has measured counts. Genes without measured counts are left out.
    """
    levels = count_levels(pred, truth)
    ok = np.isfinite(levels)
    return float(np.median(levels[ok])) if ok.any() else float("nan")


def count_levels(pred: np.ndarray, truth) -> np.ndarray:
    """``(n_genes,)`` each gene's ``sum(pred) / sum(truth)`` over the sites (:func:`count_level`
    per gene); NaN for a gene without measured counts there."""
    measured = np.asarray(truth.sum(axis=0), dtype=np.float64).ravel()
    predicted = np.clip(np.asarray(pred, dtype=np.float64), 0, None).sum(axis=0)
    return np.divide(predicted, measured, out=np.full(len(measured), np.nan), where=measured > 0)


__all__ = ["pearson_per_gene", "count_level", "count_levels"]
