"""How many patterns do the enhanced genes follow? A check every enhancement reports.

A low-rank estimate makes unrelated genes follow the same few maps (METHOD.md, "One number is
not enough"). While the enhanced matrix is predicted, the values of the most spatially variable
enhanced genes at the measured spots are kept; at the end their PC1 share and effective rank
are compared with the measured slide's at the same spots and genes, as measured and without its
Poisson noise (count splitting: the measured rank counts each gene's sampling noise as a pattern
of its own, so on real slides it is 2.4-8 times the signal's). When the enhanced genes follow
under :data:`SIGNAL_SHARE` of the signal's effective patterns the user is told, in plain
words, not to read co-expression from them. Only where the signal cannot be estimated (not
counts) do the bars of the measured rank apply: fewer than :data:`FEW_PATTERNS` effective
patterns, and with fewer than :data:`MIN_GENES` genes (but at least
:data:`MIN_GENES_STRONG`) only strong evidence counts: the enhanced genes follow about one pattern
(effective rank below :data:`STRONG_RANK`) while the measured ones clearly follow more (at least
:data:`STRONG_RATIO` times as many), and ``no_warning`` says what was missing when it is not;
with fewer genes or spots ``not_judged`` says why no verdict was given.
"""

from __future__ import annotations

import warnings

import numpy as np

from .classical import TARGET_SUM, normalize
from .fidelity import (
    count_split_halves,
    covariance_spectrum,
    is_counts,
    neighbour_weights,
    signal_covariance,
    spatially_variable,
    spectrum,
)
from .sites import OutputSites
from .slide import Slide

N_GENES = 100  # the most spatially variable enhanced genes
N_CANDIDATES = 500  # most variable genes whose Moran's I is computed
FEW_PATTERNS = 5.0  # an effective rank below this: "the genes follow a few shared patterns"
MIN_GENES = 20  # below this, the effective rank is capped by the gene count: only strong evidence
MIN_GENES_STRONG = 5  # fewer genes say nothing about how many patterns they share
STRONG_RANK = 1.5  # with few genes: the enhanced genes follow about one pattern ...
STRONG_RATIO = 2.0  # ... and the measured ones at least this many times as many
#: the bar when the measured signal's rank (without Poisson noise) is known: an enhanced rank under
#: this share of it is warned about. The signal's spatially smooth part (its covariance between
#: neighbouring spots), what an estimate at an unmeasured site can reach, holds 0.59-0.91 of it on
#: the 18 real slides; the default keeps 0.23-0.51, its low-rank part alone 0.09-0.47, each
#: gene's whole smoothed residual 0.75-3.05 (docs/design.md)
SIGNAL_SHARE = 0.5
N_SPLITS = 5  # binomial count splits averaged for the measured signal


def few_patterns(rank: float, measured_rank: float, n_genes: int, signal_rank: float = float("nan")) -> bool:
    """Whether enhanced genes with effective rank ``rank`` over ``n_genes`` genes follow too few
    shared patterns to read co-expression from them.

    With the measured genes' rank without their Poisson noise known (``signal_rank``; count
    splitting, :class:`PatternCheck`): under :data:`SIGNAL_SHARE` of it, from
    :data:`MIN_GENES_STRONG` genes (the measured signal is the yardstick whatever the number of
    genes: over 20 genes of a Visium slide it can itself hold under 3 patterns). Without it (NaN)
    the bars of the measured rank ``measured_rank``, which counts each gene's noise as a pattern:
    below :data:`FEW_PATTERNS` with at least :data:`MIN_GENES` genes; with fewer only about one
    pattern (:data:`STRONG_RANK`) against a measured rank :data:`STRONG_RATIO` times as high.
    Never with fewer than :data:`MIN_GENES_STRONG` genes.
    """
    if n_genes < MIN_GENES_STRONG:
        return False
    if np.isfinite(signal_rank):
        return bool(rank < SIGNAL_SHARE * signal_rank)
    if n_genes >= MIN_GENES:
        return bool(rank < FEW_PATTERNS)
    return bool(rank < STRONG_RANK and measured_rank >= STRONG_RATIO * rank)


def report_bar(report: dict) -> tuple[float, float, int]:
    """From an ``evaluate`` report: the truth's effective rank at the scored spots, the same
    without its Poisson noise, and how many genes they are over (NaN where a value is missing or
    null, as a JSON report writes NaN)."""
    truth = report.get("truth", {})
    measured, signal = (truth.get(key) for key in ("effective_rank", "signal_effective_rank"))
    nan = float("nan")
    return (
        nan if measured is None else float(measured),
        nan if signal is None else float(signal),
        len(report.get("spatial_genes", [])),
    )


