"""The mathematics of the classical cross-gene estimator: normalisation, smoothers, low-rank basis, choice.

Expression is modelled as ``y = log1p(counts / depth * target_sum)`` with ``depth`` the spot's
total counts; the exact inverse is ``counts = expm1(y) * depth / target_sum``, so every method
that works on ``y`` must also predict ``depth`` at new sites (METHOD.md: without depth the
per-gene score on counts collapses).

The classical estimate of a site is a rank-``r`` reconstruction of the normalised expression of
the input spots (tissue structure shared by all genes), its spot scores smoothed to the target
positions by linear (Delaunay) interpolation or a normalised Gaussian kernel of bandwidth ``h``
input pitches; log depth has its own smoother or a stacked mixture of smoothers. Rank and
smoothers are chosen on the slide's own pairs (:func:`select_classical_params`); the estimator
that does so is :mod:`.estimators.classical`.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .fidelity import N_AXES, FidelityTarget, morans_i, neighbour_weights, spatially_variable
from .metrics import pearson_per_gene
from .regions import nearest_regions

TARGET_SUM = 1e4
RANK_GRID = (1, 2, 3, 5, 8, 12, 20)  # no slide so far chose more than 12
# None = linear interpolation; numbers = Gaussian kernel bandwidths in input pitches
BANDWIDTH_GRID: tuple[float | None, ...] = (None, 0.4, 0.5, 0.7, 1.0, 1.4, 2.0)
DEPTH_BANDWIDTH_GRID: tuple[float | None, ...] = (None, 0.3, 0.5, 0.7, 1.0, 1.4, 2.0)
# kappa of residual_shrinkage: None = no gene residual (the low-rank reconstruction alone),
# 0 = the whole smoothed residual (each gene smoothed on its own), else the assumed correlation
# of a gene's residual signal between neighbouring spots (smaller = more residual kept).
# The default fixes kappa = 1 (signal share = the residual's Moran's I) and chooses only the
# rank: choosing kappa too, among (None, 1, 0.6, 0.3, 0), followed the pairs' noise and held
# issue 12's bar in 59 of 108 accuracy runs against 64 (docs/design.md).
RESIDUAL_GRID: tuple[float | None, ...] = (1.0,)
#: the gene residual's own smoother: the scores' (SAME_AS_SCORES), linear interpolation (None) or a
#: 0.5-pitch kernel. A wide scores' kernel keeps broad patterns and loses the fine-scale
#: co-variation of genes that linear interpolation keeps; chosen with the rank on same-scale
#: dropout pairs (docs/design.md, sixth session).
SAME_AS_SCORES = "scores"
RESIDUAL_SMOOTHER_GRID: tuple[float | str | None, ...] = (SAME_AS_SCORES, None, 0.5)
#: weight of the co-expression r in that choice's criterion (per-gene and gene-specific r: 1)
COEXPRESSION_WEIGHT = 2.0

T = TypeVar("T")
#: what a stepwise choice yields: ``(pairs done, pairs in all)``, ``(0, n)`` before the first
Progress = Generator[tuple[int, int], None, T]


def run_steps(steps: Generator[object, None, T]) -> T:
    """Run a stepwise computation (e.g. :func:`classical_params_steps`) to the end; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def normalize(counts: np.ndarray, depth: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Library-size-normalised log expression ``log1p(counts / depth * target_sum)``.

    Spots with zero depth map to 0.
    """
    scale = np.divide(target_sum, depth, out=np.zeros_like(depth, dtype=np.float64), where=depth > 0)
    return np.log1p(np.asarray(counts, dtype=np.float64) * scale[:, None]).astype(np.float32)


def denormalize(values: np.ndarray, depth: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Exact inverse of :func:`normalize`: counts from normalised values and depth."""
    return (np.expm1(np.asarray(values, dtype=np.float64)) * (depth[:, None] / target_sum)).astype(np.float32)


def _neighbours_for(bandwidth: float) -> int:
    """Nearest sources a target uses at a bandwidth: about three bandwidths' worth."""
    return int(np.ceil(33 * bandwidth * bandwidth) + 7)


def canonical_order(xy: np.ndarray) -> np.ndarray:
    """Indices ``(n,)`` that sort positions ``(n, 2)`` by y, then x.

    Random pairs drawn over spot indices differ with the order a file lists its spots in
    (barcode order, an AnnData subset): drawn over this order, they depend on positions alone.
    """
    xy = np.asarray(xy)
    return np.lexsort((xy[:, 0], xy[:, 1]))


#: sources queried beyond the ``k`` a kernel keeps, to complete the ring of the ``k``-th one (a
#: ring of equidistant lattice spots mostly holds 4-12; a wider one is completed by a radius query)
RING_MARGIN = 12
_RING_TOLERANCE = 1e-9  # relative: equal distances on a lattice differ by rounding only


def nearest_sources(source_xy: np.ndarray, target_xy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices ``(n_target, k + RING_MARGIN)`` of each target's nearest sources.

    More than ``k``, so that :func:`kernel_weights` can keep the whole ring of sources as far as
    the ``k``-th (all sources when the slide has fewer).
    """
    width = min(len(source_xy), k + RING_MARGIN)
    dist, idx = cKDTree(source_xy).query(target_xy, k=width)
    shape = (len(target_xy), width)
    return dist.reshape(shape), np.asarray(idx).reshape(shape)


def kernel_weights(
    source_xy: np.ndarray,
    target_xy: np.ndarray,
    bandwidth: float,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> sp.csr_matrix:
    """Row-normalised Gaussian weights ``(n_target, n_source)``.

    Positions are in units of the source pitch; ``bandwidth`` too. Each target uses its
    nearest sources (about three bandwidths) and every source as close as the farthest of
    them: on a lattice a target has rings of equidistant spots, and keeping part of a ring
    (whichever a k-d tree happens to list first) would make the weights lopsided and depend on
    the order of the spots. Weights are computed relative to the nearest source so a target
    far from every source (inside a large hole) still gets a finite estimate, dominated by its
    nearest sources. ``neighbours`` (:func:`nearest_sources` with at least as many neighbours)
    avoids querying again per bandwidth.
    """
    n_source = len(source_xy)
    if n_source == 0:
        raise ValueError("kernel smoothing needs at least one source site")
    k = int(min(n_source, max(7, _neighbours_for(bandwidth))))
    dist, idx = nearest_sources(source_xy, target_xy, k) if neighbours is None else neighbours
    dist, idx = dist[:, : k + RING_MARGIN], idx[:, : k + RING_MARGIN]
    reach = dist[:, k - 1 : k] * (1.0 + _RING_TOLERANCE) + 1e-12
    keep = dist <= reach
    d2 = np.where(keep, dist, np.inf) ** 2  # beyond the ring: weight exp(-inf) = 0
    w = np.exp(-(d2 - d2[:, :1]) / (2.0 * bandwidth * bandwidth))
    w /= w.sum(axis=1, keepdims=True)
    counts = keep.sum(axis=1)
    matrix = sp.csr_matrix(
        (w[keep], idx[keep], np.concatenate([[0], np.cumsum(counts)])), shape=(len(target_xy), n_source)
    )
    wider = np.flatnonzero(keep[:, -1]) if dist.shape[1] < n_source else np.empty(0, dtype=np.int64)
    if len(wider):  # a ring wider than the margin: those targets' rows by a radius query
        rows, cols, extra = _whole_rings(source_xy, target_xy[wider], reach[wider, 0], bandwidth)
        extra /= np.bincount(rows, weights=extra, minlength=len(wider))[rows]
        matrix = _replace_rows(
            matrix, wider, sp.coo_matrix((extra, (rows, cols)), shape=(len(wider), n_source))
        )
    return matrix


def _replace_rows(matrix: sp.spmatrix, rows: np.ndarray, block: sp.spmatrix) -> sp.csr_matrix:
    """``matrix`` with its ``rows`` replaced by the rows of ``block`` ``(len(rows), n_cols)``."""
    keep = np.ones(matrix.shape[0])
    keep[rows] = 0.0
    block = block.tocoo()
    placed = sp.csr_matrix((block.data, (np.asarray(rows)[block.row], block.col)), shape=matrix.shape)
    out = (sp.diags(keep) @ matrix + placed).tocsr()
    out.eliminate_zeros()
    return out


def _whole_rings(
    source_xy: np.ndarray, target_xy: np.ndarray, reach: np.ndarray, bandwidth: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every source within ``reach`` of each target: (target row, source, unnormalised weight)."""
    pairs = cKDTree(source_xy).query_ball_point(target_xy, reach)
    rows = np.repeat(np.arange(len(target_xy)), [len(p) for p in pairs])
    cols = np.concatenate([np.asarray(p, dtype=np.int64) for p in pairs])
    d2 = ((np.asarray(target_xy)[rows] - np.asarray(source_xy)[cols]) ** 2).sum(axis=1)
    nearest = np.full(len(target_xy), np.inf)
    np.minimum.at(nearest, rows, d2)
    return rows, cols, np.exp(-(d2 - nearest[rows]) / (2.0 * bandwidth * bandwidth))


#: shears of the two triangulations of :func:`linear_weights`, in pitches per pitch
SHEARS = (1e-4, -1e-4)


def sheared(xy: np.ndarray, shear: float) -> np.ndarray:
    """Positions ``(n, 2)`` with ``x`` moved by ``shear * y``: a square of co-circular spots becomes
    a parallelogram, which Delaunay splits along its shorter diagonal (one per sign of ``shear``)."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.column_stack([xy[:, 0] + shear * xy[:, 1], xy[:, 1]])


def barycentric_weights(tri, target_xy: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Weights ``(n_target, n_source)`` of linear interpolation on one Delaunay triangulation
    ``tri`` of the sources, and which targets lie inside it (rows of the others are empty)."""
    simplex = tri.find_simplex(target_xy)
    inside = simplex >= 0
    transform = tri.transform[simplex[inside]]
    bary = np.einsum("nij,nj->ni", transform[:, :2], target_xy[inside] - transform[:, 2])
    weights = np.column_stack([bary, 1.0 - bary.sum(axis=1)])
    rows = np.repeat(np.flatnonzero(inside), 3)
    cols = tri.simplices[simplex[inside]].ravel()
    shape = (len(target_xy), len(tri.points))
    return sp.csr_matrix((weights.ravel(), (rows, cols)), shape=shape), inside


def linear_weights(source_xy: np.ndarray, target_xy: np.ndarray) -> sp.csr_matrix:
    """Barycentric weights of Delaunay linear interpolation ``(n_target, n_source)``.

    ``scipy.interpolate.griddata(method="linear")``'s estimator, as a sparse matrix so it can
    act on low-rank scores, with one difference: a square of four co-circular spots (every cell
    of a square lattice) has two Delaunay triangulations, and Qhull picks a diagonal by the
    order of its input. The weights here are the mean of the two triangulations of the spots
    sheared by ``+-1e-4`` pitch per pitch, which split every such square along each diagonal
    once (barycentric weights are unchanged by a shear); elsewhere the two coincide. A site at
    the centre of a square thus weighs its four corners alike, in any order of the spots.
    Targets outside the convex hull of the sources (and degenerate inputs) take normalised
    Gaussian weights of one source pitch instead.
    """
    from scipy.spatial import Delaunay, QhullError

    source_xy, target_xy = np.asarray(source_xy, dtype=np.float64), np.asarray(target_xy, dtype=np.float64)
    n_target = len(target_xy)
    halves, inside_both = [], np.ones(n_target, dtype=bool)
    for shear in SHEARS:
        src, dst = sheared(source_xy, shear), sheared(target_xy, shear)
        try:
            tri = Delaunay(src)
        except (QhullError, ValueError):
            return kernel_weights(source_xy, target_xy, 1.0)
        weights, inside = barycentric_weights(tri, dst)
        halves.append(0.5 * weights)
        inside_both &= inside
    matrix = (halves[0] + halves[1]).tocsr()
    if not inside_both.all():
        # outside one triangulation's hull (a target on the hull's edge): the kernel for the whole row
        outside = np.flatnonzero(~inside_both)
        return _replace_rows(matrix, outside, kernel_weights(source_xy, target_xy[outside], 1.0))
    matrix.eliminate_zeros()
    return matrix


def smoothing_weights(source_xy: np.ndarray, target_xy: np.ndarray, bandwidth: float | None) -> sp.csr_matrix:
    """Kernel weights of ``bandwidth`` source pitches, or linear interpolation when it is None."""
    if bandwidth is None:
        return linear_weights(source_xy, target_xy)
    return kernel_weights(source_xy, target_xy, bandwidth)


def smooth(
    source_xy: np.ndarray,
    target_xy: np.ndarray,
    bandwidth: float | None,
    values: np.ndarray,
    chunk: int = 2048,
) -> np.ndarray:
    """``smoothing_weights(source_xy, target_xy, bandwidth) @ values``, a block of targets at a time.

    Each row of the weights depends on its own target only, so building them block by block
    gives the same result while holding at most ``chunk`` rows: a 2-pitch kernel has about 140
    neighbours per target, 35 MB of weights for a 6,000-site slide at once.
    """
    out = np.empty((len(target_xy), *np.shape(values)[1:]), dtype=np.result_type(values, np.float64))
    for start in range(0, len(target_xy), chunk):
        block = slice(start, start + chunk)
        out[block] = smoothing_weights(source_xy, target_xy[block], bandwidth) @ values
    return out


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
    """Rank of the reconstruction and smoothers for expression and for log depth.

    A bandwidth (in input pitches) means a normalised Gaussian kernel; ``None`` means linear
    (Delaunay barycentric) interpolation. Depth has its own smoother: noisy expression favours
    strong smoothing, but per-gene r on counts is dominated by each spot's depth, which an
    expression-sized kernel over-smooths (olfactory bulb, heldout: median r 0.035 with one
    shared bandwidth of 2 pitches). ``depth_mixture``, when given, replaces the single depth
    smoother by a convex mixture ``((bandwidth, weight), ...)`` of candidate smoothers
    (:func:`stack_weights`); ``depth_bandwidth`` is then its heaviest member. ``residual``,
    when not None, adds each gene's own residual smoothed with ``residual_bandwidth``
    (:data:`SAME_AS_SCORES`: the scores' smoother; None: linear interpolation; a number: a
    kernel), shrunk by :func:`residual_shrinkage` with that ``kappa``.
    """

    rank: int = 5
    bandwidth: float | None = 1.0
    depth_bandwidth: float | None = None
    holes: ClassicalParams | None = None  # for sites to impute, chosen on hole-filling pairs
    depth_mixture: tuple[tuple[float | None, float], ...] = ()
    residual: float | None = None  # kappa of residual_shrinkage; None: no gene residuals
    residual_bandwidth: float | str | None = SAME_AS_SCORES

    @property
    def for_holes(self) -> ClassicalParams:
        """The parameters for sites to impute: :attr:`holes` when chosen, else these."""
        return self if self.holes is None else self.holes

    def site_groups(self, in_gap: np.ndarray) -> list[tuple[np.ndarray, ClassicalParams]]:
        """Indices of the sites each parameter set applies to: sites in gaps take :attr:`holes`.

        One group of every site when no gap parameters were chosen, so nothing is computed twice.
        """
        if self.holes is None:
            return [(np.arange(len(in_gap)), self)]
        return [(np.flatnonzero(~in_gap), self), (np.flatnonzero(in_gap), self.holes)]

    def weights(self, source_xy: np.ndarray, target_xy: np.ndarray) -> sp.csr_matrix:
        return smoothing_weights(source_xy, target_xy, self.bandwidth)

    @property
    def residual_smoother(self) -> float | None:
        """The gene residuals' bandwidth as a smoother takes it (None: linear interpolation)."""
        return self.bandwidth if self.residual_bandwidth == SAME_AS_SCORES else self.residual_bandwidth

    def residual_weights(
        self, source_xy: np.ndarray, target_xy: np.ndarray, weights: sp.csr_matrix | None = None
    ) -> sp.csr_matrix:
        """The gene residuals' smoother; the scores' ``weights``, when given, serve if it is the same."""
        if weights is not None and self.residual_smoother == self.bandwidth:
            return weights
        return smoothing_weights(source_xy, target_xy, self.residual_smoother)

    def smooth_log_depth(
        self, source_xy: np.ndarray, target_xy: np.ndarray, log_depth: np.ndarray
    ) -> np.ndarray:
        """Log depth at the targets: the depth smoother, or the weighted sum of its mixture.

        A mixture is summed member by member, each built a block of targets at a time
        (:func:`smooth`), so memory stays bounded whatever the bandwidths.
        """
        members = self.depth_mixture or ((self.depth_bandwidth, 1.0),)
        total = np.zeros(len(target_xy))
        for bandwidth, weight in members:
            total += weight * smooth(source_xy, target_xy, bandwidth, log_depth)
        return total

    def summary(self) -> str:
        """One readable line, e.g. ``rank 2, scores linear, depth 0.6 linear + 0.4 kernel 0.5``.

        Kernel bandwidths are in pitches of the lattice the choice was made on.
        """

        def name(h: float | None) -> str:
            return "linear" if h is None else f"kernel {h:g}"

        if self.depth_mixture:
            depth = " + ".join(f"{w:.2f} {name(h)}" for h, w in self.depth_mixture)
        else:
            depth = name(self.depth_bandwidth)
        line = f"rank {self.rank}, scores {name(self.bandwidth)}, depth {depth}"
        if self.residual is not None:
            line += ", gene residuals " + (
                "whole" if self.residual == 0 else f"shrunk (kappa {self.residual:g})"
            )
            if self.residual_bandwidth != SAME_AS_SCORES:
                line += f" smoothed {name(self.residual_bandwidth)}"
        if self.holes is not None:
            line += f"; in gaps: {self.holes.summary()}"
        return line

    def describe(self) -> dict:
        """Plain values for reports and checkpoints ("linear" for the interpolator)."""

        def name(h: float | None):
            return "linear" if h is None else float(h)

        described = {
            "rank": int(self.rank),
            "bandwidth": name(self.bandwidth),
            "depth_bandwidth": name(self.depth_bandwidth),
        }
        if self.depth_mixture:
            # bandwidth -> weight, keys as text: stores in JSON and in h5ad ``uns`` alike
            described["depth_mixture"] = {str(name(h)): float(w) for h, w in self.depth_mixture}
        if self.residual is not None:
            described["residual"] = float(self.residual)
            if self.residual_bandwidth != SAME_AS_SCORES:
                described["residual_bandwidth"] = name(self.residual_bandwidth)
        if self.holes is not None:
            described["holes"] = self.holes.describe()
        return described

    @classmethod
    def from_description(cls, data: dict) -> ClassicalParams:
        def value(h):
            return None if h in (None, "linear") else float(h)

        holes = cls.from_description(data["holes"]) if isinstance(data.get("holes"), dict) else None
        mixture = tuple(
            sorted(  # linear first, then by bandwidth: the order of the candidate grids
                ((value(h), float(w)) for h, w in dict(data.get("depth_mixture") or {}).items()),
                key=lambda member: (member[0] is not None, member[0] or 0.0),
            )
        )
        return cls(
            int(data["rank"]),
            value(data.get("bandwidth")),
            value(data.get("depth_bandwidth")),
            holes,
            mixture,
            None if data.get("residual") is None else float(data["residual"]),
            value(data["residual_bandwidth"]) if "residual_bandwidth" in data else SAME_AS_SCORES,
        )


def residual_shrinkage(moran: np.ndarray, noise_factor: np.ndarray, kappa: float) -> np.ndarray:
    """Weight ``(n_targets, n_genes)`` of each gene's smoothed residual at each target site.

    Empirical-Bayes (Wiener) shrinkage of a noisy smooth: model a gene's residual from the
    low-rank reconstruction at the spots as spatial signal plus independent noise, ``e = s + n``.
    Its Moran's I over nearest neighbours is about ``kappa * var(s) / var(e)``, with ``kappa``
    the signal's own correlation between neighbouring spots, so ``f = I / kappa`` (clipped to
    [0, 1]) estimates the gene's signal share. A target's smoothed residual ``sum_j w_j e_j``
    carries noise variance ``c * var(n)`` with ``c = sum_j w_j^2`` (1 at a measured spot, less
    where the smoother averages several), so the weight that minimises its squared error is
    ``f / (f + (1 - f) c)``: genes whose residual is mostly noise keep little of it, a spatially
    structured residual survives. ``kappa = 0`` keeps the whole residual (weight 1).

    Parameters
    ----------
    moran
        ``(n_genes,)`` Moran's I of each gene's residual at the spots (:func:`.fidelity.morans_i`).
    noise_factor
        ``(n_targets,)`` sum of squared smoothing weights of each target.
    kappa
        Assumed neighbour correlation of the residual signal (chosen on the pairs).
    """
    if kappa == 0:
        return np.ones((len(noise_factor), len(moran)))
    f = np.clip(np.nan_to_num(np.asarray(moran, dtype=np.float64)) / kappa, 0.0, 1.0)[None, :]
    return f / (f + (1.0 - f) * np.asarray(noise_factor, dtype=np.float64)[:, None] + 1e-12)


def noise_factor(weights: sp.csr_matrix) -> np.ndarray:
    """``(n_targets,)`` sum of squared weights per row: the noise variance a smoother lets through."""
    return np.asarray(weights.multiply(weights).sum(axis=1)).ravel()


def stack_weights(estimates: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Convex weights of candidate estimates with the least squared error (stacking).

    Stacked regression (Breiman 1996): instead of keeping the one candidate that scored best
    on a few noisy pairs, combine all of them with non-negative weights that sum to one, fitted
    on the pairs' targets. The sum-to-one constraint is a heavily weighted extra row of a
    non-negative least-squares problem.

    Parameters
    ----------
    estimates
        ``(n_targets, n_candidates)`` each candidate's estimate at the targets.
    truth
        ``(n_targets,)`` the measured values.
    """
    from scipy.optimize import nnls  # imported here: scipy.optimize costs a quarter second at start-up

    n, k = estimates.shape
    anchor = 1e3 * np.sqrt(n) * (1.0 + float(np.abs(truth).mean()))
    weights, _ = nnls(np.vstack([estimates, np.full((1, k), anchor)]), np.append(truth, anchor))
    total = weights.sum()
    return weights / total if total > 0 else np.full(k, 1.0 / k)


def hole_pairs(
    positions: np.ndarray, hole_sizes: np.ndarray, rng: np.random.Generator, n_pairs: int = 4
) -> list[np.ndarray]:
    """Kept-site masks of same-scale hole-filling pairs shaped like the slide's own holes.

    Each pair drops, for every hole size ``s``, the ``s`` sites nearest a random centre (a
    compact region of the same area, :func:`.regions.nearest_regions`), so the smoother for
    sites to impute is chosen on gaps as wide as the real ones. At most 30 % of the sites are
    dropped per pair.

    Parameters
    ----------
    positions
        ``(n_sites, 2)`` positions of the usable spots.
    hole_sizes
        Sites per region to impute (:meth:`~napari_stentrans.core.slide.Slide.hole_sizes`).
    """
    return [~nearest_regions(positions, hole_sizes, rng) for _ in range(n_pairs)]


def _pair_inputs(cosets) -> list[np.ndarray]:
    """Kept-site masks of the pairs (see :func:`select_classical_params`), each with >= 3 kept and dropped."""
    if isinstance(cosets, list):
        inputs = [np.asarray(keep, dtype=bool) for keep in cosets]
    else:
        cosets = np.asarray(cosets)
        inputs = [cosets] if cosets.dtype == bool else [cosets == c for c in range(4)]
    return [keep for keep in inputs if keep.sum() >= 3 and (~keep).sum() >= 3]


def _evenly(values: np.ndarray, max_genes: int) -> np.ndarray:
    """At most ``max_genes`` evenly spaced columns of ``values`` (contiguous)."""
    cols = np.unique(np.linspace(0, values.shape[1] - 1, min(max_genes, values.shape[1])).astype(int))
    return np.ascontiguousarray(values[:, cols])


def _pair_targets(keep: np.ndarray, max_targets: int) -> np.ndarray:
    """At most ``max_targets`` evenly spaced dropped sites of a pair."""
    targets = np.flatnonzero(~keep)
    return targets[np.unique(np.linspace(0, len(targets) - 1, min(max_targets, len(targets))).astype(int))]


class _PairSmoothers:
    """Candidate smoothing matrices of one pair: one neighbour query, one triangulation."""

    def __init__(self, source_xy: np.ndarray, target_xy: np.ndarray, kernels: list[float]) -> None:
        self.source_xy, self.target_xy = source_xy, target_xy
        k_max = int(min(len(source_xy), max([7] + [_neighbours_for(h) for h in kernels])))
        self.neighbours = nearest_sources(source_xy, target_xy, k_max)  # with the ring margin
        self.cache: dict[float | None, sp.csr_matrix] = {}

    def weights(self, bandwidth: float | None) -> sp.csr_matrix:
        if bandwidth not in self.cache:
            self.cache[bandwidth] = (
                linear_weights(self.source_xy, self.target_xy)
                if bandwidth is None
                else kernel_weights(self.source_xy, self.target_xy, bandwidth, neighbours=self.neighbours)
            )
        return self.cache[bandwidth]


def select_classical_params(
    values: np.ndarray,
    positions: np.ndarray,
    cosets: np.ndarray,
    ranks: tuple[int, ...] = RANK_GRID,
    bandwidths: tuple[float | None, ...] = BANDWIDTH_GRID,
    log_depth: np.ndarray | None = None,
    max_genes: int = 300,
    depth_bandwidths: tuple[float | None, ...] = DEPTH_BANDWIDTH_GRID,
    max_targets: int = 1000,
    scale: float = 2.0,
    depth_choice: str = "best",
) -> tuple[ClassicalParams, dict[tuple[int, float | None], float]]:
    """Choose rank and smoothers on the self-supervised pairs of the slide (coset -> the rest).

    See :func:`classical_params_steps` (the same choice, reporting its progress pair by pair)
    for the criterion, the parameters and the result.
    """
    return run_steps(
        classical_params_steps(
            values,
            positions,
            cosets,
            ranks,
            bandwidths,
            log_depth,
            max_genes,
            depth_bandwidths,
            max_targets,
            scale,
            depth_choice,
        )
    )


def classical_params_steps(
    values: np.ndarray,
    positions: np.ndarray,
    cosets: np.ndarray,
    ranks: tuple[int, ...] = RANK_GRID,
    bandwidths: tuple[float | None, ...] = BANDWIDTH_GRID,
    log_depth: np.ndarray | None = None,
    max_genes: int = 300,
    depth_bandwidths: tuple[float | None, ...] = DEPTH_BANDWIDTH_GRID,
    max_targets: int = 1000,
    scale: float = 2.0,
    depth_choice: str = "best",
) -> Progress[tuple[ClassicalParams, dict[tuple[int, float | None], float]]]:
    """:func:`select_classical_params`, yielding ``(pairs done, pairs)`` after each pair.

    The criterion is the one the results are judged by: the median over genes of the Pearson
    r between estimate and truth at the target sites (squared error favours shrinkage towards
    the mean and chose the largest bandwidth on small slides, which lost half of the score). It
    is averaged over the pairs of all four cosets: one pair of a small slide has a few dozen
    input spots, and its choice was noisy.

    Parameters
    ----------
    values
        ``(n_sites, n_genes)`` normalised expression of the input slide.
    positions
        ``(n_sites, 2)`` positions in units of the input pitch.
    cosets
        Coset id of each site (0..3, see :meth:`Lattice.coset`), a boolean mask of one
        coset used as the only input, or a list of boolean masks of the kept sites of each pair
        (e.g. :func:`hole_pairs`).
    log_depth
        ``(n_sites,)`` log total counts; when given, the depth smoother is chosen too from
        ``depth_bandwidths``: with ``depth_choice="best"`` the one with the highest mean Pearson
        r of log depth at the targets, with ``"stack"`` a convex mixture of all of them fitted on
        the targets of every pair (:func:`stack_weights`).
    max_genes, max_targets
        Genes and target sites used for the choice (evenly spaced), to bound its cost.
    scale
        Pitch of the kept sites in input pitches: 2 for the coset pairs (the kept coset is the
        lattice at twice the pitch), 1 for same-scale hole-filling pairs.

    Returns
    -------
    The parameters with the highest mean (over pairs) median r at the target sites, and the
    table of those scores. Bandwidths are in units of the *kept* lattice's pitch (``scale``
    input pitches), the scale at which they were chosen.
    """
    inputs = _pair_inputs(cosets)
    if not inputs:
        return ClassicalParams(), {}
    yield 0, len(inputs)
    chosen = _evenly(values, max_genes)
    scores: dict[tuple[int, float | None], list[float]] = {}
    depth_scores: dict[float | None, list[float]] = {}
    depth_estimates: list[np.ndarray] = []
    depth_truth: list[np.ndarray] = []
    kernels = [h for h in (*bandwidths, *depth_bandwidths) if h is not None]
    for done, keep in enumerate(inputs, 1):
        basis = LowRankBasis.fit(chosen[keep], max(ranks))
        targets = _pair_targets(keep, max_targets)
        dst = chosen[targets]
        smoothers = _PairSmoothers(positions[keep] / scale, positions[targets] / scale, kernels)
        loadings = basis.components.astype(np.float64)  # (genes, k)
        truth = dst - dst.mean(axis=0)
        truth_ss = (truth**2).sum(axis=0)
        for h in bandwidths:
            smoothed = smoothers.weights(h) @ basis.scores
            smoothed = smoothed - smoothed.mean(axis=0)
            # per-gene r of the rank-r estimate from k-column products (no dense prediction):
            # cov_g = sum_j<r V_gj (S'Y)_jg, var_g = v_g' (S'S)_rr v_g
            cross = (smoothed.T @ truth).T  # (genes, k)
            gram = smoothed.T @ smoothed
            for r in ranks:
                if r > basis.max_rank:
                    continue
                v = loadings[:, :r]
                cov = (v * cross[:, :r]).sum(axis=1)
                # a quadratic form of a PSD gram: >= 0, but rounding leaves -1e-17 for an all-zero gene
                var = np.clip(((v @ gram[:r, :r]) * v).sum(axis=1), 0.0, None)
                denom = np.sqrt(var * truth_ss)
                r_genes = np.divide(cov, denom, out=np.full(len(cov), np.nan), where=denom > 1e-12)
                score = float(np.nanmedian(r_genes)) if np.isfinite(r_genes).any() else -1.0
                scores.setdefault((r, h), []).append(score)
        if log_depth is not None:
            candidates = np.stack(
                [smoothers.weights(hd) @ log_depth[keep] for hd in depth_bandwidths], axis=1
            )
            depth_estimates.append(candidates)
            depth_truth.append(log_depth[targets])
            r_depths = pearson_per_gene(candidates, log_depth[targets][:, None])
            for hd, r_depth in zip(depth_bandwidths, r_depths, strict=True):
                depth_scores.setdefault(hd, []).append(-1.0 if np.isnan(r_depth) else float(r_depth))
        yield done, len(inputs)
    mean_scores = {k: float(np.mean(v)) for k, v in scores.items() if len(v) == len(inputs)}
    (rank, h) = max(mean_scores, key=mean_scores.get)
    depth_h, mixture = h, ()
    if depth_scores:
        depth_mean = {k: float(np.mean(v)) for k, v in depth_scores.items()}
        depth_h = max(depth_mean, key=depth_mean.get)
        if depth_choice == "stack" and len(depth_bandwidths) > 1:
            weights = stack_weights(np.concatenate(depth_estimates), np.concatenate(depth_truth))
            weights = np.where(weights > 1e-3, weights, 0.0)  # each member costs a smoothing matrix
            weights /= weights.sum()
            depth_h = depth_bandwidths[int(np.argmax(weights))]
            if np.count_nonzero(weights) > 1:  # a one-member mixture is just ``depth_h``
                mixture = tuple(
                    (hd, float(w)) for hd, w in zip(depth_bandwidths, weights, strict=True) if w > 0
                )
    return ClassicalParams(rank, h, depth_h, depth_mixture=mixture), mean_scores


class _ResidualPair:
    """One pair of :func:`gene_residuals_steps`: what the candidates of every call share.

    The low-rank basis of the kept sites, the truth's side of the metrics, the smoothers (and
    smoothed scores) of each bandwidth asked for, and each rank's Moran's I of the residual:
    small next to the values, so a pair can be kept for the next call.
    """

    def __init__(
        self,
        kept: np.ndarray,
        truth: np.ndarray,
        source_xy: np.ndarray,
        target_xy: np.ndarray,
        neighbours: sp.csr_matrix,
        max_rank: int,
    ) -> None:
        self.basis = LowRankBasis.fit(kept, max_rank)
        self.source_xy, self.target_xy, self.neighbours = source_xy, target_xy, neighbours
        self.mean = self.basis.mean.astype(np.float64)
        axes = self.basis.components[:, :N_AXES].astype(np.float64)
        self.target = FidelityTarget(truth, self.mean, axes, spatially_variable(kept, neighbours))
        self._weights: dict = {}
        self._scores: dict = {}
        self._moran: dict[int, np.ndarray] = {}

    def weights(self, bandwidth: float | None) -> tuple[sp.csr_matrix, np.ndarray]:
        """The smoother of ``bandwidth`` from the kept sites to the targets, and its noise factor."""
        if bandwidth not in self._weights:
            w = smoothing_weights(self.source_xy, self.target_xy, bandwidth)
            self._weights[bandwidth] = w, noise_factor(w)
        return self._weights[bandwidth]

    def smoothed_scores(self, bandwidth: float | None) -> np.ndarray:
        if bandwidth not in self._scores:
            self._scores[bandwidth] = self.weights(bandwidth)[0] @ self.basis.scores.astype(np.float64)
        return self._scores[bandwidth]

    def moran(self, rank: int, residual: np.ndarray) -> np.ndarray:
        """Moran's I of ``residual``, the rank's residual at the kept sites (the same every call)."""
        if rank not in self._moran:
            self._moran[rank] = morans_i(residual, self.neighbours)
        return self._moran[rank]


#: a residual choice's key: (rank, kappa, the residual's smoother)
ResidualChoice = tuple[int, float | None, float | str | None]


def dropout_pairs(
    n_sites: int, rng: np.random.Generator, n_pairs: int = 8, fraction: float = 0.25
) -> list[np.ndarray]:
    """Kept-site masks of same-scale pairs: each drops a random ``fraction`` of the sites.

    Unlike the coset pairs (which halve the lattice, so every smoother is judged at twice the
    real spacing), the kept sites keep the slide's own spacing around each dropped one; the
    gene residuals' smoother is chosen on these (docs/design.md, sixth session).

    Parameters
    ----------
    n_sites
        Usable spots of the slide.
    rng
        Seeded generator (the configuration's seed): the same pairs on every run.
    """
    n_drop = int(fraction * n_sites)
    pairs = []
    for _ in range(n_pairs):
        keep = np.ones(n_sites, dtype=bool)
        keep[rng.choice(n_sites, n_drop, replace=False)] = False
        pairs.append(keep)
    return pairs


def select_gene_residuals(
    values: np.ndarray,
    positions: np.ndarray,
    cosets,
    bandwidth: float | None,
    ranks: tuple[int, ...] = RANK_GRID,
    residuals: tuple[float | None, ...] = RESIDUAL_GRID,
    max_genes: int = 300,
    max_targets: int = 1000,
    scale: float = 2.0,
    tolerance: float = 0.005,
    residual_bandwidths: tuple[float | str | None, ...] = (SAME_AS_SCORES,),
    coexpression_weight: float = 1.0,
) -> tuple[ResidualChoice, dict[ResidualChoice, float]]:
    """Choose the rank (and ``kappa`` and the residual's smoother where several are offered) on the pairs.

    See :func:`gene_residuals_steps` (the same choice, reporting its progress pair by pair) for
    the criterion, the parameters and the result.
    """
    return run_steps(
        gene_residuals_steps(
            values,
            positions,
            cosets,
            bandwidth,
            ranks,
            residuals,
            max_genes,
            max_targets,
            scale,
            tolerance,
            residual_bandwidths,
            coexpression_weight,
        )
    )


def gene_residuals_steps(
    values: np.ndarray,
    positions: np.ndarray,
    cosets,
    bandwidth: float | None,
    ranks: tuple[int, ...] = RANK_GRID,
    residuals: tuple[float | None, ...] = RESIDUAL_GRID,
    max_genes: int = 300,
    max_targets: int = 1000,
    scale: float = 2.0,
    tolerance: float = 0.005,
    residual_bandwidths: tuple[float | str | None, ...] = (SAME_AS_SCORES,),
    coexpression_weight: float = 1.0,
    cache: dict | None = None,
) -> Progress[tuple[ResidualChoice, dict[ResidualChoice, float]]]:
    """:func:`select_gene_residuals`, yielding ``(pairs done, pairs)`` after each pair.

    The estimate at a pair's targets is the rank-``r`` reconstruction smoothed with
    ``bandwidth`` plus each gene's residual, smoothed with each of ``residual_bandwidths``
    (:data:`SAME_AS_SCORES`: ``bandwidth``), weighted by :func:`residual_shrinkage` (``kappa``
    from ``residuals``; None adds nothing; the default offers the one kappa 1). Each candidate is
    scored, on the normalised values of every pair's targets, by three numbers judged in the
    evaluation (:mod:`.fidelity`): the median per-gene r, the median gene-specific r (top
    principal axes of the pair's kept sites removed) and ``coexpression_weight`` times the
    co-expression r, the last two over the genes with the highest Moran's I at the kept sites.
    Per-gene r alone favours rank 1-5 without residuals, which makes unrelated genes follow one
    map (issue 12 of the project).

    Parameters
    ----------
    values, positions, cosets, max_genes, max_targets, scale
        As in :func:`select_classical_params`.
    bandwidth
        The scores' smoother, already chosen (None: linear interpolation), in kept pitches.
    tolerance
        Only candidates whose mean median per-gene r is within this of the best candidate's
        are eligible: the fidelity metrics may not be bought with per-gene r.
    cache
        A dict kept between calls on the same ``values``, ``positions``, pairs and ``scale``
        with other ``bandwidth`` values (the measured sites and the gaps choose on the same
        pairs): each pair's basis, truth-side metrics, smoothers and Moran's I per rank are
        computed once (:class:`_ResidualPair`); the residuals themselves are not kept.

    Returns
    -------
    ``(rank, kappa, residual smoother)`` with the highest mean score over the pairs, and the
    table of scores.
    """
    inputs = _pair_inputs(cosets)
    if not inputs:
        return (ClassicalParams().rank, None, SAME_AS_SCORES), {}
    yield 0, len(inputs)
    chosen = _evenly(values, max_genes)
    cache = {} if cache is None else cache
    scores: dict[ResidualChoice, list[float]] = {}
    per_gene: dict[ResidualChoice, list[float]] = {}
    for done, keep in enumerate(inputs, 1):
        kept, targets = chosen[keep], _pair_targets(keep, max_targets)
        pair = cache.get(done)
        if pair is None:
            pair = cache[done] = _ResidualPair(
                kept,
                chosen[targets].astype(np.float64),
                positions[keep] / scale,
                positions[targets] / scale,
                neighbour_weights(positions[keep]),
                max(ranks),
            )
        low_scores = pair.smoothed_scores(bandwidth)
        # each residual smoother once: the scores' may equal another candidate (e.g. 0.5), whose
        # scores would tie with it, and the earlier candidate wins a tie anyway
        smoothers: dict = {}
        for h in residual_bandwidths:
            effective = bandwidth if h == SAME_AS_SCORES else h
            if effective not in smoothers.values():
                smoothers[h] = effective
        for r in ranks:
            if r > pair.basis.max_rank:
                continue
            loadings = pair.basis.components[:, :r].astype(np.float64)
            low_rank = low_scores[:, :r] @ loadings.T + pair.mean
            residual = kept - pair.mean - pair.basis.scores[:, :r].astype(np.float64) @ loadings.T
            moran = pair.moran(r, residual)
            for h, h_smoother in smoothers.items():
                weights, noise = pair.weights(h_smoother)
                smoothed_residual = weights @ residual
                for kappa in residuals:
                    if kappa is None and h != residual_bandwidths[0]:
                        continue  # no residual: the smoother makes no difference
                    pred = (
                        low_rank
                        if kappa is None
                        else low_rank + residual_shrinkage(moran, noise, kappa) * smoothed_residual
                    )
                    total, median_r = pair.target.score(pred, coexpression_weight)
                    scores.setdefault((r, kappa, h), []).append(total)
                    per_gene.setdefault((r, kappa, h), []).append(median_r)
        yield done, len(inputs)
    mean_scores = {k: float(np.mean(v)) for k, v in scores.items() if len(v) == len(inputs)}
    mean_r = {k: float(np.mean(per_gene[k])) for k in mean_scores}
    # per-gene r may not pay for the other two: candidates more than `tolerance` below the best
    # per-gene r on the pairs are not eligible (small slides otherwise trade it away on noise)
    eligible = [k for k in mean_scores if mean_r[k] >= max(mean_r.values()) - tolerance]
    return max(eligible, key=mean_scores.get), mean_scores
