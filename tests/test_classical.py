"""Normalisation inverse, low-rank basis, kernel weights and the rank/bandwidth choice."""

from __future__ import annotations

import numpy as np
import pytest

from napari_stentrans.core.classical import (
    ClassicalParams,
    LowRankBasis,
    denormalize,
    kernel_weights,
    normalize,
    select_classical_params,
)


def test_normalisation_has_an_exact_inverse_given_depth():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(50, 20)).astype(np.float64)
    depth = counts.sum(1) + 5
    back = denormalize(normalize(counts, depth), depth)
    np.testing.assert_allclose(back, counts, rtol=1e-5, atol=1e-4)


def test_randomized_basis_matches_exact_svd_subspace():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(300, 6)) * np.array([10, 8, 6, 4, 3, 2])
    values = latent @ rng.normal(size=(6, 400)) + rng.normal(0, 0.5, size=(300, 400))
    basis = LowRankBasis.fit(values, 6)
    _, _, vt = np.linalg.svd(values - values.mean(0), full_matrices=False)
    overlap = np.linalg.svd(basis.components.T @ vt[:6].T, compute_uv=False)
    assert overlap.min() > 0.999  # same 6-dimensional subspace
    np.testing.assert_allclose(basis.components.T @ basis.components, np.eye(6), atol=1e-5)
    again = LowRankBasis.fit(values, 6)
    np.testing.assert_array_equal(basis.components, again.components)  # seeded


def test_kernel_weights_are_normalised_and_fill_far_targets():
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    dst = np.array([[0.0, 0.0], [50.0, 50.0]])
    w = kernel_weights(src, dst, bandwidth=0.5).toarray()
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert w[0, 0] == pytest.approx(1 / (1 + 2 * np.exp(-2)))  # neighbours at 1 pitch weigh e^-2
    assert np.isfinite(w).all() and w[1].max() > 0  # far from every source: still an estimate