def few_in_report(report: dict, rank: float | None) -> bool:
    """Whether a method of an ``evaluate`` report with effective rank ``rank`` follows too few
    patterns (:func:`few_patterns` against the report's truth, :func:`report_bar`); False when
    the rank or the truth's is missing or not finite."""
    measured, signal, n_genes = report_bar(report)
    if rank is None or not (np.isfinite(rank) and np.isfinite(measured)):
        return False
    return few_patterns(float(rank), measured, n_genes, signal)


class SharedPatternsWarning(UserWarning):
    """The enhanced genes follow too few shared patterns to read co-expression from them
    (:func:`few_patterns`); the message is ``uns["stentrans"]["patterns"]["warning"]``."""


def warn_shared_patterns(patterns: dict, stacklevel: int = 2) -> None:
    """Issue the check's warning, if it has one, as a :class:`SharedPatternsWarning`: the Python
    API's user sees it without reading ``uns``, and the CLI prints it as ``stentrans: warning:
    ...``. napari 0.9 does not show a worker's warnings; its panels say the warning in their
    status lines and its reader as a notification."""
    if "warning" in patterns:
        warnings.warn(patterns["warning"], SharedPatternsWarning, stacklevel=stacklevel + 1)


#: what the warning advises against, in the same words wherever it is said
NOT_SUITABLE = "not suitable for co-expression, clustering or differential-expression analysis"


def how_few(signal_rank: float) -> str:
    """What :func:`few_patterns` found, in words, by the bar it used."""
    if np.isfinite(signal_rank):
        return "under half as many shared patterns as the measured genes without their Poisson noise"
    return "a few shared patterns"


def compared(rank: float, measured_rank: float, signal_rank: float) -> str:
    """The numbers behind :func:`how_few`: ``"effective rank 2.7 against 8.1"`` with the bar of
    the signal's rank, ``"effective rank 2.7; measured 40.5"`` without it."""
    if np.isfinite(signal_rank):
        return f"effective rank {rank:.1f} against {signal_rank:.1f}"
    return f"effective rank {rank:.1f}; measured {measured_rank:.1f}"


