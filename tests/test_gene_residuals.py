"""The default keeps each gene's own pattern: low-rank structure as a prior plus shrunk gene residuals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from helpers import block_sites, make_slide
from napari_stentrans.core.classical import SAME_AS_SCORES, ClassicalParams, noise_factor, residual_shrinkage
from napari_stentrans.core.config import preset
from napari_stentrans.core.errors import ConfigError
from napari_stentrans.core.lattice import Lattice


def test_shrinkage_keeps_spatial_signal_and_drops_noise():
    moran = np.array([0.0, 0.3, 0.6, -0.2, np.nan])
    c = np.array([1.0, 0.25, 0.0])  # a measured spot, an average of four, an average of many
    w = residual_shrinkage(moran, c, kappa=0.6)
    assert w.shape == (3, 5)
    f = np.array([0.0, 0.5, 1.0, 0.0, 0.0])  # signal share: Moran's I / kappa, clipped to [0, 1]
    np.testing.assert_allclose(w[0], f, atol=1e-9)  # at a measured spot the weight is the share
    np.testing.assert_allclose(w[1, 1], 0.5 / (0.5 + 0.5 * 0.25), rtol=1e-9)  # Wiener weight
    np.testing.assert_allclose(w[:, 2], 1.0, atol=1e-9)  # pure signal survives everywhere
    np.testing.assert_allclose(w[:, [0, 3, 4]], 0.0, atol=1e-9)  # noise, anti-correlation, constant
    assert np.all(np.diff(w[:, 1]) > 0)  # the more a smoother averages, the more it keeps
    np.testing.assert_array_equal(residual_shrinkage(moran, c, kappa=0.0), np.ones((3, 5)))
    weights = sp.csr_matrix(np.array([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]))
    np.testing.assert_allclose(noise_factor(weights), [1.0, 0.5, 0.38])


def _slide_with_own_patterns(n_own: int = 12, seed: int = 3):
    """Shared structure for 24 genes, and ``n_own`` genes each with a blob of its own."""
    r, c = block_sites("hex", 30, 52)
    shared = make_slide(r, c, "hex", n_genes=24, seed=seed)
    lattice = Lattice("hex")
    xy = lattice.physical(r, c) / lattice.pitch_um
    rng = np.random.default_rng(seed)
    centres = xy[rng.choice(len(xy), n_own, replace=False)]
    dist2 = ((xy[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    own = rng.poisson(2.0 + 30.0 * np.exp(-dist2 / (2 * 3.0**2))).astype(np.float32)
    import anndata as ad
    import pandas as pd

    extra = ad.AnnData(
        X=sp.csr_matrix(own), obs=shared.obs, var=pd.DataFrame(index=[f"OWN{g}" for g in range(n_own)])
    )
    adata = ad.concat([shared, extra], axis=1, merge="first", uns_merge="first")
    adata.obsm["spatial"] = shared.obsm["spatial"]
    adata.uns["stentrans_lattice"] = shared.uns["stentrans_lattice"]
    return adata


def test_default_keeps_genes_own_patterns_that_the_low_rank_estimate_erases():
    from napari_stentrans.core.evaluate import evaluate

    adata = _slide_with_own_patterns()
    report = evaluate(adata, "heldout", methods=("default", "lowrank", "linear"), device="cpu")
    new, old, linear = (report["methods"][m] for m in ("default", "lowrank", "linear"))
    assert new["gene_specific_r"] > old["gene_specific_r"] + 0.08  # a third of the genes have their own blob
    assert new["gene_specific_r"] >= linear["gene_specific_r"] - 0.02
    assert new["coexpression_r"] > old["coexpression_r"]
    assert new["effective_rank"] > old["effective_rank"]
    assert new["median_pcc"] >= old["median_pcc"] - 0.02  # per-gene r on counts is kept


def test_chosen_residuals_are_recorded_and_read_back():
    from napari_stentrans.core.fitting import fit

    adata = _slide_with_own_patterns()
    model = fit(adata, preset("default", "hex", min_detection=0.0), device="cpu")
    params = model.params
    assert params.residual == 1.0  # kappa is fixed (RESIDUAL_GRID); only the rank is chosen
    assert "gene residuals" in params.summary()
    assert ClassicalParams.from_description(params.describe()) == params
    old = {"rank": 2, "bandwidth": "linear", "depth_bandwidth": 0.5}  # stored before gene residuals
    assert ClassicalParams.from_description(old).residual is None
    enhanced = model.enhance(adata)
    assert enhanced.uns["stentrans"]["classical"]["residual"] == params.residual


def test_a_correction_network_corrects_the_defaults_own_estimate():
    """The transformer preset and a trained default correct the default's estimate (gene
    residuals included), fitted once; a low-rank base is still a choice."""
    from napari_stentrans.core.estimators.learned import corrects_default

    assert preset("transformer", "hex").classical.gene_residuals == "shrunk"
    trained = preset("default", "hex", epochs=3)
    assert trained.learns and trained.classical.gene_residuals == "shrunk"
    assert corrects_default(trained) and corrects_default(preset("transformer", "square", seed=4))
    low_rank = preset("transformer", "hex", gene_residuals="none")
    assert low_rank.learns and not corrects_default(low_rank)
    assert not corrects_default(preset("transformer", "hex", n_train_genes=100))


def test_keep_measured_puts_the_measured_counts_in_x_and_estimates_elsewhere(tmp_path, capsys):
    from napari_stentrans.core.fitting import fit

    r, c = block_sites("hex", 14, 24)
    adata = make_slide(r, c, "hex", n_genes=20, seed=2)
    lost = np.column_stack([r[:3], c[:3]])
    model = fit(adata, preset("default", "hex", min_detection=0.0), mask=lost, device="cpu")
    estimate = model.enhance(adata, mask=lost)
    kept = model.enhance(adata, mask=lost, measured="keep")
    measured = (kept.obs["kind"] == "measured").to_numpy()
    assert measured.sum() == len(r) - 3 and (kept.obs["kind"] == "imputed").sum() == 3
    np.testing.assert_array_equal(kept.X[measured], kept.layers["measured"][measured].toarray())
    np.testing.assert_array_equal(kept.X[~measured], estimate.X[~measured])
    assert not np.allclose(estimate.X[measured], kept.X[measured])  # the default re-estimates them
    assert kept.uns["stentrans"]["measured_sites"] == "measured counts kept in X"
    # the pattern check judges the model's estimate, not the measured counts put in its place
    assert kept.uns["stentrans"]["patterns"] == estimate.uns["stentrans"]["patterns"]
    model.write(adata, tmp_path / "kept.h5ad", mask=lost, measured="keep")
    import anndata as ad

    streamed = ad.read_h5ad(tmp_path / "kept.h5ad")
    np.testing.assert_array_equal(streamed.X, kept.X)
    patterns = estimate.uns["stentrans"]["patterns"]
    assert streamed.uns["stentrans"]["patterns"]["effective_rank"] == pytest.approx(
        patterns["effective_rank"]
    )
    with pytest.raises(ConfigError, match="measured: 'raw' is not allowed"):
        model.enhance(adata, measured="raw")
    # `info` says what X holds: it said "predictions, not counts" of a kept file too
    from napari_stentrans.cli import main

    for name, holds in (
        ("kept", "the measured counts at measured sites (--keep-measured)"),
        ("est", "predictions"),
    ):
        if name == "est":
            model.write(adata, tmp_path / "est.h5ad", mask=lost)
        assert main(["info", str(tmp_path / f"{name}.h5ad")]) == 0
        assert f"; X holds {holds}" in capsys.readouterr().out


def test_the_rank_is_chosen_with_fixed_shrinkage_and_a_grid_still_chooses_kappa():
    """The default offers one kappa (choosing it on the pairs followed their noise); callers may offer more."""
    from napari_stentrans.core.classical import RESIDUAL_GRID, select_gene_residuals
    from napari_stentrans.core.slide import Slide

    slide = Slide.from_adata(_slide_with_own_patterns())
    values = slide.expression(np.arange(len(slide.genes)))
    positions = slide.positions(slide.usable)
    cosets = slide.lattice.coset(slide.row[slide.usable], slide.col[slide.usable])
    (rank, kappa, smoother), table = select_gene_residuals(values, positions, cosets, None)
    assert RESIDUAL_GRID == (1.0,) and kappa == 1.0 and smoother == SAME_AS_SCORES
    assert {k for _, k, _ in table} == {1.0} and len(table) > 1  # several ranks scored
    (_, kappa, _), table = select_gene_residuals(values, positions, cosets, None, residuals=(None, 1.0, 0.0))
    assert {k for _, k, _ in table} == {None, 1.0, 0.0} and kappa in (None, 1.0, 0.0)


def test_the_residuals_smoother_is_chosen_and_changes_the_estimate_only_through_the_residual():
    """The rank and the residuals' own smoother (the scores', linear, 0.5 pitch) are chosen on
    same-scale dropout pairs; the smoother acts on the gene residual alone."""
    from dataclasses import replace

    from napari_stentrans.core.classical import (
        RESIDUAL_SMOOTHER_GRID,
        dropout_pairs,
        select_gene_residuals,
    )
    from napari_stentrans.core.fitting import fit
    from napari_stentrans.core.slide import Slide

    adata = _slide_with_own_patterns()
    slide = Slide.from_adata(adata)
    values = slide.expression(np.arange(len(slide.genes)))
    positions = slide.positions(slide.usable)
    pairs = dropout_pairs(len(positions), np.random.default_rng(0))
    assert len(pairs) == 8 and all((~keep).sum() == int(0.25 * len(positions)) for keep in pairs)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(pairs, dropout_pairs(len(positions), np.random.default_rng(0)), strict=True)
    )
    choice, table = select_gene_residuals(
        values, positions, pairs, 1.0, scale=1.0, residual_bandwidths=RESIDUAL_SMOOTHER_GRID
    )
    assert {h for _, _, h in table} == set(RESIDUAL_SMOOTHER_GRID) and choice in table
    model = fit(adata, preset("default", "hex", min_detection=0.0), device="cpu")
    params = model.params
    assert params.residual_bandwidth in RESIDUAL_SMOOTHER_GRID
    assert ClassicalParams.from_description(params.describe()) == params

    # the same model with each residual smoother: the estimates differ where the residual does;
    # without residuals the smoother changes nothing
    def enhanced(params_):
        x = replace(model, params=replace(params_, holes=None), _bases={}).enhance(adata).X
        return x.toarray() if sp.issparse(x) else np.asarray(x)

    assert not np.allclose(
        enhanced(replace(params, residual_bandwidth=SAME_AS_SCORES)),
        enhanced(replace(params, residual_bandwidth=None)),
    )
    plain = replace(params, residual=None)
    np.testing.assert_array_equal(enhanced(plain), enhanced(replace(plain, residual_bandwidth=None)))