def test_classical_predictor_reproduces_a_smooth_rank_one_field():
    """Seen: the even coset of a 20 x 20 square grid; predicted: every other site, at half pitch."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from napari_stentrans.core.config import ClassicalConfig, Config
    from napari_stentrans.core.estimators.classical import ClassicalModel, ClassicalPredictor
    from napari_stentrans.core.sites import sites_at
    from napari_stentrans.core.slide import Slide

    total = 1e8  # every spot's depth: a balancing gene makes it exact, so normalised = log1p(1e4 c / D)
    r, c = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    r, c = r.ravel(), c.ravel()
    field = np.sin(c / 6.0)
    truth = 2.0 + np.outer(field, np.linspace(0.5, 1.5, 10))  # rank one around the mean
    counts = np.rint(np.expm1(truth) * total / 1e4)
    counts = np.column_stack([counts, total - counts.sum(axis=1)])
    seen = (r % 2 == 0) & (c % 2 == 0)
    adata = ad.AnnData(
        X=sp.csr_matrix(counts[seen].astype(np.float32)),
        obs=pd.DataFrame(
            {"array_row": r[seen] // 2, "array_col": c[seen] // 2}, index=[f"s{i}" for i in range(100)]
        ),
        var=pd.DataFrame(index=[f"G{g}" for g in range(11)]),
    )
    adata.uns["stentrans_lattice"] = {"kind": "square", "pitch_um": 400.0, "source": "test"}
    slide = Slide.from_adata(adata)
    model = ClassicalModel(
        config=Config(classical=ClassicalConfig(basis_genes="given")),
        params=ClassicalParams(rank=1, bandwidth=0.5, depth_bandwidth=None),
        lattice_kind="square",
        basis_genes=[f"G{g}" for g in range(10)],
        slide_fingerprint=slide.fingerprint,
    )
    sites = sites_at(slide, r[~seen], c[~seen])
    predictor = ClassicalPredictor(model, slide, sites)
    est = predictor.normalised(slide.expression(np.arange(10)))
    interior = (r[~seen] >= 2) & (r[~seen] <= 16) & (c[~seen] >= 2) & (c[~seen] <= 16)  # no extrapolation
    assert np.abs(est - truth[~seen])[interior].max() < 0.05
    np.testing.assert_allclose(predictor.depth, total, rtol=1e-6)  # constant depth, smoothed exactly
    counts_pred = predictor.predict_counts(np.arange(10))
    np.testing.assert_allclose(np.log1p(counts_pred / total * 1e4), np.clip(est, 0, None), atol=1e-4)


def test_selection_maximises_median_gene_correlation_at_the_targets():
    rng = np.random.default_rng(2)
    xy = np.stack(np.meshgrid(np.arange(16.0), np.arange(16.0)), -1).reshape(-1, 2)
    values = (np.sin(xy[:, :1] / 4) @ rng.normal(size=(1, 30)) + rng.normal(0, 0.3, (256, 30))).astype(
        np.float32
    )
    keep = (xy[:, 0] % 2 == 0) & (xy[:, 1] % 2 == 0)
    log_depth = np.log(1000 + 300 * np.cos(xy[:, 1] / 5))
    params, scores = select_classical_params(
        values, xy, keep, ranks=(1, 3), bandwidths=(0.7, 1.4), log_depth=log_depth
    )
    basis = LowRankBasis.fit(values[keep], 3)
    for (r, h), score in scores.items():
        w = kernel_weights(xy[keep] / 2, xy[~keep] / 2, h)
        pred = (w @ basis.scores[:, :r]) @ basis.components[:, :r].T + basis.mean
        per_gene = [np.corrcoef(pred[:, g], values[~keep][:, g])[0, 1] for g in range(values.shape[1])]
        assert score == pytest.approx(float(np.median(per_gene)), abs=1e-5)
    assert scores[(params.rank, params.bandwidth)] == max(scores.values())
    assert params.depth_bandwidth in (None, 0.3, 0.5, 0.7, 1.0, 1.4, 2.0)


def test_linear_weights_equal_griddata_linear():
    from scipy.interpolate import griddata

    from napari_stentrans.core.classical import linear_weights

    rng = np.random.default_rng(4)
    src = rng.uniform(0, 10, size=(60, 2))
    dst = rng.uniform(2, 8, size=(40, 2))
    values = rng.normal(size=(60, 3))
    w = linear_weights(src, dst)
    expected = griddata(src, values, dst, method="linear")
    inside = ~np.isnan(expected[:, 0])
    np.testing.assert_allclose((w @ values)[inside], expected[inside], atol=1e-9)
    np.testing.assert_allclose(np.asarray(w.sum(axis=1)).ravel(), 1.0)  # outside the hull: kernel rows


def test_choice_averages_the_four_coset_pairs():
    from napari_stentrans.core.lattice import Lattice

    rng = np.random.default_rng(5)
    r, c = np.meshgrid(np.arange(14), np.arange(14), indexing="ij")
    r, c = r.ravel(), c.ravel()
    xy = np.column_stack([c, r]).astype(float)
    values = (np.cos(xy[:, :1] / 3) @ rng.normal(size=(1, 20)) + rng.normal(0, 0.4, (len(r), 20))).astype(
        np.float32
    )
    cosets = Lattice("square").coset(r, c)
    grid = dict(ranks=(1, 2), bandwidths=(None, 0.7))
    _, combined = select_classical_params(values, xy, cosets, **grid)
    singles = [select_classical_params(values, xy, cosets == k, **grid)[1] for k in range(4)]
    for key, score in combined.items():
        assert score == pytest.approx(np.mean([s[key] for s in singles]))


def test_hole_pairs_drop_compact_regions_of_the_given_sizes():
    from napari_stentrans.core.classical import hole_pairs

    r, c = np.meshgrid(np.arange(30), np.arange(30), indexing="ij")
    positions = np.column_stack([r.ravel(), c.ravel()]).astype(float)
    pairs = hole_pairs(positions, np.array([40, 9, 1]), np.random.default_rng(0), n_pairs=5)
    assert len(pairs) == 5
    for keep in pairs:
        dropped = positions[~keep]
        assert len(dropped) == 50  # 40 + 9 + 1 sites, regions may touch but never overlap
    again = hole_pairs(positions, np.array([40, 9, 1]), np.random.default_rng(0), n_pairs=5)
    assert all(np.array_equal(a, b) for a, b in zip(pairs, again, strict=True))
    # one region of 40 sites is a disk: no dropped site farther than ~sqrt(40 / pi) + 1 from its centroid
    (single,) = hole_pairs(positions, np.array([40]), np.random.default_rng(3), n_pairs=1)
    gap = positions[~single]
    assert np.linalg.norm(gap - gap.mean(axis=0), axis=1).max() < np.sqrt(40 / np.pi) + 1.5
    # never more than 30 % of the sites
    (capped,) = hole_pairs(positions, np.array([800]), np.random.default_rng(1), n_pairs=1)
    assert (~capped).sum() == int(0.3 * len(positions))


def test_hole_parameters_survive_describe_round_trip(tmp_path):
    holes = ClassicalParams(3, 1.4, None, depth_mixture=((None, 0.25), (2.0, 0.75)))
    params = ClassicalParams(rank=2, bandwidth=None, depth_bandwidth=0.5, holes=holes)
    assert ClassicalParams.from_description(params.describe()) == params
    assert params.for_holes == holes
    # as stored in an enhanced slide's ``uns``
    import anndata as ad

    adata = ad.AnnData(np.zeros((1, 1), dtype=np.float32), uns={"classical": params.describe()})
    adata.write_h5ad(tmp_path / "x.h5ad")
    assert ClassicalParams.from_description(ad.read_h5ad(tmp_path / "x.h5ad").uns["classical"]) == params
    assert ClassicalParams(2, None, None).for_holes == ClassicalParams(2, None, None)


def test_stacking_recovers_convex_weights_and_never_leaves_the_simplex():
    from napari_stentrans.core.classical import stack_weights

    rng = np.random.default_rng(6)
    truth = rng.normal(8.0, 1.0, 400)
    noisy = truth[:, None] + rng.normal(0, [0.5, 0.5, 2.0], (400, 3))  # two good, one poor candidate
    weights = stack_weights(noisy, truth)
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0)
    # independent errors of equal size: equal weights; the poor one (16x the variance) gets ~1/33
    np.testing.assert_allclose(weights, [16 / 33, 16 / 33, 1 / 33], atol=0.04)
    # a candidate that is the truth takes all the weight, even next to a scaled copy of it
    exact = stack_weights(np.column_stack([truth, 2 * truth, noisy[:, 2]]), truth)
    np.testing.assert_allclose(exact, [1, 0, 0], atol=1e-6)


def test_stacked_depth_smoother_is_the_weighted_sum_of_its_members():
    rng = np.random.default_rng(7)
    xy = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2)
    keep = (xy[:, 0] % 2 == 0) & (xy[:, 1] % 2 == 0)
    log_depth = np.log(1000 + 400 * np.cos(xy[:, 0] / 4) * np.sin(xy[:, 1] / 5)) + rng.normal(0, 0.05, 400)
    values = rng.normal(size=(400, 8)).astype(np.float32)
    params, _ = select_classical_params(
        values, xy, keep, ranks=(1,), bandwidths=(None,), log_depth=log_depth, depth_choice="stack"
    )
    assert params.depth_mixture and sum(w for _, w in params.depth_mixture) == pytest.approx(1.0)
    assert params.depth_bandwidth == max(params.depth_mixture, key=lambda m: m[1])[0]
    src, dst = xy[keep] / 2, xy[~keep] / 2
    from napari_stentrans.core.classical import smoothing_weights

    expected = sum(w * (smoothing_weights(src, dst, h) @ log_depth[keep]) for h, w in params.depth_mixture)
    np.testing.assert_allclose(params.smooth_log_depth(src, dst, log_depth[keep]), expected, rtol=1e-10)
    flat = params.smooth_log_depth(src, dst, np.full(keep.sum(), 7.0))
    np.testing.assert_allclose(flat, 7.0)  # still an average: a constant depth stays constant
    # "best" keeps one smoother, the one with the highest r of log depth
    best, _ = select_classical_params(values, xy, keep, ranks=(1,), bandwidths=(None,), log_depth=log_depth)
    assert best.depth_mixture == ()


@pytest.mark.parametrize("bandwidth", [None, 0.5, 2.0])
def test_smoothing_block_by_block_equals_the_whole_weight_matrix(bandwidth):
    from napari_stentrans.core.classical import smooth, smoothing_weights

    rng = np.random.default_rng(8)
    src = rng.uniform(0, 20, size=(300, 2))
    dst = rng.uniform(-2, 22, size=(1000, 2))  # some targets outside the sources' hull
    values = rng.normal(size=(300, 3)).astype(np.float32)
    whole = smoothing_weights(src, dst, bandwidth) @ values
    np.testing.assert_allclose(smooth(src, dst, bandwidth, values, chunk=97), whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(smooth(src, dst, bandwidth, values[:, 0], chunk=97), whole[:, 0], atol=1e-12)


def test_the_choice_runs_with_one_blas_thread(monkeypatch):
    """Many small products: with the default BLAS threads a loaded machine oversubscribes its cores."""
    from threadpoolctl import threadpool_info

    from helpers import block_sites, make_slide
    from napari_stentrans.core.config import Config
    from napari_stentrans.core.estimators import classical as estimator_module
    from napari_stentrans.core.slide import Slide

    seen = []
    real = estimator_module.classical_params_steps

    def spy(*args, **kwargs):  # the choice runs pair by pair: the thread count of each stretch
        steps = real(*args, **kwargs)
        while True:
            seen.append([lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"])
            try:
                item = next(steps)
            except StopIteration as end:
                return end.value
            yield item

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    monkeypatch.setattr(estimator_module, "classical_params_steps", spy)
    r, c = block_sites("hex", 10, 16)
    slide = Slide.from_adata(make_slide(r, c, "hex", n_genes=12))
    estimator_module.choose_params(slide, slide.expression(np.arange(12)), Config())
    assert len(seen) >= 5 and all(threads and set(threads) == {1} for threads in seen)
    # released after each stretch: a consumer of the fit's events keeps its own BLAS threads
    assert blas_threads() == before
