"""Gene-specific fidelity: does an enhanced matrix keep what makes each gene a gene?

Median per-gene r on counts is dominated by each spot's depth and the main axis of expression;
a rank-1 estimate scores well on it while making unrelated genes follow one map (METHOD.md, "One
number is not enough"). These metrics see that, on log-normalised values at the scored spots:

- **gene-specific r**: per-gene Pearson r of what is left of prediction and truth after
  removing their projection on the top principal axes of the *seen* spots (centred by the seen
  spots' mean);
- **co-expression r**: Pearson r between the upper triangles of the gene-gene correlation
  matrices of prediction and truth;
- **co-expression r against the signal**: the same, against the truth's gene-gene correlations
  with its sampling noise taken out by count splitting (:func:`signal_correlation`). Noise
  independent between genes lowers every measured correlation, the more the noisier the gene;
  an estimate that carries similar noise (linear interpolation of two or three neighbours)
  matches that pattern, a denoised one cannot;
- **PC1 share** and **effective rank** (Roy & Vetterli 2007: ``exp`` of the entropy of the
  normalised eigenvalues) of a matrix's centred covariance, and of the truth's covariance
  without its Poisson noise (count splitting, :func:`covariance_spectrum`);
- **spatial variability**: Moran's I of each gene on the seen spots' lattice neighbours
  (Moran 1950; weights 1 between nearest lattice neighbours, rows normalised), used to pick the
  genes these metrics are reported over;
- **ARI** of one fixed clustering pipeline against annotated labels (:func:`cluster_ari`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .metrics import pearson_per_gene

N_AXES = 3  # principal axes removed for the gene-specific r
N_SPATIAL_GENES = 100  # genes the fidelity metrics are reported over


def neighbour_weights(positions: np.ndarray) -> sp.csr_matrix:
    """Row-normalised binary weights ``(n, n)`` between nearest lattice neighbours.

    Neighbours are the sites within 1.05 times the median nearest-neighbour distance (4 on a
    square lattice, 6 on a hexagonal one); isolated sites keep an empty row.
    """
    tree = cKDTree(positions)
    d, _ = tree.query(positions, k=2)
    pairs = tree.query_pairs(1.05 * float(np.median(d[:, 1])), output_type="ndarray")
    n = len(positions)
    rows, cols = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    w = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    degree = np.asarray(w.sum(axis=1)).ravel()
    return sp.diags(np.divide(1.0, degree, out=np.zeros(n), where=degree > 0)) @ w


def morans_i(values: np.ndarray, weights: sp.csr_matrix) -> np.ndarray:
    """Moran's I ``(genes,)`` of each column of ``values`` ``(n, genes)`` with row-normalised weights.

    With rows summing to one, ``I = z' W z / z' z`` for the centred column ``z``; NaN for a
    constant gene.
    """
    z = np.asarray(values, dtype=np.float64) - np.asarray(values, dtype=np.float64).mean(axis=0)
    num = (z * (weights @ z)).sum(axis=0)
    den = (z * z).sum(axis=0)
    return np.divide(num, den, out=np.full(z.shape[1], np.nan), where=den > 1e-12)


def spatially_variable(values: np.ndarray, weights: sp.csr_matrix, n: int = N_SPATIAL_GENES) -> np.ndarray:
    """Columns of ``values`` ``(n_spots, genes)`` with the ``n`` highest Moran's I, ascending.

    ``weights`` are the spots' :func:`neighbour_weights`; constant genes (NaN) come last.
    """
    moran = morans_i(values, weights)
    return np.sort(np.argsort(-np.nan_to_num(moran, nan=-np.inf), kind="stable")[:n])


def gene_specific_r(pred: np.ndarray, truth: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Per-gene r ``(genes,)`` of prediction and truth with their projection on ``axes`` removed.

    ``mean`` and ``axes`` come from the seen spots (e.g. :class:`.classical.LowRankBasis`), so neither side
    defines the structure that is taken out.
    """

    return pearson_per_gene(remove_axes(pred, mean, axes), remove_axes(truth, mean, axes))


def remove_axes(values: np.ndarray, mean: np.ndarray, axes: np.ndarray, genes=slice(None)) -> np.ndarray:
    """``values - mean`` less its projection on ``axes`` ``(all genes, n_axes)``, at columns ``genes``."""
    centred = np.asarray(values, dtype=np.float64) - mean
    return centred[:, genes] - (centred @ axes) @ axes[genes].T


def _correlation(values: np.ndarray) -> np.ndarray:
    """Gene-gene Pearson correlation ``(genes, genes)``; 0 for a constant gene."""
    z = np.asarray(values, dtype=np.float64) - np.asarray(values, dtype=np.float64).mean(axis=0)
    norm = np.sqrt((z * z).sum(axis=0))
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 1e-12)
    return z.T @ z


