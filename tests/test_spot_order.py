"""A slide's estimate depends on its spots' positions, not on the order its file lists them in.

On a lattice every site has rings of equidistant spots: a k-d tree keeps some of a ring by input
order, and a Delaunay triangulation picks the diagonal of a square of spots by input order. Real
files list spots in barcode order (Space Ranger) or any order (an AnnData subset or
concatenation), so the same slide used to give values up to 4 % apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import block_sites, make_slide
from napari_stentrans.core.classical import kernel_weights, linear_weights


def _square_grid(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Spots on a square grid (pitch 1) and targets at its half-pitch sites, where rings tie."""
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    source = np.column_stack([c.ravel(), r.ravel()]).astype(np.float64)
    tr, tc = np.meshgrid(np.arange(0, n - 1, 0.5), np.arange(0, n - 1, 0.5), indexing="ij")
    return source, np.column_stack([tc.ravel(), tr.ravel()])


@pytest.mark.parametrize("bandwidth", [None, 0.5, 1.0])
def test_smoothers_give_each_spot_the_same_weight_in_any_order(bandwidth):
    source, target = _square_grid()
    order = np.random.default_rng(0).permutation(len(source))
    build = linear_weights if bandwidth is None else (lambda s, t: kernel_weights(s, t, bandwidth))
    plain = build(source, target).toarray()
    shuffled = build(source[order], target).toarray()
    # column j of the shuffled weights is spot order[j]
    np.testing.assert_allclose(shuffled, plain[:, order], atol=1e-12)
    # a site between two spots weighs them alike, a site at a square's centre its four corners:
    # no ring of equidistant spots is cut, no diagonal preferred
    middle = np.flatnonzero((target[:, 0] == 2.5) & (target[:, 1] == 3.0))[0]
    assert plain[middle, 2 + 3 * 12] == pytest.approx(plain[middle, 3 + 3 * 12], abs=1e-12)
    centre = np.flatnonzero((target[:, 0] == 2.5) & (target[:, 1] == 3.5))[0]
    corners = plain[centre, [2 + 3 * 12, 3 + 3 * 12, 2 + 4 * 12, 3 + 4 * 12]]
    np.testing.assert_allclose(corners, corners[0], atol=1e-12)
    if bandwidth is None:
        np.testing.assert_allclose(corners, 0.25, atol=1e-9)
    # the kernels' rows: every spot as close as the farthest one kept, by symmetry of the grid
    rows, cols = np.nonzero(plain)
    if bandwidth is not None:
        dist = np.hypot(*(source[cols] - target[rows]).T)
        reach = np.zeros(len(target))
        np.maximum.at(reach, rows, dist)
        all_dist = np.hypot(*(source[None, :, :] - target[:, None, :]).transpose(2, 0, 1))
        np.testing.assert_array_equal(
            (plain > 0).sum(axis=1), (all_dist <= reach[:, None] + 1e-9).sum(axis=1)
        )


@pytest.mark.parametrize("kind", ["square", "hex"])
@pytest.mark.parametrize("method", ["default", "linear"])
def test_a_shuffled_slide_is_enhanced_to_the_same_values(kind, method):
    """Fitted and enhanced again in another spot order: the same choice and the same X per site."""
    import napari_stentrans as st
    from napari_stentrans.core.estimators import method_estimator
    from napari_stentrans.core.sites import output_sites
    from napari_stentrans.core.slide import Slide

    r, c = block_sites(kind, 20, 20)
    adata = make_slide(r, c, kind, n_genes=40, seed=1)
    shuffled = adata[np.random.default_rng(7).permutation(adata.n_obs)].copy()
    if method == "default":
        first, second = st.fit(adata, min_detection=0.0), st.fit(shuffled, min_detection=0.0)
        chosen, again = first.describe()["classical"], second.describe()["classical"]
        mixture, mixture_again = chosen.pop("depth_mixture"), again.pop("depth_mixture")
        assert chosen == again  # rank and smoothers
        assert mixture == pytest.approx(mixture_again, rel=1e-6)  # fitted weights, to rounding
        x, y = first.enhance(adata), second.enhance(shuffled)
        # output sites are listed by position: row for row the same site
        np.testing.assert_array_equal(x.obs[["array_row", "array_col"]], y.obs[["array_row", "array_col"]])
        x, y = np.asarray(x.X), np.asarray(y.X)
    else:
        predicted = []
        for data in (adata, shuffled):
            slide = Slide.from_adata(data)
            model = method_estimator("linear", kind).fit(slide)
            predicted.append(model.predict(slide, output_sites(slide), np.arange(40))[0])
        x, y = predicted
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5 * float(np.abs(x).max()))


def test_a_ring_wider_than_the_query_margin_is_kept_whole():
    """A site inside a round gap has its whole rim at one distance: 40 spots, more than the k-d
    tree query returns (k + RING_MARGIN = 25 at 0.4 pitch); every one weighs 1/40."""
    from napari_stentrans.core.classical import RING_MARGIN, _neighbours_for, nearest_sources

    angle = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    rim = 6.0 * np.column_stack([np.cos(angle), np.sin(angle)])
    source = np.vstack([rim, [[20.0, 20.0], [21.0, 20.0]]])  # two spots far off
    target = np.array([[0.0, 0.0], [20.5, 20.0]])
    assert _neighbours_for(0.4) + RING_MARGIN < 40
    for neighbours in (None, nearest_sources(source, target, _neighbours_for(0.4))):
        w = kernel_weights(source, target, 0.4, neighbours=neighbours).toarray()
        np.testing.assert_allclose(w[0, :40], 1 / 40, rtol=1e-12)
        assert w[0, 40:].sum() == 0
        np.testing.assert_allclose(w.sum(axis=1), 1.0)
        assert w[1, 40] == pytest.approx(w[1, 41])  # the other row is left as it was


def test_a_shuffled_slide_trains_on_the_same_pairs():
    """The learned preset's validation regions and dropped blobs are drawn over the spots sorted
    by position: the same slide in another spot order trains to the same losses, epoch by epoch
    (drawn over spot indices, the shuffled slide's losses differed from the first epoch)."""
    import torch

    from helpers import tiny_config
    from napari_stentrans.core.classical import TARGET_SUM
    from napari_stentrans.core.estimators.classical import ClassicalEstimator
    from napari_stentrans.core.slide import as_slide
    from napari_stentrans.core.training import train_network

    r, c = block_sites("hex", 20, 20)
    adata = make_slide(r, c, "hex", n_genes=40, seed=1)
    losses = []
    for data in (adata, adata[np.random.default_rng(7).permutation(adata.n_obs)].copy()):
        torch.manual_seed(0)
        config = tiny_config("hex", epochs=2, calibrate_counts=False)
        slide = as_slide(data)
        idx = slide.training_genes(config.data.n_train_genes, config.data.min_detection)
        values = slide.expression(idx, config.data.normalization, TARGET_SUM)
        classical = ClassicalEstimator(config).fit_model(slide, values=values)
        events = list(train_network(slide, values, config, classical, torch.device("cpu")))
        losses.append([(e.train_loss, e.val_loss) for e in events if e.kind == "epoch"])
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
