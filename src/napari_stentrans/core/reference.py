"""Same-tissue reference slides: the classical estimate's low-rank basis learned from more spots.

A slide's own seen spots (a quarter of a Visium section on the ``heldout`` protocol, about
900 spots) give a noisy estimate of the gene loadings that the classical estimate projects every
gene on. An adjacent section of the same tissue (DLPFC 151673 and 151674: the same donor, 10 µm
apart) has the same cell types and gene programmes, measured on thousands more spots.

The rule (documented in README "Same-tissue reference" and ``stentrans enhance --help``):

- the **basis genes** are the slide's own basis genes (its most variable genes) that every
  reference slide also has, matched **by name** (order and extra genes of a reference do not
  matter). A basis gene absent from any reference is left out of the basis; it is still
  enhanced, like every other gene, through its loadings on the basis scores fitted on the
  slide's own spots. Fewer than :data:`MIN_SHARED_GENES` shared genes: refused
  (:class:`~.errors.InputError`, before any work);
- the **gene loadings** (principal axes) are fitted on the normalised values (``log1p`` of
  counts per 10,000) of every usable spot of every reference slide, pooled with the slide's own
  usable spots, each slide centred on its own gene means first (a shift between sections,
  e.g. of sequencing depth or batch, is not tissue structure and would otherwise become the
  first axis); the basis **mean** and the spot **scores** are the slide's own (its values less
  its own mean, projected on the pooled axes);
- everything else is the slide's own: the choice of rank and smoothers (on its own
  self-supervised pairs, as without a reference), depth, the gene residuals and their
  shrinkage, and every gene's loadings at prediction.

A reference never contains the slide itself: a reference with the slide's fingerprint is
refused, and the evaluation refuses one equal to the evaluated (full) slide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classical import TARGET_SUM, LowRankBasis
from .errors import InputError, ReferenceSlideError
from .slide import Slide

MIN_SHARED_GENES = 50  # fewer shared basis genes make a basis of a few genes: refused


def reference_names(count: int, names: list[str] | None = None) -> list[str]:
    """``names`` as a list, or ``reference 1``, ``reference 2``, ... for ``count`` unnamed slides."""
    return list(names) if names is not None else [f"reference {i + 1}" for i in range(count)]


def read_references(paths: list) -> list:
    """The reference slides at ``paths`` (files or folders, each read whole by :func:`.io.read`).

    Every path is checked to exist before any is read.

    Raises
    ------
    ReferenceSlideError
        A missing or unreadable reference, named by its path (the CLI prints ``--reference PATH: ...``).
    """
    from pathlib import Path

    from .errors import StentransError
    from .io import read

    for path in paths:
        if not Path(path).exists():
            raise ReferenceSlideError(str(path), "no such file or folder")
    slides = []
    for path in paths:
        try:
            slides.append(read(path))
        except StentransError as exc:
            text = str(exc)
            problem = text[len(f"{path}: ") :] if text.startswith(f"{path}: ") else text
            raise ReferenceSlideError(str(path), problem) from exc
    return slides


@dataclass(frozen=True)
class ReferenceBasis:
    """Gene loadings fitted on reference slides pooled with the slide (see module docstring).

    Attributes
    ----------
    genes
        ``(n_shared,)`` names of the basis genes (the slide's basis genes every reference has).
    components
        ``(n_shared, max_rank)`` orthonormal gene loadings, strongest first.
    slides
        One line per reference slide: name, fingerprint, usable spots.
    n_left_out
        The slide's basis genes left out because a reference lacks them.
    """

    genes: tuple[str, ...]
    components: np.ndarray
    slides: tuple[str, ...]
    n_left_out: int = 0

    def basis(self, slide: Slide, max_rank: int, values: np.ndarray | None = None) -> LowRankBasis:
        """The slide's :class:`~.classical.LowRankBasis` on the reference axes.

        Mean and scores are ``slide``'s own (its usable spots, basis genes by name);
        ``values``, when the caller has them, are those spots' log-normalised values of
        :attr:`genes`, in order (saves normalising them again).

        Raises
        ------
        InputError
            ``slide`` lacks some of the basis genes.
        """
        idx = slide.genes.get_indexer(list(self.genes))
        if (idx < 0).any():
            missing = self.genes[int(np.flatnonzero(idx < 0)[0])]
            raise InputError(
                f"{int((idx < 0).sum())} gene(s) of the reference basis are not in this slide, e.g. {missing!r}"
            )
        if values is None:
            values = slide.expression(idx, "log1p", TARGET_SUM)
        values = np.asarray(values, dtype=np.float64)
        mean = values.mean(axis=0)
        components = self.components[:, : max(1, min(max_rank, self.components.shape[1]))]
        scores = (values - mean) @ components.astype(np.float64)
        return LowRankBasis(mean.astype(np.float32), components.astype(np.float32), scores.astype(np.float32))

    def describe(self) -> dict:
        """Plain values for ``uns["stentrans"]``: the reference slides and the basis genes."""
        return {
            "slides": list(self.slides),
            "n_basis_genes": len(self.genes),
            "n_basis_genes_left_out": int(self.n_left_out),
            "rule": "gene loadings fitted on the reference slides pooled with this slide (each centred "
            "on its own means); mean, scores, rank, smoothers and residuals this slide's own",
        }


def fit_reference_basis(
    slide: Slide,
    basis_genes: np.ndarray,
    references: list[Slide],
    max_rank: int,
    names: list[str] | None = None,
    seed: int = 0,
    values: np.ndarray | None = None,
) -> ReferenceBasis:
    """Fit the gene loadings on ``references`` pooled with ``slide`` (see module docstring).

    Parameters
    ----------
    slide
        The slide being enhanced (its usable spots join the pool).
    basis_genes
        Indices into ``slide.genes`` of its basis genes.
    references
        Other slides of the same tissue; genes matched by name.
    max_rank
        Number of axes kept.
    names
        A name per reference (e.g. its file), for the record; default: ``reference N``.
    seed
        Seed of the randomized SVD.
    values
        ``slide``'s log-normalised values of ``basis_genes`` at its usable spots, when the
        caller has them (saves normalising them again).

    Raises
    ------
    InputError
        No reference. :class:`~.errors.ReferenceSlideError` (an InputError): a reference equal
        to ``slide`` (same fingerprint), or fewer than
        :data:`MIN_SHARED_GENES` basis genes shared with every reference.
    """
    if not references:
        raise InputError("no reference slide given")
    names = reference_names(len(references), names)
    genes = np.asarray(slide.genes[basis_genes]).astype(str)
    shared = np.ones(len(genes), dtype=bool)
    for ref, name in zip(references, names, strict=True):
        if ref.fingerprint == slide.fingerprint:
            raise ReferenceSlideError(
                name,
                f"the slide being enhanced itself (same fingerprint {slide.fingerprint}): "
                "give other slides of the same tissue",
            )
        here = ref.genes.get_indexer(list(genes)) >= 0
        if here.sum() < MIN_SHARED_GENES:
            raise ReferenceSlideError(
                name,
                f"shares only {int(here.sum())} of the slide's {len(genes)} basis genes "
                f"(matched by name; at least {MIN_SHARED_GENES} needed): give a reference of the same "
                "tissue and species, with the same kind of gene names (symbols or ids)",
            )
        shared &= here
    if shared.sum() < MIN_SHARED_GENES:
        raise ReferenceSlideError(
            None,
            f"the reference slides share only {int(shared.sum())} of the slide's {len(genes)} basis genes "
            f"all together (matched by name; at least {MIN_SHARED_GENES} needed): give fewer or more similar references",
        )
    kept = genes[shared]
    blocks = []
    for source in [slide, *references]:
        if source is slide and values is not None:
            block = np.ascontiguousarray(values[:, shared])
        else:
            block = source.expression(source.genes.get_indexer(list(kept)), "log1p", TARGET_SUM)
        blocks.append(block - block.mean(axis=0))
    pooled = LowRankBasis.fit(np.concatenate(blocks), max_rank, seed=seed)
    return ReferenceBasis(
        genes=tuple(kept),
        components=pooled.components,
        slides=tuple(
            f"{name} (fingerprint {ref.fingerprint}, {ref.n_usable} spots)"
            for ref, name in zip(references, names, strict=True)
        ),
        n_left_out=int((~shared).sum()),
    )


__all__ = ["ReferenceBasis", "fit_reference_basis", "read_references", "reference_names", "MIN_SHARED_GENES"]