def coexpression_r(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson r between the upper triangles of the gene-gene correlation matrices.

    NaN with fewer than three genes, and when either side's correlations are all equal (e.g. a rank-1 prediction whose loadings
    have one sign: every pair correlates at 1, so no pattern of co-expression is left to compare).
    """
    if pred.shape[1] < 3:  # fewer than three gene pairs: no pattern to compare
        return float("nan")
    return _coexpression(correlation_upper(pred), correlation_upper(truth))


def correlation_upper(values: np.ndarray) -> np.ndarray:
    """The upper triangle (above the diagonal) of the gene-gene correlation matrix, flat."""
    return _correlation(values)[np.triu_indices(values.shape[1], k=1)]


def _coexpression(pred_upper: np.ndarray, truth_upper: np.ndarray) -> float:
    return float(pearson_per_gene(pred_upper[:, None], truth_upper[:, None])[0])


def is_counts(values: np.ndarray) -> bool:
    """Whether ``values`` are finite non-negative integers (what binomial splitting needs)."""
    values = np.asarray(values)
    return bool(np.isfinite(values).all() and (values >= 0).all() and np.array_equal(values, np.rint(values)))


def count_split_halves(
    counts: np.ndarray, depth: np.ndarray, rng: np.random.Generator, n_splits: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` binomial splits of integer ``counts`` ``(spots, genes)``, log-normalised.

    Each count is divided binomially in two (p = 1/2); each half is normalised by half the
    spot's ``depth`` ``(spots,)``. The input of :func:`signal_covariance` (count splitting,
    Neufeld et al. 2024).
    """
    from .classical import normalize  # classical imports this module

    halves, half_depth = [], depth / 2
    for _ in range(n_splits):
        first = rng.binomial(counts, 0.5)
        halves.append((normalize(first, half_depth), normalize(counts - first, half_depth)))
    return halves


