"""Gene statistics of a prepared slide, computed block-wise on stored entries, against dense NumPy."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from helpers import block_sites, make_slide
from napari_stentrans.core import slide as slide_module
from napari_stentrans.core.slide import Slide


def _slide_with_explicit_zeros_and_a_lost_spot():
    r, c = block_sites("square", 9, 9)
    adata = make_slide(r, c, "square", n_genes=30, seed=5)
    x = adata.X.toarray()
    x[:, 7] = 0.0
    x[: len(r) // 2, 9] = 0.0  # gene 9 detected in about half of the spots
    stored = sp.csr_matrix(x)
    stored.data[stored.indices == 3] = 0.0  # explicit zeros: stored, yet no detection
    adata.X = stored
    return Slide.from_adata(adata, mask=np.array([[0, 0], [4, 4]]))


def test_detection_and_variance_match_dense_numpy(monkeypatch):
    slide = _slide_with_explicit_zeros_and_a_lost_spot()
    # a few rows per block, so the block-wise sums are exercised across many blocks
    monkeypatch.setattr(slide_module, "_gene_stats", _small_blocks(slide_module._gene_stats))
    dense = slide.counts.toarray()[slide.usable]
    assert slide.n_usable == len(dense) == 79
    for threshold in (0.0, 0.1, 0.5, 0.9):
        expected = np.flatnonzero((dense > 0).mean(axis=0) >= threshold)
        np.testing.assert_array_equal(slide.eligible_genes(threshold), expected)
    assert 3 not in slide.eligible_genes(0.01) and 7 not in slide.eligible_genes(0.01)
    y = np.log1p(dense * (1e4 / slide.depth[slide.usable])[:, None])
    candidates = np.arange(0, 30, 2)
    expected = np.sort(candidates[np.argsort(-y[:, candidates].var(axis=0), kind="stable")[:5]])
    np.testing.assert_array_equal(slide.most_variable(candidates, 5), expected)


def _small_blocks(function):
    def wrapped(x, row_scale=None, rows_per_block=512):
        return function(x, row_scale, rows_per_block=7)

    return wrapped
