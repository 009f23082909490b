"""Enhancement on hand-built lattices: output kinds, coordinates, barcodes, lost spots, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from helpers import TINY_OPTIONS, block_sites, make_slide, tiny_config
from napari_stentrans.core.checkpoint import CheckpointError, load_model, save_model
from napari_stentrans.core.enhance import enhance
from napari_stentrans.core.lattice import Lattice
from napari_stentrans.core.training import train


def _without(rows, cols, site):
    keep = ~((rows == site[0]) & (cols == site[1]))
    return rows[keep], cols[keep]


@pytest.fixture(scope="module")
def square_case():
    r, c = _without(*block_sites("square", 6, 6), (3, 3))  # a hole in the middle
    adata = make_slide(r, c, "square", n_genes=20)
    model = train(adata, tiny_config("square"))
    return adata, model


def test_square_output_kinds_coordinates_and_barcodes(square_case):
    adata, model = square_case
    out = enhance(adata, model)
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
    assert (imputed["array_row"].item(), imputed["array_col"].item(), imputed["barcode"].item()) == (6, 6, "")
    new = out.obs[out.obs["kind"] == "new"]
    assert ((new["array_row"] % 2 == 1) | (new["array_col"] % 2 == 1)).all()
    assert new["array_row"].between(0, 10).all() and new["array_col"].between(0, 10).all()


def test_output_positions_in_the_input_image_pixels(square_case):
    adata, model = square_case
    out = enhance(adata, model)
    measured = out.obs["kind"] == "measured"
    np.testing.assert_allclose(
        out.obsm["spatial"][measured.to_numpy()],
        adata.obsm["spatial"][adata.obs_names.get_indexer(out.obs_names[measured])],
    )
    # make_slide: spatial = physical / pitch * 10 + 5, so half-pitch site (R, C) is at (5C + 5, 5R + 5)
    expected = np.column_stack([out.obs["array_col"] * 5.0 + 5, out.obs["array_row"] * 5.0 + 5])
    np.testing.assert_allclose(out.obsm["spatial"], expected, atol=1e-9)
    np.testing.assert_allclose(out.obsm["spatial_um"] / 100.0, (expected - 5) / 10.0 * 2.0, atol=1e-9)


def test_output_values_layers_and_provenance(square_case):
    adata, model = square_case
    out = enhance(adata, model, genes=["G3", "G1"])
    assert list(out.var_names) == ["G1", "G3"]
    assert np.isfinite(out.X).all() and out.X.min() >= 0
    measured = (out.obs["kind"] == "measured").to_numpy()
    rows = adata.obs_names.get_indexer(out.obs_names[measured])
    np.testing.assert_array_equal(
        out.layers["measured"][measured].toarray(), adata[rows, ["G1", "G3"]].X.toarray()
    )
    assert out.layers["measured"][~measured].nnz == 0
    info = out.uns["stentrans"]
    assert info["lattice"] == "square" and info["pitch_um"] == 100.0 and info["preset"] == "transformer"
    assert "history" in info and len(info["history"]["val_loss"]) == 3
    with pytest.raises(ValueError, match="not in the slide"):
        enhance(adata, model, genes=["NOPE"])


def test_input_is_never_modified(square_case):
    adata, model = square_case
    before = adata.copy()
    enhance(adata, model, mask=np.array([[2, 2]]))
    assert (adata.X != before.X).nnz == 0
    assert adata.obs.equals(before.obs) and adata.uns.keys() == before.uns.keys()


def test_lost_spots_are_imputed_and_their_counts_are_never_used():
    r, c = block_sites("square", 7, 8)
    adata = make_slide(r, c, "square", n_genes=20, seed=2)
    lost = np.array([[3, 3], [3, 4], [4, 3]])
    model = train(adata, tiny_config("square"), mask=lost)
    out = enhance(adata, model, mask=lost)
    imputed = out.obs[out.obs["kind"] == "imputed"]
    assert len(imputed) == 3 and set(imputed["barcode"]) == {"bc27", "bc28", "bc35"}
    # change the lost spots' counts wildly: training and enhancement must not notice
    tampered = adata.copy()
    x = tampered.X.toarray()
    x[[27, 28, 35]] = 1000.0
    tampered.X = sp.csr_matrix(x)
    model2 = train(tampered, tiny_config("square"), mask=lost)
    for key in model.state_dict:
        np.testing.assert_array_equal(model.state_dict[key].numpy(), model2.state_dict[key].numpy())
    out2 = enhance(tampered, model2, mask=lost)
    np.testing.assert_array_equal(out.X, out2.X)


def test_hex_new_sites_are_the_edges_between_known_spots():
    r, c = block_sites("hex", 8, 14)
    adata = make_slide(r, c, "hex", n_genes=16)
    out = enhance(adata, train(adata, tiny_config("hex")))
    lattice = Lattice("hex")
    xy = lattice.physical(r, c)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    n_edges = int(np.isclose(d, lattice.pitch_um).sum() // 2)
    assert (out.obs["kind"] == "new").sum() == n_edges
    assert ((out.obs["array_row"] + out.obs["array_col"]) % 2 == 0).all()  # still a hex lattice


def test_checkpoint_round_trip_gives_identical_predictions(square_case, tmp_path):
    adata, model = square_case
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model(path)
    assert loaded.training_genes == model.training_genes and loaded.classical == model.classical
    np.testing.assert_array_equal(enhance(adata, loaded).X, enhance(adata, model).X)


def test_bad_checkpoints_are_refused(tmp_path, square_case):
    adata, model = square_case
    path = save_model(model, tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable model file"):
        load_model(tmp_path / "cut.pt")
    import torch

    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a napari-stentrans model"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_a_model_applies_only_to_its_lattice_type(square_case):
    _, model = square_case
    r, c = block_sites("hex", 6, 10)
    with pytest.raises(ValueError, match="trained on a square lattice"):
        enhance(make_slide(r, c, "hex"), model)


def test_checkerboard_slide_is_enhanced_on_its_own_lattice():
    r, c = block_sites("checkerboard", 10, 12)
    adata = make_slide(r, c, "checkerboard", n_genes=16)
    out = enhance(adata, **{**TINY_OPTIONS, "epochs": 1})  # training options straight through enhance
    assert out.uns["stentrans"]["lattice"] == "checkerboard"
    assert ((out.obs["array_row"] + out.obs["array_col"]) % 2 == 0).all()
    assert (out.obs["kind"] == "measured").sum() == adata.n_obs


def test_default_preset_is_the_classical_estimate_and_skips_the_network():
    """The default trains nothing; skipping the network gives exactly what running it gives."""
    from dataclasses import replace

    from napari_stentrans.core.enhance import output_sites, predict
    from napari_stentrans.core.presets import preset
    from napari_stentrans.core.slide import slide_from_adata

    r, c = block_sites("hex", 14, 24)
    adata = make_slide(r, c, "hex", n_genes=20, seed=2)
    config = preset("default", "hex", n_train_genes=16, device="cpu")
    assert config.epochs == 0 and config.smoothers == "all"
    model = train(adata, config)
    assert not model.uses_network
    slide = slide_from_adata(adata)
    sites = output_sites(slide)
    genes = np.arange(len(slide.genes))
    fast, depth = predict(model, slide, genes, sites, device="cpu")
    forced = replace(model, config=replace(model.config, epochs=1, restore_best=False))
    assert forced.uses_network
    slow, _ = predict(forced, slide, genes, sites, device="cpu")
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
    assert depth is not None and (depth > 0).all()


def test_sites_in_gaps_take_the_smoothers_chosen_on_hole_pairs():
    from dataclasses import replace

    from napari_stentrans.core.classical import ClassicalParams
    from napari_stentrans.core.enhance import output_sites, predict
    from napari_stentrans.core.presets import preset
    from napari_stentrans.core.slide import slide_from_adata

    r, c = block_sites("hex", 16, 28)
    adata = make_slide(r, c, "hex", n_genes=20, seed=3)
    lost = np.hypot(r - 8, (c - 14) * 0.5) <= 2.5  # a disk of measured spots declared lost
    mask = np.column_stack([r[lost], c[lost]])
    config = preset("default", "hex", n_train_genes=16, device="cpu")
    assert train(adata, config).classical.holes is None  # no gap, nothing to choose
    one_site = np.column_stack([r[:1] + 8, c[:1] + 14])  # a single lost site: too small to pair
    assert train(adata, config, one_site).classical.holes is None
    model = train(adata, config, mask)
    assert model.classical.holes is not None
    linear = train(adata, preset("default", "hex", n_train_genes=16, device="cpu", smoothers="linear"), mask)
    chosen = (linear.classical, linear.classical.holes)
    assert all(p.bandwidth is None and p.depth_bandwidth is None for p in chosen)
    slide = slide_from_adata(adata, mask)
    sites = output_sites(slide)
    imputed, measured = sites.kind == "imputed", sites.kind == "measured"
    assert imputed.sum() == lost.sum()
    genes = np.arange(len(slide.genes))
    main, hole = ClassicalParams(3, None, None), ClassicalParams(3, 1.0, 1.0)

    def run(params):
        return predict(replace(model, classical=params), slide, genes, sites, device="cpu")

    mixed, mixed_depth = run(replace(main, holes=hole))
    only_main, main_depth = run(main)
    only_hole, hole_depth = run(hole)
    np.testing.assert_array_equal(mixed[imputed], only_hole[imputed])
    np.testing.assert_array_equal(mixed_depth[imputed], hole_depth[imputed])
    np.testing.assert_array_equal(mixed[measured], only_main[measured])
    np.testing.assert_array_equal(mixed_depth[measured], main_depth[measured])
    assert not np.allclose(only_main[imputed], only_hole[imputed])