def signal_covariance(halves: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Gene-gene covariance ``(genes, genes)`` of the truth without its sampling noise.

    Count splitting (Neufeld, Gao, Popp, Battle & Witten 2024, Biostatistics 25(1):270): each
    split divides every count binomially into two halves whose Poisson sampling noise is
    independent, so the covariance *between* the halves' normalised values estimates the
    covariance of the spots' expected expression, where a matrix's covariance with itself adds
    each gene's noise to its diagonal and so lowers every correlation. Only Poisson noise is
    removed: extra-Poisson variation of a spot's expression is shared by both halves and stays
    in the signal (negative binomial counts would need Dirichlet-multinomial splitting, Neufeld
    et al. 2023, arXiv:2307.12985). The cross-covariance is symmetrised and averaged over the
    splits; it need not be positive semi-definite (its noise can make eigenvalues negative).

    Parameters
    ----------
    halves
        One ``(a, b)`` per split: log-normalised values ``(spots, genes)`` of the two halves
        (each normalised by half the spot's depth; :func:`count_split_halves`).
    """
    cross = []
    for a, b in halves:
        a = np.asarray(a, dtype=np.float64) - np.asarray(a, dtype=np.float64).mean(axis=0)
        b = np.asarray(b, dtype=np.float64) - np.asarray(b, dtype=np.float64).mean(axis=0)
        cross.append((a.T @ b + b.T @ a) / (2 * len(a)))
    return np.mean(cross, axis=0)


def signal_correlation(halves: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Gene-gene correlations ``(genes, genes)`` of the truth without its sampling noise.

    :func:`signal_covariance` scaled to correlations (:func:`covariance_correlation`): a gene
    whose cross-variance is not positive (no signal measurable above its noise at these spots)
    gets NaN.
    """
    return covariance_correlation(signal_covariance(halves))


def covariance_correlation(cov: np.ndarray) -> np.ndarray:
    """Correlations ``(genes, genes)`` of a covariance estimate, clipped to [-1, 1]; NaN rows and
    columns for genes whose variance is not positive."""
    var = np.diag(cov).copy()
    scale = np.where(var > 1e-12, np.sqrt(np.clip(var, 1e-12, None)), np.nan)
    return np.clip(cov / scale[:, None] / scale[None, :], -1.0, 1.0)


def coexpression_signal_r(pred: np.ndarray, signal: np.ndarray) -> float:
    """Co-expression r of ``pred`` ``(spots, genes)`` against :func:`signal_correlation` ``signal``.

    Over the gene pairs whose signal correlation is defined; NaN with fewer than three.
    """
    return upper_agreement(_correlation(pred), signal)


def upper_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson r of two correlation matrices' upper triangles, over pairs finite in both (NaN < 3)."""
    upper = np.triu_indices(first.shape[0], k=1)
    a, b = first[upper], second[upper]
    finite = np.isfinite(a) & np.isfinite(b)
    return _coexpression(a[finite], b[finite]) if finite.sum() >= 3 else float("nan")


class FidelityTarget:
    """The truth's side of gene-specific r and co-expression r, prepared once for many predictions.

    Scores candidates against one truth (e.g. every rank and shrinkage on one pair) without
    projecting and correlating the truth again each time; same values as
    :func:`gene_specific_r` (at ``genes``) and :func:`coexpression_r` (over ``genes``).
    """

    def __init__(self, truth: np.ndarray, mean: np.ndarray, axes: np.ndarray, genes: np.ndarray) -> None:
        self.truth, self.mean, self.axes, self.genes = truth, mean, axes, genes
        self.truth_residual = remove_axes(truth, mean, axes, genes)
        self.truth_upper = correlation_upper(truth[:, genes]) if len(genes) >= 3 else None

    def gene_specific_r(self, pred: np.ndarray) -> np.ndarray:
        """``(len(genes),)`` gene-specific r of ``pred`` ``(targets, all genes)``."""
        return pearson_per_gene(remove_axes(pred, self.mean, self.axes, self.genes), self.truth_residual)

    def coexpression_r(self, pred: np.ndarray) -> float:
        """Co-expression r of ``pred`` over ``genes`` (NaN with fewer than three)."""
        if self.truth_upper is None:
            return float("nan")
        return _coexpression(correlation_upper(pred[:, self.genes]), self.truth_upper)

    def score(self, pred: np.ndarray, coexpression_weight: float = 1.0) -> tuple[float, float]:
        """The choice criterion of the default and of the learned gate, and its per-gene part.

        Returns ``(median per-gene r + median gene-specific r + w * co-expression r, median
        per-gene r)`` of ``pred`` ``(targets, all genes)`` with ``w = coexpression_weight``; a
        median with no finite value counts -1, a co-expression r that is not finite 0.
        """
        parts = (pearson_per_gene(pred, self.truth), self.gene_specific_r(pred))
        medians = [float(np.nanmedian(x)) if np.isfinite(x).any() else -1.0 for x in parts]
        coexpression = self.coexpression_r(pred)
        coexpression = coexpression if np.isfinite(coexpression) else 0.0
        return sum(medians) + coexpression_weight * coexpression, medians[0]


def spectrum(values: np.ndarray) -> tuple[float, float]:
    """PC1 share of the variance and effective rank of a matrix ``(sites, genes)``.

    The effective rank is ``exp(H)`` with ``H`` the entropy of the eigenvalues of the centred
    covariance normalised to sum to one (Roy & Vetterli 2007): 1 for a rank-1 matrix, the number
    of genes for uncorrelated genes of equal variance.
    """
    values = np.asarray(values, dtype=np.float64)
    return eigen_spectrum(np.linalg.svd(values - values.mean(axis=0), compute_uv=False) ** 2)


def covariance_spectrum(cov: np.ndarray) -> tuple[float, float]:
    """:func:`spectrum` of a covariance matrix ``(genes, genes)`` given as such.

    For an estimate that need not be positive semi-definite (:func:`signal_covariance`), the
    negative eigenvalues (noise of the estimate) count as 0.
    """
    cov = np.asarray(cov, dtype=np.float64)
    return eigen_spectrum(np.clip(np.linalg.eigvalsh((cov + cov.T) / 2), 0.0, None))


def eigen_spectrum(eigenvalues: np.ndarray) -> tuple[float, float]:
    """PC1 share and effective rank (``exp`` of the entropy) of non-negative eigenvalues; NaN
    for an all-zero spectrum."""
    s = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    total = s.sum()
    if total <= 1e-12:
        return float("nan"), float("nan")
    p = s / total
    p = p[p > 0]
    return float(s[0] / total), float(np.exp(-(p * np.log(p)).sum()))


def kmeans_labels(values: np.ndarray, k: int, n_pcs: int = 15, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """The fixed clustering pipeline: centre, top ``n_pcs`` principal components, k-means (k-means++).

    ``values`` are log-normalised expression ``(spots, genes)``. k-means runs ``n_init`` times
    from k-means++ starts (scipy's ``kmeans2``, one seeded generator: deterministic) and keeps
    the run with the smallest within-cluster sum of squares, as scikit-learn's ``KMeans`` does:
    a single start made the ARI swing from 0.01 to 0.61 when 5 of 241 spots were left out.
    """
    from scipy.cluster.vq import kmeans2

    values = np.asarray(values, dtype=np.float64)
    centred = values - values.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    pcs = u[:, :n_pcs] * s[:n_pcs]
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centres, labels = kmeans2(pcs, k, iter=50, minit="++", seed=rng)
        inertia = float(((pcs - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings (Hubert & Arabie 1985)."""
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    table = sp.coo_matrix((np.ones(len(ai)), (ai, bi))).toarray()

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / pairs(np.array([len(ai)]))
    maximum = (rows + cols) / 2
    return float((index - expected) / (maximum - expected)) if maximum != expected else 1.0


def cluster_ari(values: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """ARI against ``labels`` of :func:`kmeans_labels` with k = the number of distinct labels.

    NaN with fewer than two distinct labels: one cluster agrees with one label trivially (ARI 1
    for any prediction), which says nothing.
    """
    labels = np.asarray(labels)
    k = len(np.unique(labels))
    if k < 2 or len(labels) <= k:
        return float("nan")
    return adjusted_rand_index(kmeans_labels(values, k, seed=seed), labels)


__all__ = [
    "neighbour_weights",
    "morans_i",
    "spatially_variable",
    "gene_specific_r",
    "remove_axes",
    "FidelityTarget",
    "coexpression_r",
    "signal_correlation",
    "coexpression_signal_r",
    "upper_agreement",
    "spectrum",
    "kmeans_labels",
    "adjusted_rand_index",
    "cluster_ari",
]