class PatternCheck:
    """Collects the enhanced values of a few genes at the measured spots, batch by batch.

    Parameters
    ----------
    slide
        The prepared input slide.
    sites
        The output sites.
    gene_idx
        ``(n_genes,)`` the enhanced genes (columns of the batches, in order).
    depth
        ``(n_sites,)`` the depth the enhanced counts were scaled by, or None (raw-count models:
        the measured depth is used).
    """

    def __init__(
        self, slide: Slide, sites: OutputSites, gene_idx: np.ndarray, depth: np.ndarray | None
    ) -> None:
        usable_rank = np.cumsum(slide.usable) - 1  # row of each spot among the usable spots
        measured = np.flatnonzero((sites.spot >= 0) & slide.usable[np.clip(sites.spot, 0, None)])
        self.rows = measured  # output rows of measured, usable spots
        spot_rows = usable_rank[sites.spot[measured]]
        candidates = slide.most_variable(np.asarray(gene_idx), N_CANDIDATES)
        values = slide.expression(candidates)[spot_rows]
        top = spatially_variable(values, neighbour_weights(slide.positions(slide.usable)[spot_rows]), N_GENES)
        self.genes = np.sort(candidates[top])  # slide gene indices
        order = np.argsort(gene_idx)  # gene_idx follows the user's request, not the slide's order
        self.columns = order[np.searchsorted(np.asarray(gene_idx)[order], self.genes)]  # batch columns
        self.counts = slide.expression(self.genes, "none")[spot_rows]  # also for the signal's spectrum
        measured_depth = slide.depth[sites.spot[measured]]
        self.measured = normalize(self.counts, measured_depth, TARGET_SUM)  # as slide.expression does
        self.measured_depth = measured_depth
        self.depth = measured_depth if depth is None else np.asarray(depth)[measured]
        self.enhanced = np.zeros((len(measured), len(self.genes)), dtype=np.float32)

    def add(self, start: int, counts: np.ndarray) -> None:
        """Keep the chosen genes of a batch ``counts`` ``(n_sites, batch)`` starting at column ``start``."""
        inside = (self.columns >= start) & (self.columns < start + counts.shape[1])
        if inside.any():
            picked = counts[self.rows][:, self.columns[inside] - start]
            self.enhanced[:, inside] = normalize(np.clip(picked, 0, None), self.depth, TARGET_SUM)

    def result(self) -> dict:
        """PC1 share and effective rank of the enhanced and the measured values, and a warning."""
        if len(self.genes) < 3 or len(self.rows) < 3:
            reasons = []  # the limit that applies (it said "only 2 genes or 981 measured spots")
            if len(self.genes) < 3:
                reasons.append(too_few_genes(len(self.genes)))
            if len(self.rows) < 3:
                reasons.append(f"only {_count(len(self.rows), 'measured spot')} (at least 3 are needed)")
            return {"n_genes": int(len(self.genes)), "not_judged": "; ".join(reasons)}
        pc1, rank = spectrum(self.enhanced)
        measured_pc1, measured_rank = spectrum(self.measured)
        signal_pc1, signal_rank = self.signal_spectrum()
        out = {
            "n_genes": int(len(self.genes)),
            "pc1_share": pc1,
            "effective_rank": rank,
            "measured_pc1_share": measured_pc1,
            "measured_effective_rank": measured_rank,
        }
        if np.isfinite(signal_rank):
            out["measured_signal_pc1_share"] = signal_pc1
            out["measured_signal_effective_rank"] = signal_rank
        n = len(self.genes)
        if not (np.isfinite(rank) and np.isfinite(measured_rank)):
            out["not_judged"] = "the effective rank is not finite (constant values)"
            return out
        few = few_patterns(rank, measured_rank, n, signal_rank)
        if MIN_GENES_STRONG <= n < MIN_GENES and not few and not np.isfinite(signal_rank):
            out["no_warning"] = (
                f"no warning from {n} genes: under {MIN_GENES} genes a warning needs an effective "
                f"rank under {STRONG_RANK} (here {rank:.1f}) with the measured genes' at least "
                f"{STRONG_RATIO:g} times as high (here {measured_rank:.1f})"
            )
        elif n < MIN_GENES_STRONG:
            out["not_judged"] = too_few_genes(n)
        if few:
            # short: the CLI prints the numbers in full on its `patterns:` line just before
            out["warning"] = (
                f"the enhanced genes follow {how_few(signal_rank)} "
                f"({compared(rank, measured_rank, signal_rank)}, over the {n} most spatially variable "
                f"genes): {NOT_SUITABLE}; for those, use layers['measured'] at the measured spots "
                "(obs['kind'] == 'measured')"
            )
        return out

    def signal_spectrum(self) -> tuple[float, float]:
        """PC1 share and effective rank of the measured genes without their Poisson noise.

        Count splitting (:func:`~.fidelity.signal_covariance`, :data:`N_SPLITS` splits, a fixed
        seed: the same slide gives the same numbers) at the measured spots; the measured
        ``effective_rank`` counts each gene's sampling noise as patterns of its own, this one
        does not. NaN when the input is not integer counts.
        """
        if not is_counts(self.counts):
            return float("nan"), float("nan")
        counts = self.counts.astype(np.int64)
        halves = count_split_halves(counts, self.measured_depth, np.random.default_rng(0), N_SPLITS)
        return covariance_spectrum(signal_covariance(halves))


__all__ = [
    "PatternCheck",
    "SharedPatternsWarning",
    "warn_shared_patterns",
    "FEW_PATTERNS",
    "MIN_GENES",
    "MIN_GENES_STRONG",
    "SIGNAL_SHARE",
    "few_patterns",
    "few_in_report",
    "report_bar",
    "how_few",
    "too_few_genes",
    "compared",
    "NOT_SUITABLE",
    "with_signal",
]


def with_signal(measured: float, signal: float, spec: str) -> str:
    """``"18.2"``, or ``"18.2, or 5.3 without its Poisson noise"`` when the signal's value is known."""
    text = format(measured, spec)
    return f"{text}, or {format(signal, spec)} without its Poisson noise" if np.isfinite(signal) else text


def too_few_genes(n_genes: int) -> str:
    """Why no verdict is given for ``n_genes`` (under :data:`MIN_GENES_STRONG`) genes."""
    return f"only {_count(n_genes, 'gene')} (at least {MIN_GENES_STRONG} are needed to judge patterns)"


def _count(n: int, noun: str) -> str:
    """``"1 gene"``, ``"2 genes"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
