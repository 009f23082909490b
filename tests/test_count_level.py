"""Enhanced counts at the measured level: each gene's X sums to its measured counts over the spots.

The estimate is smoothed on log values and turned back into counts by expm1, which runs below the
mean counts (Jensen); :class:`CountCalibration` scales each gene back (docs/design.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from helpers import (
    block_sites,
    fit_network,
    make_slide,
    one_error_line,
    run_cli,
    tiny_config,
    two_layer_slide,
)
from napari_stentrans.core.config import preset
from napari_stentrans.core.metrics import count_level
from napari_stentrans.core.slide import Slide


def _slide_and_mask():
    r, c = block_sites("hex", 18, 30)
    adata = make_slide(r, c, "hex", n_genes=24, seed=4)
    lost = np.hypot(r - 9, (c - 15) * 0.5) <= 2.5  # a disk of spots lost
    return adata, np.column_stack([r[lost], c[lost]])


def _sums(adata, rows):
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    measured = adata.layers["measured"]
    measured = measured.toarray() if sp.issparse(measured) else np.asarray(measured)
    return x[rows].astype(np.float64).sum(axis=0), measured[rows].astype(np.float64).sum(axis=0)


def test_default_x_sums_to_each_genes_measured_counts_and_the_slide_wide_factor_scales_every_site_alike(
    tmp_path,
):
    from napari_stentrans.core.fitting import fit

    adata, lost = _slide_and_mask()
    calibrated = fit(adata, preset("default", "hex", min_detection=0.0), mask=lost, device="cpu")
    slide_wide = fit(
        adata,
        preset("default", "hex", min_detection=0.0, calibration_bandwidth=None),
        mask=lost,
        device="cpu",
    )
    raw_model = fit(
        adata, preset("default", "hex", min_detection=0.0, calibrate_counts=False), mask=lost, device="cpu"
    )
    assert raw_model.params == calibrated.params == slide_wide.params  # calibration chooses nothing
    out, flat, raw = (m.enhance(adata, mask=lost) for m in (calibrated, slide_wide, raw_model))
    measured = (out.obs["kind"] == "measured").to_numpy()
    assert measured.sum() == adata.n_obs - len(lost)
    x_sum, counts_sum = _sums(out, measured)
    np.testing.assert_allclose(x_sum, counts_sum, rtol=1e-4)
    np.testing.assert_allclose(_sums(flat, measured)[0], counts_sum, rtol=1e-4)
    raw_sum, _ = _sums(raw, measured)
    assert np.median(raw_sum / counts_sum) < 0.97  # the back-transformed log runs low
    # the slide-wide factor: one per gene, the same at measured, imputed and new sites
    factor = counts_sum / raw_sum
    np.testing.assert_allclose(flat.X, raw.X * factor[None, :].astype(np.float32), rtol=1e-4, atol=1e-6)
    # the local one varies between sites, and never turns a prediction's sign or zero
    ratio = np.asarray(out.X) / np.maximum(np.asarray(raw.X), 1e-12)
    assert np.median(np.ptp(ratio, axis=0) / np.median(ratio, axis=0)) > 0.05
    assert np.all((np.asarray(out.X) > 0) == (np.asarray(raw.X) > 0))
    assert out.uns["stentrans"]["count_level"].startswith(
        "each gene scaled to its measured counts within about 1 input spot pitch"
    )
    assert flat.uns["stentrans"]["count_level"].startswith("each gene scaled to sum to its measured counts")
    assert raw.uns["stentrans"]["count_level"].startswith("not calibrated")
    # the spots left out of the sums are counted; a slide without any says nothing of them
    held = Slide.from_adata(adata, lost)
    left_out = int(np.sum(~held.usable & (held.depth > 0)))
    assert left_out >= len(lost)
    for note in (out.uns["stentrans"]["count_level"], flat.uns["stentrans"]["count_level"]):
        assert note.endswith(
            f"over the measured spots (the counts of {left_out} lost or near-empty spots left out)"
        )
    whole_slide = Slide.from_adata(adata)  # no mask: only near-empty spots with some counts, if any
    empty = int(np.sum(~whole_slide.usable & (whole_slide.depth > 0)))
    whole = calibrated.enhance(adata, genes=3).uns["stentrans"]["count_level"]
    plural = "s" * (empty != 1)
    assert whole.endswith(
        "over the measured spots"
        + (f" (the counts of {empty} lost or near-empty spot{plural} left out)" if empty else "")
    )
    # the streamed writer scales every gene batch the same way
    calibrated.write(adata, tmp_path / "out.h5ad", mask=lost, batch_size=5)
    import anndata as ad

    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "out.h5ad").X, out.X, rtol=1e-6)


def test_spots_without_counts_add_nothing_to_the_totals_and_are_not_counted_as_left_out():
    """An in-tissue spot with 0 counts and one absent from the matrix give the same note: only
    the counts of lost or near-empty spots are missing from the totals (a user compared the two
    notes of the same slide: "27 lost or empty spots left out" against "2")."""
    from napari_stentrans.core.estimators.base import CountCalibration
    from napari_stentrans.core.sites import output_sites

    adata, _ = _slide_and_mask()
    counts = adata.X.tolil(copy=True) if sp.issparse(adata.X) else np.array(adata.X)
    counts[:3] = 0  # three spots that captured nothing
    adata.X = sp.csr_matrix(counts) if sp.issparse(adata.X) else counts
    slide = Slide.from_adata(adata)
    assert np.sum(~slide.usable) >= 3
    rows = np.flatnonzero(slide.usable)  # any rows: the note reads only the slide
    calibration = CountCalibration(slide, output_sites(slide), rows=rows)
    with_counts = int(np.sum(~slide.usable & (slide.depth > 0)))
    assert calibration.left_out == with_counts
    if with_counts == 0:
        assert "left out" not in calibration.note
    slide.usable[3] = False  # a spot with counts marked lost: its counts are left out
    lost = CountCalibration(slide, output_sites(slide), rows=rows)
    assert lost.left_out == with_counts + 1
    plural = "s" * (with_counts != 0)
    assert lost.note.endswith(f"(the counts of {with_counts + 1} lost or near-empty spot{plural} left out)")


@pytest.mark.parametrize("seed", [5, 6])
def test_the_local_factors_keep_each_genes_level_closer_region_by_region(seed):
    """Two layers (10 of 30 genes five times higher on the right): the smoothed log flattens each
    gene's level difference between them; the local factors bring X's sum over each layer's
    measured spots closer to the measured counts there than one factor per gene does."""
    from napari_stentrans.core.fitting import fit

    adata = two_layer_slide(seed)
    errors = []
    for bandwidth in (None, 1.0):
        model = fit(
            adata, preset("default", "hex", min_detection=0.0, calibration_bandwidth=bandwidth), device="cpu"
        )
        out = model.enhance(adata)
        measured = (out.obs["kind"] == "measured").to_numpy()
        right = out.obs["array_col"].to_numpy() >= 2 * 18  # half-pitch coordinates
        levels = [np.divide(*_sums(out, measured & (right == side))) for side in (False, True)]
        errors.append(np.median(np.abs(np.log(levels))))
    assert errors[1] < 0.85 * errors[0]


def test_the_learned_correction_is_calibrated_on_its_own_prediction_at_the_spots():
    adata, lost = _slide_and_mask()
    model = fit_network(adata, tiny_config("hex", epochs=1), lost)
    assert model.uses_network
    out = model.enhance(adata, mask=lost, device="cpu")
    measured = (out.obs["kind"] == "measured").to_numpy()
    x_sum, counts_sum = _sums(out, measured)
    np.testing.assert_allclose(x_sum, counts_sum, rtol=1e-4)
    raw = fit_network(adata, tiny_config("hex", epochs=1, calibrate_counts=False), lost)
    raw_sum, _ = _sums(raw.enhance(adata, mask=lost, device="cpu"), measured)
    assert not np.allclose(raw_sum, counts_sum, rtol=1e-2)


def test_count_level_is_predicted_over_measured_counts_median_over_genes():
    truth = np.array([[1.0, 0.0, 4.0], [3.0, 0.0, 0.0]])
    assert count_level(truth, truth) == pytest.approx(1.0)
    assert count_level(2.0 * truth, sp.csr_matrix(truth)) == pytest.approx(2.0)
    # genes without measured counts are left out; negative predictions count as 0
    pred = np.array([[0.5, 9.0, -1.0], [1.5, 9.0, 1.0]])
    assert count_level(pred, truth) == pytest.approx(np.median([2.0 / 4.0, 1.0 / 4.0]))
    assert np.isnan(count_level(truth, np.zeros_like(truth)))
    from napari_stentrans.core.metrics import count_levels

    np.testing.assert_allclose(count_levels(pred, truth), [0.5, np.nan, 0.25])  # per gene


def test_evaluate_reports_the_count_level_and_the_default_is_at_the_measured_level():
    from napari_stentrans.core.evaluate import evaluate

    adata, _ = _slide_and_mask()
    report = evaluate(adata, "heldout", methods=("default", "lowrank", "linear"), device="cpu")
    levels = {m: s["count_level"] for m, s in report["methods"].items()}
    for scores in report["methods"].values():  # per gene too, in the order of report["genes"]
        per_gene = np.array(scores["count_levels"], dtype=float)
        assert len(per_gene) == len(report["genes"])
        assert np.nanmedian(per_gene) == pytest.approx(scores["count_level"], abs=1e-4)
    assert abs(levels["default"] - 1.0) < 0.1
    assert abs(levels["linear"] - 1.0) < 0.1  # interpolation of counts keeps their level
    assert levels["lowrank"] < levels["default"] - 0.03  # the previous default, uncalibrated


def test_cli_enhance_writes_uncalibrated_counts_on_request_and_refuses_it_with_a_model(tmp_path, capsys):
    import anndata as ad

    from helpers import write_block_slide

    path = write_block_slide(tmp_path / "slide.h5ad", "hex", 14, 24, n_genes=20, seed=2)
    code, _, err = run_cli(["enhance", str(path), "-o", str(tmp_path / "cal.h5ad"), "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run_cli(
        ["enhance", str(path), "-o", str(tmp_path / "raw.h5ad"), "--no-calibrate-counts", "--quiet"], capsys
    )
    assert code == 0, err
    cal, raw = ad.read_h5ad(tmp_path / "cal.h5ad"), ad.read_h5ad(tmp_path / "raw.h5ad")
    measured = (cal.obs["kind"] == "measured").to_numpy()
    x_cal, counts = _sums(cal, measured)
    x_raw, _ = _sums(raw, measured)
    detected = counts > 0
    np.testing.assert_allclose(x_cal[detected], counts[detected], rtol=1e-4)
    assert np.median(x_raw[detected] / counts[detected]) < 0.97
    assert raw.uns["stentrans"]["count_level"].startswith("not calibrated")
    model = tmp_path / "m.safetensors"
    code, _, err = run_cli(
        ["enhance", str(path), "-o", str(tmp_path / "x.h5ad"), "--save-model", str(model), "--quiet"], capsys
    )
    assert code == 0, err
    code, _, err = run_cli(
        [
            "enhance",
            str(path),
            "-o",
            str(tmp_path / "y.h5ad"),
            "--model",
            str(model),
            "--no-calibrate-counts",
        ],
        capsys,
    )
    assert code == 2 and "--[no-]calibrate-counts/--calibration-bandwidth do not apply" in err
    assert not (tmp_path / "y.h5ad").exists()
    # one factor per gene on request: every site of a gene scaled alike, sums still exact
    code, _, err = run_cli(
        [
            "enhance",
            str(path),
            "-o",
            str(tmp_path / "flat.h5ad"),
            "--calibration-bandwidth",
            "slide",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    flat = ad.read_h5ad(tmp_path / "flat.h5ad")
    np.testing.assert_allclose(_sums(flat, measured)[0][detected], counts[detected], rtol=1e-4)
    unscaled = np.asarray(raw.X)[:, detected]
    shown = unscaled > 1e-2

    def factors(out) -> np.ndarray:
        """Each site's factor over the uncalibrated counts (NaN where those are near 0)."""
        return np.where(shown, np.asarray(out.X)[:, detected] / np.where(shown, unscaled, 1), np.nan)

    ratio = factors(flat)
    spread = (np.nanmax(ratio, axis=0) - np.nanmin(ratio, axis=0)) / np.nanmedian(ratio, axis=0)
    assert np.nanmax(spread) < 1e-3  # one factor per gene
    local = factors(cal)
    assert np.nanmedian(np.nanmax(local, axis=0) / np.nanmin(local, axis=0)) > 1.05
    assert flat.uns["stentrans"]["count_level"].startswith("each gene scaled to sum")
    for extra, why in (
        (
            ["--calibration-bandwidth", "0"],
            "--calibration-bandwidth: 0 is not in (0, 100] input spot pitches",
        ),
        (["--calibration-bandwidth", "wide"], "--calibration-bandwidth: 'wide' is not a number of pitches"),
        (
            ["--calibration-bandwidth", "2", "--no-calibrate-counts"],
            "does not apply with --no-calibrate-counts",
        ),
        (["--calibration-bandwidth", "2", "--preset", "published"], "or the published preset"),
    ):
        code, _, err = run_cli(["enhance", str(path), "-o", str(tmp_path / "z.h5ad"), *extra], capsys)
        assert code == 2 and why in one_error_line(err)
    assert not (tmp_path / "z.h5ad").exists()


