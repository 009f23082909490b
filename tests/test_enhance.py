"""Enhancement on hand-built lattices: output kinds, coordinates, barcodes, lost spots, checkpoints."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from helpers import TINY_OPTIONS, block_sites, fit_cpu, fit_network, make_slide, tiny_config
from napari_stentrans.core.checkpoint import CheckpointError, load_model, save_model
from napari_stentrans.core.fitting import enhance
from napari_stentrans.core.lattice import Lattice


def _without(rows, cols, site):
    keep = ~((rows == site[0]) & (cols == site[1]))
    return rows[keep], cols[keep]


@pytest.fixture(scope="module")
def square_case():
    r, c = _without(*block_sites("square", 6, 6), (3, 3))  # a hole in the middle
    adata = make_slide(r, c, "square", n_genes=20)
    model = fit_network(adata, tiny_config("square", restore_best=False))  # the network runs
    return adata, model


def test_square_output_kinds_coordinates_and_barcodes(square_case):
    adata, model = square_case
    out = model.enhance(adata, device="cpu")
    kinds = out.obs["kind"].value_counts()
    # 35 measured, the enclosed hole imputed, and on the filled 6 x 6 block 30 + 30 edge
    # midpoints plus 25 cell centres
    assert (kinds["measured"], kinds["imputed"], kinds["new"]) == (35, 1, 85)
    assert not out.obs[["array_row", "array_col"]].duplicated().any()
    measured = out.obs[out.obs["kind"] == "measured"]
    np.testing.assert_array_equal(measured["barcode"], measured.index)
    src = adata.obs.loc[measured.index]
    np.testing.assert_array_equal(measured["array_row"], 2 * src["array_row"])
    np.testing.assert_array_equal(measured["array_col"], 2 * src["array_col"])
    imputed = out.obs[out.obs["kind"] == "imputed"]
    assert (imputed["array_row"].item(), imputed["array_col"].item(), imputed["barcode"].isna().item()) == (
        6,
        6,
        True,
    )
    new = out.obs[out.obs["kind"] == "new"]
    assert new["barcode"].isna().all()  # missing, not "" (as the carried annotations are)
    assert ((new["array_row"] % 2 == 1) | (new["array_col"] % 2 == 1)).all()
    assert new["array_row"].between(0, 10).all() and new["array_col"].between(0, 10).all()


def test_output_positions_in_the_input_image_pixels(square_case):
    adata, model = square_case
    out = model.enhance(adata, device="cpu")
    measured = out.obs["kind"] == "measured"
    np.testing.assert_allclose(
        out.obsm["spatial"][measured.to_numpy()],
        adata.obsm["spatial"][adata.obs_names.get_indexer(out.obs_names[measured])],
    )
    # make_slide: spatial = physical / pitch * 10 + 5, so half-pitch site (R, C) is at (5C + 5, 5R + 5)
    expected = np.column_stack([out.obs["array_col"] * 5.0 + 5, out.obs["array_row"] * 5.0 + 5])
    np.testing.assert_allclose(out.obsm["spatial"], expected, atol=1e-9)
    np.testing.assert_allclose(out.obsm["spatial_um"] / 100.0, (expected - 5) / 10.0 * 2.0, atol=1e-9)


def test_measured_spots_keep_their_image_positions_and_new_sites_lie_between_theirs():
    """Spot centres found on an image deviate from the lattice's affine map (legacy ST: up to a
    quarter of the pitch): a measured or lost spot keeps its own position in the output, a new
    site lies midway between the real positions of the two spots it lies between, and a hole
    enclosed by spots takes its neighbours' offsets (a user found her2st C1's measured spots
    moved by up to 68 px of a 269 px pitch)."""
    from scipy.spatial import Delaunay, cKDTree

    from napari_stentrans.core.config import preset
    from napari_stentrans.core.fitting import fit

    r, c = block_sites("hex", 10, 14)
    r, c = _without(r, c, (4, 8))  # a hole enclosed by spots: an imputed site
    adata = make_slide(r, c, "hex", n_genes=8, seed=3)
    jitter = np.random.default_rng(0).normal(0.0, 2.0, size=(adata.n_obs, 2))  # pitch: 10 px
    adata.obsm["spatial"] = adata.obsm["spatial"] + jitter
    lost = np.array([[r[20], c[20]]])
    model = fit(adata, preset("default", "hex"), mask=lost, device="cpu")
    out = model.enhance(adata, mask=lost, genes=2)
    kind = out.obs["kind"].to_numpy()
    spots = out.obs["barcode"].notna().to_numpy()
    assert set(kind[spots]) == {"measured", "imputed"}  # the lost spot too
    rows = adata.obs_names.get_indexer(out.obs["barcode"][spots].astype(str))
    np.testing.assert_array_equal(out.obsm["spatial"][spots], adata.obsm["spatial"][rows])
    # every new site midway between the real positions of the two spots 0.5 pitch away
    half = np.column_stack([out.obs["array_row"], out.obs["array_col"]]) / 2.0
    lattice_xy = Lattice("hex").physical(half[:, 0], half[:, 1]) / 100.0
    tree = cKDTree(Lattice("hex").physical(r, c) / 100.0)
    new = np.flatnonzero(kind == "new")
    pairs = [tree.query_ball_point(lattice_xy[i], 0.51) for i in new]
    between = np.array([len(p) == 2 for p in pairs])
    assert between.sum() > 0.8 * len(new)
    expected = np.array(
        [adata.obsm["spatial"][p].mean(axis=0) for p, b in zip(pairs, between, strict=True) if b]
    )
    np.testing.assert_allclose(out.obsm["spatial"][new[between]], expected, atol=1e-6)
    # the hole: the lattice's map plus a mean of its neighbours' offsets from it
    hole = np.flatnonzero((kind == "imputed") & ~spots)
    assert len(hole) == 1
    affine = np.column_stack([r, c, np.ones(len(r))])
    coef, *_ = np.linalg.lstsq(affine, adata.obsm["spatial"], rcond=None)
    around = tree.query_ball_point(lattice_xy[hole[0]], 1.01)
    assert len(around) == 6
    offsets = adata.obsm["spatial"][around] - affine[around] @ coef
    applied = out.obsm["spatial"][hole[0]] - np.array([4.0, 8.0, 1.0]) @ coef
    assert np.linalg.norm(applied) > 1e-3  # not the map alone
    assert Delaunay(offsets).find_simplex(applied) >= 0  # inside the hull of its neighbours' offsets


def test_output_values_layers_and_provenance(square_case):
    adata, model = square_case
    out = model.enhance(adata, genes=["G3", "G1"], device="cpu")
    assert list(out.var_names) == ["G3", "G1"]  # in the order asked
    assert np.isfinite(out.X).all() and out.X.min() >= 0
    measured = (out.obs["kind"] == "measured").to_numpy()
    rows = adata.obs_names.get_indexer(out.obs_names[measured])
    np.testing.assert_array_equal(
        out.layers["measured"][measured].toarray(), adata[rows, ["G3", "G1"]].X.toarray()
    )
    assert out.layers["measured"][~measured].nnz == 0
    info = out.uns["stentrans"]
    assert info["lattice"] == "square" and info["pitch_um"] == 100.0 and info["preset"] == "transformer"
    assert "history" in info and len(info["history"]["val_loss"]) == 3
    assert info["classical_choice"] == "chosen on this slide" and info["classical"]["rank"] >= 1
    assert info["config"]["optim"]["epochs"] == 2 and "device" not in str(info["config"])
    from napari_stentrans.core.errors import InputError

    with pytest.raises(InputError, match="not in the slide"):
        model.enhance(adata, genes=["NOPE"], device="cpu")


def test_input_is_never_modified(square_case):
    adata, model = square_case
    before = adata.copy()
    model.enhance(adata, mask=np.array([[2, 2]]), device="cpu")
    assert (adata.X != before.X).nnz == 0
    assert adata.obs.equals(before.obs) and adata.uns.keys() == before.uns.keys()


def test_lost_spots_are_imputed_and_their_counts_are_never_used():
    r, c = block_sites("square", 7, 8)
    adata = make_slide(r, c, "square", n_genes=20, seed=2)
    lost = np.array([[3, 3], [3, 4], [4, 3]])
    config = tiny_config("square", restore_best=False)
    model = fit_cpu(adata, config, mask=lost)
    out = model.enhance(adata, mask=lost, device="cpu")
    imputed = out.obs[out.obs["kind"] == "imputed"]
    assert len(imputed) == 3 and set(imputed["barcode"]) == {"bc27", "bc28", "bc35"}
    # change the lost spots' counts wildly: training and enhancement must not notice
    tampered = adata.copy()
    x = tampered.X.toarray()
    x[[27, 28, 35]] = 1000.0
    tampered.X = sp.csr_matrix(x)
    model2 = fit_cpu(tampered, config, mask=lost)
    # the same training (losses) and the same kept result, network or the default's fallback
    assert type(model) is type(model2)
    for key in ("train_loss", "val_loss"):
        np.testing.assert_array_equal(model.history[key], model2.history[key])
    assert model.validation == model2.validation and "default_val_loss" in model.validation
    for key in getattr(model, "state_dict", {}):
        np.testing.assert_array_equal(model.state_dict[key].numpy(), model2.state_dict[key].numpy())
    out2 = model2.enhance(tampered, mask=lost, device="cpu")
    np.testing.assert_array_equal(out.X, out2.X)


def test_hex_new_sites_are_the_edges_between_known_spots():
    r, c = block_sites("hex", 8, 14)
    adata = make_slide(r, c, "hex", n_genes=16)
    out = fit_cpu(adata, tiny_config("hex")).enhance(adata, device="cpu")
    lattice = Lattice("hex")
    xy = lattice.physical(r, c)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    n_edges = int(np.isclose(d, lattice.pitch_um).sum() // 2)
    assert (out.obs["kind"] == "new").sum() == n_edges
    assert ((out.obs["array_row"] + out.obs["array_col"]) % 2 == 0).all()  # still a hex lattice


def test_checkpoint_round_trip_gives_identical_predictions(square_case, tmp_path):
    adata, model = square_case
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.training_genes == model.training_genes
    assert loaded.classical.params == model.classical.params
    np.testing.assert_array_equal(loaded.enhance(adata, device="cpu").X, model.enhance(adata, device="cpu").X)


def test_a_models_history_is_one_row_per_epoch_and_survives_saving(square_case, tmp_path):
    """``pandas.DataFrame(model.history)`` is the training's table; the single values are apart.

    Files written before the split (history with one-entry lists, every value a float) load
    as today's models.
    """
    import json

    import pandas as pd
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    adata, trained = square_case
    table = pd.DataFrame(trained.history)
    assert list(table.columns) == ["epoch", "train_loss", "val_loss", "seconds"]
    assert table["epoch"].tolist() == [0, 1, 2] and np.isnan(table["train_loss"][0])
    best = trained.validation["best_epoch"]
    assert isinstance(best, int) and 0 <= best <= 2
    # as a gated fit records them (this fixture trains without the gate)
    model = replace(trained, validation=trained.validation | {"default_val_loss": 0.25, "val_score": 0.5})
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    pd.testing.assert_frame_equal(pd.DataFrame(loaded.history), table)  # epoch stays int64, NaN kept
    assert loaded.validation == model.validation
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        description = json.loads(f.metadata()["napari-stentrans"])
    old = dict(description)
    single = old.pop("validation")
    old["history"] = {k: [float(x) for x in v] for k, v in old["history"].items()} | {
        k: [v] for k, v in single.items()
    }
    save_file(
        load_file(str(tmp_path / "m.safetensors")),
        str(tmp_path / "old.safetensors"),
        {"napari-stentrans": json.dumps(old)},
    )
    for path in (tmp_path / "old.safetensors", tmp_path / "old.pt"):
        if path.suffix == ".pt":
            _legacy_checkpoint(model, path, device="cpu")
        again = load_model(path)
        pd.testing.assert_frame_equal(pd.DataFrame(again.history), table, obj=path.name)
        assert again.validation == model.validation, path.name
    enhanced = model.enhance(adata, genes=2, device="cpu").uns["stentrans"]
    assert enhanced["validation"]["best_epoch"] == best
    assert enhanced["history"]["epoch"].tolist() == [0, 1, 2]


def test_default_checkpoint_holds_no_weights_and_loads_without_torch(tmp_path):
    import subprocess
    import sys

    from safetensors import safe_open

    r, c = block_sites("square", 8, 8)
    adata = make_slide(r, c, "square", n_genes=20)
    model = fit_cpu(adata, "default")
    path = model.save(tmp_path / "default.safetensors")
    with safe_open(str(path), "np") as f:
        assert list(f.keys()) == []  # no network weights
    adata.write_h5ad(tmp_path / "slide.h5ad")
    code = (
        "import sys, numpy as np, anndata as ad; import napari_stentrans as st; "
        f"m = st.load_model({str(path)!r}); a = st.read({str(tmp_path / 'slide.h5ad')!r}); "
        "out = m.enhance(a); print(type(m).__name__, out.n_obs, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["ClassicalModel", str(model.enhance(adata).n_obs), "False"]


def _legacy_checkpoint(model, path, device: str) -> None:
    """A format 1 file (version 0.1.0: torch.save, flat config with the device it trained on)."""
    import torch

    flat = {
        k: v for k, v in model.config.flat().items() if k not in model.config.network.__dataclass_fields__
    }
    flat["model"] = dict(model.config.network.__dict__)
    flat["smoothers"], flat["betas"], flat["device"] = "all", list(flat["betas"]), device
    for extra in ("depth_choice", "gap_smoothers", "basis_genes"):
        flat.pop(extra)
    torch.save(
        {
            "format": "napari-stentrans-model",
            "format_version": 1,
            "config": flat,
            "state_dict": model.state_dict,
            "lattice_kind": model.lattice_kind,
            "classical": model.classical.params.describe(),
            "target_sum": 1e4,
            "training_genes": model.training_genes,
            # every value a float, the single values as one-entry lists, as version 0.1.0 wrote it
            "history": {k: [float(x) for x in v] for k, v in model.history.items()}
            | {k: [float(v)] for k, v in model.validation.items()},
            "torch_version": str(torch.__version__),
        },
        path,
    )


def test_a_model_fitted_on_cuda_loads_and_predicts_on_the_cpu(square_case, tmp_path):
    """The device is a runtime choice: neither format 1's stored device nor a stray one in format 2 applies."""
    import json

    from safetensors.numpy import load_file, save_file

    adata, model = square_case
    expected = model.enhance(adata, device="cpu").X
    _legacy_checkpoint(model, tmp_path / "old.pt", device="cuda")
    old = load_model(tmp_path / "old.pt")
    np.testing.assert_array_equal(old.enhance(adata, device="cpu").X, expected)
    path = save_model(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        description = json.loads(f.metadata()["napari-stentrans"])
    description["config"]["device"] = "cuda:1"
    save_file(
        load_file(str(path)),
        str(tmp_path / "cuda.safetensors"),
        {"napari-stentrans": json.dumps(description)},
    )
    np.testing.assert_array_equal(
        load_model(tmp_path / "cuda.safetensors").enhance(adata, device="cpu").X, expected
    )


def test_bad_checkpoints_are_refused(tmp_path, square_case):
    import json

    import torch
    from safetensors.numpy import load_file, save_file

    adata, model = square_case
    path = save_model(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable model file"):
        load_model(tmp_path / "cut.safetensors")
    adata.write_h5ad(tmp_path / "slide.h5ad")  # a slide given as the model: said in those words
    with pytest.raises(
        CheckpointError, match=r"slide.h5ad: an HDF5 file \(a slide or enhanced .h5ad\?\), not a model"
    ):
        load_model(tmp_path / "slide.h5ad")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a napari-stentrans model"):
        load_model(tmp_path / "other.pt")
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a napari-stentrans model"):
        load_model(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
    # an architecture far larger than the stored weights: refused before anything is allocated
    huge = json.loads(metadata["napari-stentrans"])
    huge["config"]["network"].update(embed_dim=16384, depth=64, heads=16)
    save_file(tensors, str(tmp_path / "huge.safetensors"), {"napari-stentrans": json.dumps(huge)})
    with pytest.raises(CheckpointError, match="do not fit the stored architecture|has shape"):
        load_model(tmp_path / "huge.safetensors")
    nan = {k: np.full_like(v, np.nan) for k, v in tensors.items()}
    save_file(nan, str(tmp_path / "nan.safetensors"), metadata)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(tmp_path / "nan.safetensors")
    bad = json.loads(metadata["napari-stentrans"])
    bad["config"]["optim"]["epochs"] = -3
    save_file(tensors, str(tmp_path / "bad.safetensors"), {"napari-stentrans": json.dumps(bad)})
    with pytest.raises(CheckpointError, match="epochs: -3 is not allowed"):
        load_model(tmp_path / "bad.safetensors")


def test_a_model_applies_only_to_its_lattice_type(square_case):
    _, model = square_case
    r, c = block_sites("hex", 6, 10)
    with pytest.raises(ValueError, match="fitted on a square lattice"):
        model.enhance(make_slide(r, c, "hex"), device="cpu")


def test_applied_to_another_slide_the_weights_stay_and_the_classical_choice_is_remade(square_case):
    from dataclasses import replace

    from napari_stentrans.core.estimators.classical import ClassicalEstimator

    adata, model = square_case
    r, c = block_sites("square", 9, 11)
    other = make_slide(r, c, "square", n_genes=20, seed=9)
    # a stored choice that the other slide would not make: rank 1, linear everything
    from napari_stentrans.core.classical import ClassicalParams

    stored = replace(model, classical=replace(model.classical, params=ClassicalParams(1, None, None)))
    rechosen = stored.enhance(other, device="cpu")
    assert rechosen.uns["stentrans"]["classical_choice"] == "re-chosen on this slide"
    own = ClassicalEstimator(model.config).fit_model(__import__("napari_stentrans").Slide.from_adata(other))
    assert rechosen.uns["stentrans"]["classical"]["rank"] == own.params.rank
    kept = stored.enhance(other, device="cpu", classical="keep")
    assert kept.uns["stentrans"]["classical_choice"] == "kept from the slide the model was fitted on"
    assert kept.uns["stentrans"]["classical"]["rank"] == 1
    assert not np.allclose(kept.X, rechosen.X)
    # on its own slide the stored choice is used as it is
    same = stored.enhance(adata, device="cpu")
    assert same.uns["stentrans"]["classical_choice"] == "chosen on this slide"
    assert same.uns["stentrans"]["classical"]["rank"] == 1


def test_checkerboard_slide_is_enhanced_on_its_own_lattice():
    r, c = block_sites("checkerboard", 10, 12)
    adata = make_slide(r, c, "checkerboard", n_genes=16)
    out = enhance(adata, config="transformer", device="cpu", **{**TINY_OPTIONS, "epochs": 1})
    assert out.uns["stentrans"]["lattice"] == "checkerboard"
    assert ((out.obs["array_row"] + out.obs["array_col"]) % 2 == 0).all()
    assert (out.obs["kind"] == "measured").sum() == adata.n_obs


def test_default_preset_is_the_classical_estimate_and_a_zero_correction_changes_nothing():
    """The default trains nothing and holds no network; a correction network that starts at
    zero on top of the same classical model predicts the same numbers."""
    import torch

    from napari_stentrans.core.config import preset
    from napari_stentrans.core.estimators.classical import ClassicalModel
    from napari_stentrans.core.estimators.learned import LearnedModel
    from napari_stentrans.core.model import StEnTransViT
    from napari_stentrans.core.sites import output_sites
    from napari_stentrans.core.slide import Slide

    r, c = block_sites("hex", 14, 24)
    adata = make_slide(r, c, "hex", n_genes=20, seed=2)
    config = preset("default", "hex", n_train_genes=16)
    assert config.optim.epochs == 0 and config.classical.smoothers == "all" and not config.learns
    model = fit_cpu(adata, config)
    assert isinstance(model, ClassicalModel) and not model.uses_network
    slide = Slide.from_adata(adata)
    sites = output_sites(slide)
    genes = np.arange(len(slide.genes))
    fast, depth = model.predict(slide, sites, genes)
    torch.manual_seed(0)
    network = StEnTransViT(config.network)  # zero-initialised head: the correction is 0
    forced = LearnedModel(
        config=config.with_overrides(epochs=1),
        state_dict=network.state_dict(),
        lattice_kind="hex",
        classical=model,
        training_genes=model.training_genes,
        slide_fingerprint=slide.fingerprint,
    )
    slow, slow_depth = forced.predict(slide, sites, genes, device="cpu")
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(depth, slow_depth)
    assert depth is not None and (depth > 0).all()


def test_a_networks_value_at_a_site_does_not_depend_on_the_other_sites_asked_for():
    """The network reads its base at the input spots (third channel, as in training): asking for
    the new sites alone, as evaluation does, must give the values that the whole output has
    there (the base channel was zero at every input spot then)."""
    import torch

    from napari_stentrans.core.config import preset
    from napari_stentrans.core.estimators.learned import LearnedModel
    from napari_stentrans.core.model import StEnTransViT
    from napari_stentrans.core.sites import OutputSites, output_sites
    from napari_stentrans.core.slide import Slide

    r, c = block_sites("hex", 14, 24)
    adata = make_slide(r, c, "hex", n_genes=20, seed=2)
    config = preset("transformer", "hex", n_train_genes=16, depth=1, heads=2, patch_size=2, embed_dim=16)
    slide = Slide.from_adata(adata)
    model = fit_cpu(adata, preset("default", "hex", n_train_genes=16))
    torch.manual_seed(0)
    network = StEnTransViT(config.network)
    with torch.no_grad():  # a correction that depends on every input channel
        network.head.weight.normal_(0.0, 0.05)
    learned = LearnedModel(
        config=config,
        state_dict=network.state_dict(),
        lattice_kind="hex",
        classical=model,
        training_genes=model.training_genes,
        slide_fingerprint=slide.fingerprint,
    )
    sites = output_sites(slide)
    genes = np.arange(len(slide.genes))
    whole, depth = learned.predict(slide, sites, genes, device="cpu", classical="keep")
    new = np.flatnonzero(sites.kind == "new")
    subset = OutputSites(*(getattr(sites, f)[new] for f in OutputSites.__dataclass_fields__))
    alone, alone_depth = learned.predict(slide, subset, genes, device="cpu", classical="keep")
    base, _ = model.predict(slide, subset, genes)
    assert np.abs(alone - base).max() > 1e-3  # the network changes the estimate there
    np.testing.assert_allclose(alone, whole[new], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(alone_depth, depth[new], rtol=1e-6)


def test_sites_in_gaps_take_the_smoothers_chosen_on_hole_pairs():
    from dataclasses import replace

    from napari_stentrans.core.classical import ClassicalParams
    from napari_stentrans.core.config import preset
    from napari_stentrans.core.sites import output_sites
    from napari_stentrans.core.slide import Slide

    r, c = block_sites("hex", 16, 28)
    adata = make_slide(r, c, "hex", n_genes=20, seed=3)
    lost = np.hypot(r - 8, (c - 14) * 0.5) <= 2.5  # a disk of measured spots declared lost
    mask = np.column_stack([r[lost], c[lost]])
    # uncalibrated: the count calibration's factors come from the measured spots' parameters,
    # which differ between the runs compared below
    config = preset("default", "hex", n_train_genes=16, calibrate_counts=False)
    assert fit_cpu(adata, config).params.holes is None  # no gap, nothing to choose
    one_site = np.column_stack([r[:1] + 8, c[:1] + 14])  # a single lost site: too small to pair
    assert fit_cpu(adata, config, one_site).params.holes is None
    model = fit_cpu(adata, config, mask)
    assert model.params.holes is not None
    linear = fit_cpu(adata, preset("default", "hex", n_train_genes=16, smoothers="linear"), mask)
    chosen = (linear.params, linear.params.holes)
    assert all(p.bandwidth is None and p.depth_bandwidth is None for p in chosen)
    slide = Slide.from_adata(adata, mask)
    sites = output_sites(slide)
    imputed, measured = sites.kind == "imputed", sites.kind == "measured"
    assert imputed.sum() == lost.sum()
    genes = np.arange(len(slide.genes))
    main, hole = ClassicalParams(3, None, None), ClassicalParams(3, 1.0, 1.0)

    def run(params):
        return replace(model, params=params, _bases={}).predict(slide, sites, genes)

    mixed, mixed_depth = run(replace(main, holes=hole))
    only_main, main_depth = run(main)
    only_hole, hole_depth = run(hole)
    np.testing.assert_array_equal(mixed[imputed], only_hole[imputed])
    np.testing.assert_array_equal(mixed_depth[imputed], hole_depth[imputed])
    np.testing.assert_array_equal(mixed[measured], only_main[measured])
    np.testing.assert_array_equal(mixed_depth[measured], main_depth[measured])
    assert not np.allclose(only_main[imputed], only_hole[imputed])
    # the gap smoothers are reported only where some site lies in a gap
    assert "; in gaps: rank" in model.predictor(slide, sites, classical="keep").notes["classical_summary"]
    whole = Slide.from_adata(adata)
    note = model.predictor(whole, output_sites(whole), classical="keep").notes["classical_summary"]
    assert note == replace(model.params, holes=None).summary() and "in gaps" not in note
    # the basis stage names the rank it fits and, when the groups differ, whose rank is whose
    from napari_stentrans.core.estimators.classical import ClassicalEstimator

    steps = ClassicalEstimator(config).fit_model_steps(Slide.from_adata(adata, mask))
    stages = []
    try:
        while True:
            stages.append(next(steps)[0])
    except StopIteration as done:
        params = done.value.params
    basis_stage = next(s for s in stages if s.startswith("fitting the low-rank basis"))
    main_rank, gap_rank = params.rank, params.holes.rank
    expected = f"rank {max(main_rank, gap_rank)}" + (
        f"; {main_rank} at measured sites, {gap_rank} in gaps)" if main_rank != gap_rank else ")"
    )
    assert basis_stage == f"fitting the low-rank basis ({expected}"
