"""Normalisation and the classical cross-gene estimator that the default model corrects.

Expression is modelled as ``y = log1p(counts / depth * target_sum)`` with ``depth`` the spot's
total counts; the exact inverse is ``counts = expm1(y) * depth / target_sum``, so every method
that works on ``y`` must also predict ``depth`` at new sites (METHOD.md: without depth the
per-gene score on counts collapses).

The classical estimate of a site is a rank-``r`` reconstruction of the normalised expression of
the input spots (tissue structure shared by all genes), smoothed to the target positions with a
normalised Gaussian kernel of bandwidth ``h`` input pitches; log depth is smoothed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

TARGET_SUM = 1e4
RANK_GRID = (1, 2, 3, 5, 8, 12, 20, 30)
BANDWIDTH_GRID = (0.5, 0.7, 1.0, 1.4, 2.0)


def normalize(counts: np.ndarray, depth: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Library-size-normalised log expression ``log1p(counts / depth * target_sum)``.

    Spots with zero depth map to 0.
    """
    scale = np.divide(target_sum, depth, out=np.zeros_like(depth, dtype=np.float64), where=depth > 0)
    return np.log1p(np.asarray(counts, dtype=np.float64) * scale[:, None]).astype(np.float32)


def denormalize(values: np.ndarray, depth: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Exact inverse of :func:`normalize`: counts from normalised values and depth."""
    return (np.expm1(np.asarray(values, dtype=np.float64)) * (depth[:, None] / target_sum)).astype(np.float32)


def kernel_weights(source_xy: np.ndarray, target_xy: np.ndarray, bandwidth: float) -> sp.csr_matrix:
    """Row-normalised Gaussian weights ``(n_target, n_source)``.

    Positions are in units of the source pitch; ``bandwidth`` too. Each target uses its
    nearest sources (about three bandwidths); weights are computed relative to the nearest
    source so a target far from every source (inside a large hole) still gets a finite
    estimate, dominated by its nearest sources.
    """
    n_source = len(source_xy)
    if n_source == 0:
        raise ValueError("kernel smoothing needs at least one source site")
    k = int(min(n_source, max(7, np.ceil(33 * bandwidth * bandwidth) + 7)))
    dist, idx = cKDTree(source_xy).query(target_xy, k=k)
    dist = dist.reshape(len(target_xy), k)
    idx = idx.reshape(len(target_xy), k)
    d2 = dist**2
    w = np.exp(-(d2 - d2[:, :1]) / (2.0 * bandwidth * bandwidth))
    w /= w.sum(axis=1, keepdims=True)
    indptr = np.arange(0, w.size + 1, k)
    return sp.csr_matrix((w.ravel(), idx.ravel(), indptr), shape=(len(target_xy), n_source))


@dataclass
class LowRankBasis:
    """Principal axes of normalised expression at the input spots.

    Attributes
    ----------
    mean
        ``(n_genes,)`` gene means over the input spots.
    components
        ``(n_genes, max_rank)`` orthonormal gene loadings, strongest first.
    scores
        ``(n_spots, max_rank)`` spot scores ``(Y - mean) @ components``.
    """

    mean: np.ndarray
    components: np.ndarray
    scores: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, max_rank: int = max(RANK_GRID), seed: int = 0) -> LowRankBasis:
        """Fit on ``values`` (spots x genes) by a seeded randomized SVD (Halko et al. 2011).

        Two power iterations with re-orthonormalisation make the leading ``max_rank``
        components accurate for the slowly decaying spectra of expression data; the seed makes
        the result reproducible.
        """
        values = np.asarray(values, dtype=np.float64)
        mean = values.mean(axis=0)
        centred = values - mean
        n, g = centred.shape
        rank = int(max(1, min(max_rank, n - 1, g)))
        width = min(rank + 10, n, g)
        rng = np.random.default_rng(seed)
        basis = np.linalg.qr(centred @ rng.standard_normal((g, width)))[0]
        for _ in range(2):
            basis = np.linalg.qr(centred.T @ basis)[0]
            basis = np.linalg.qr(centred @ basis)[0]
        _, _, vt = np.linalg.svd(basis.T @ centred, full_matrices=False)
        components = vt[:rank].T
        # a deterministic sign: largest loading of each component positive
        signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])])
        components = components * np.where(signs == 0, 1.0, signs)
        return cls(
            mean.astype(np.float32), components.astype(np.float32), (centred @ components).astype(np.float32)
        )

    @property
    def max_rank(self) -> int:
        return self.components.shape[1]

    def loadings(self, values: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """Means and least-squares loadings ``(rank, n_genes)`` of other genes on the scores."""
        values = np.asarray(values, dtype=np.float64)
        mean = values.mean(axis=0)
        z = self.scores[:, :rank].astype(np.float64)
        coef, *_ = np.linalg.lstsq(z, values - mean, rcond=None)
        return mean.astype(np.float32), coef.astype(np.float32)


@dataclass(frozen=True)
class ClassicalParams:
    """Rank of the reconstruction and kernel bandwidth in input pitches."""

    rank: int = 5
    bandwidth: float = 1.0


def classical_estimate(
    values: np.ndarray,
    log_depth: np.ndarray,
    source_xy: np.ndarray,
    target_xy: np.ndarray,
    params: ClassicalParams,
    basis: LowRankBasis | None = None,
    basis_values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank reconstruction + kernel smoothing from source spots to target positions.

    Parameters
    ----------
    values
        ``(n_source, n_genes)`` normalised expression of the genes to predict.
    log_depth
        ``(n_source,)`` log total counts of the source spots.
    source_xy, target_xy
        Positions in units of the source pitch.
    params
        Rank and bandwidth.
    basis
        A fitted basis (e.g. on many genes); fitted on ``basis_values`` or ``values`` if None.

    Returns
    -------
    ``(n_target, n_genes)`` normalised estimates and ``(n_target,)`` log depth estimates.
    """
    if basis is None:
        basis = LowRankBasis.fit(values if basis_values is None else basis_values, params.rank)
    rank = min(params.rank, basis.max_rank)
    mean, coef = basis.loadings(values, rank)
    weights = kernel_weights(source_xy, target_xy, params.bandwidth)
    smoothed_scores = weights @ basis.scores[:, :rank]
    estimate = smoothed_scores @ coef + mean
    return estimate.astype(np.float32), (weights @ log_depth).astype(np.float32)


def select_classical_params(
    values: np.ndarray,
    positions: np.ndarray,
    keep: np.ndarray,
    ranks: tuple[int, ...] = RANK_GRID,
    bandwidths: tuple[float, ...] = BANDWIDTH_GRID,
) -> tuple[ClassicalParams, dict[tuple[int, float], float]]:
    """Choose rank and bandwidth on a self-supervised pair (kept sites -> the others).

    Parameters
    ----------
    values
        ``(n_sites, n_genes)`` normalised expression of the input slide.
    positions
        ``(n_sites, 2)`` positions in units of the input pitch.
    keep
        Boolean mask of the down-sampled coset used as input; the others are targets.

    Returns
    -------
    The parameters with the lowest mean squared error at the target sites, and the whole
    table of errors. Bandwidths are returned in units of the *kept* lattice's pitch (twice the
    input pitch), the scale at which they were chosen.
    """
    if keep.sum() < 3 or (~keep).sum() < 1:
        return ClassicalParams(), {}
    src, dst = values[keep], values[~keep]
    basis = LowRankBasis.fit(src, max(ranks))
    centred_dst = (dst - basis.mean).astype(np.float64)
    # with orthonormal loadings V: |S_r V_r' - Y|^2 = |S_r|^2 - 2 <S_r, Y V_r> + |Y|^2, so every
    # (rank, bandwidth) error comes from k-column quantities instead of a dense prediction
    projected = centred_dst @ basis.components.astype(np.float64)
    total = float((centred_dst**2).sum())
    size = centred_dst.size
    errors: dict[tuple[int, float], float] = {}
    for h in bandwidths:
        weights = kernel_weights(positions[keep] / 2.0, positions[~keep] / 2.0, h)
        smoothed = np.asarray(weights @ basis.scores, dtype=np.float64)
        own = np.cumsum((smoothed**2).sum(axis=0))
        cross = np.cumsum((smoothed * projected).sum(axis=0))
        for r in ranks:
            if r > basis.max_rank:
                continue
            errors[(r, h)] = (own[r - 1] - 2 * cross[r - 1] + total) / size
    (rank, h) = min(errors, key=errors.get)
    return ClassicalParams(rank=rank, bandwidth=h), errors