def test_a_saved_model_keeps_its_count_calibration_choice(tmp_path):
    import napari_stentrans as st

    adata, lost = _slide_and_mask()
    model = st.fit(adata, mask=lost, calibrate_counts=False, min_detection=0.0)
    model.save(tmp_path / "raw.safetensors")
    loaded = st.load_model(tmp_path / "raw.safetensors")
    assert loaded.config.classical.calibrate_counts is False
    np.testing.assert_array_equal(loaded.enhance(adata, mask=lost).X, model.enhance(adata, mask=lost).X)
    assert st.fit(adata, mask=lost).config.classical.calibrate_counts is True
    # the local factors' neighbourhood and prior travel with the model too
    flat = st.fit(adata, mask=lost, calibration_bandwidth=None, calibration_prior=20.0, min_detection=0.0)
    flat.save(tmp_path / "flat.safetensors")
    loaded = st.load_model(tmp_path / "flat.safetensors").config.classical
    assert (loaded.calibration_bandwidth, loaded.calibration_prior) == (None, 20.0)


def test_a_model_saved_before_the_local_factors_keeps_the_slide_wide_factor_it_wrote(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    import napari_stentrans as st
    from napari_stentrans.core.checkpoint import METADATA_KEY

    adata, lost = _slide_and_mask()
    st.fit(adata, mask=lost, min_detection=0.0).save(tmp_path / "new.safetensors")
    with safe_open(str(tmp_path / "new.safetensors"), framework="np") as f:
        description = json.loads(f.metadata()[METADATA_KEY])
    for key in ("calibration_bandwidth", "calibration_prior"):  # as written on 2026-12-01, morning
        del description["config"]["classical"][key]
    save_file(
        load_file(str(tmp_path / "new.safetensors")),
        str(tmp_path / "old.safetensors"),
        metadata={METADATA_KEY: json.dumps(description)},
    )
    old = st.load_model(tmp_path / "old.safetensors")
    assert old.config.classical.calibration_bandwidth is None
    expected = st.fit(adata, mask=lost, min_detection=0.0, calibration_bandwidth=None).enhance(
        adata, mask=lost
    )
    np.testing.assert_allclose(old.enhance(adata, mask=lost).X, expected.X, rtol=1e-6)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_a_prediction_at_other_sites_gets_the_factors_enhance_gets_from_its_own_spots(order):
    """Evaluation predicts held-out sites only: the factors then come from one more prediction
    at the usable spots, and must equal those ``enhance`` takes from its measured rows. Real
    slides list their spots in any order (barcode order), unlike the output sites: each spot's
    measured counts must meet its own prediction."""
    from napari_stentrans.core.estimators.base import spot_sites, usable_spot_rows
    from napari_stentrans.core.fitting import fit
    from napari_stentrans.core.sites import output_sites
    from napari_stentrans.core.slide import Slide

    adata, lost = _slide_and_mask()
    if order == "shuffled":
        adata = adata[np.random.default_rng(3).permutation(adata.n_obs)].copy()
    model = fit(adata, preset("default", "hex", min_detection=0.0), mask=lost, device="cpu")
    slide = Slide.from_adata(adata, lost)
    sites = output_sites(slide)
    genes = np.arange(len(slide.genes))
    rows = usable_spot_rows(slide, sites)
    np.testing.assert_array_equal(sites.spot[rows], np.flatnonzero(slide.usable))  # the spots' order
    everywhere, _ = model.predict(slide, sites, genes, device="cpu")
    new = np.flatnonzero(sites.kind != "measured")
    subset = type(sites)(**{f: getattr(sites, f)[new] for f in sites.__dataclass_fields__})
    assert usable_spot_rows(slide, subset) is None
    elsewhere, _ = model.predict(slide, subset, genes, device="cpu")
    np.testing.assert_allclose(elsewhere, everywhere[new], rtol=1e-4, atol=1e-6)
    assert len(spot_sites(slide)) == slide.n_usable


def test_a_raw_count_model_writes_no_negative_counts_and_says_it_is_not_calibrated(tmp_path):
    """The published recipe predicts raw counts, negative ones too: X holds them clipped at 0."""
    from napari_stentrans.core.fitting import fit
    from napari_stentrans.core.sites import output_sites
    from napari_stentrans.core.slide import Slide

    adata, lost = _slide_and_mask()
    options = dict(epochs=1, depth=1, heads=2, patch_size=2, embed_dim=16, batch_size=8, min_detection=0.0)
    model = fit(adata, preset("published", "hex", **options), mask=lost, device="cpu")
    slide = Slide.from_adata(adata, lost)
    raw, _ = model.predict(slide, output_sites(slide), np.arange(len(slide.genes)), device="cpu")
    assert (raw < 0).any()  # what the untrained recipe predicts
    out = model.enhance(adata, mask=lost, device="cpu")
    x = np.asarray(out.X)
    assert x.min() >= 0.0
    np.testing.assert_allclose(x, np.clip(raw, 0, None), rtol=1e-6)
    assert out.uns["stentrans"]["count_level"].startswith("the network's raw counts")
    streamed = model.write(adata, tmp_path / "published.h5ad", mask=lost, device="cpu")
    import anndata as ad

    assert np.asarray(ad.read_h5ad(streamed.path).X).min() >= 0.0
