"""Outputs that read back, one definition of the supported inputs, and SpatialData in and out."""

from __future__ import annotations

import bz2
import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers import block_sites, make_slide, shared_data_or_skip, spatialdata_or_skip, with_image
from napari_stentrans.cli import main
from napari_stentrans.core.errors import InputError, ReadError
from napari_stentrans.core.io import input_format, is_enhanced, measured_spots, read

SHARED_STORE = "spatialdata_zarr_visium_dlpfc151674/151674.zarr"


def _slide(kind: str = "hex", image: bool = True) -> ad.AnnData:
    r, c = block_sites(kind, 8, 12)
    adata = make_slide(r, c, kind)
    return with_image(adata) if image else adata


def _write_enhanced(how: str, adata: ad.AnnData, path) -> ad.AnnData:
    """Write the enhanced slide of ``adata`` to ``path`` the way a user would; return it in memory."""
    import napari_stentrans as st

    model = st.fit(adata)
    enhanced = model.enhance(adata)
    if how == "model.write":
        model.write(adata, path)
    elif how == "write_h5ad":
        enhanced.write_h5ad(path)
    else:  # the napari export, given the layer data napari hands its writer
        from napari_stentrans._napari.writer import write_enhanced

        meta = {"stentrans": {"role": "enhanced", "slide_id": "s#1", "adata": enhanced, "gene": "G0"}}
        write_enhanced(str(path), [(np.zeros((2, 2)), {"metadata": meta}, "image")])
    return enhanced


# ----------------------------------------------------------------------------- enhanced files


@pytest.mark.parametrize("how", ["model.write", "write_h5ad", "napari export"])
@pytest.mark.parametrize("kind", ["hex", "square", "checkerboard"])
def test_enhanced_file_reads_back_as_an_enhanced_slide(tmp_path, how, kind):
    adata = _slide(kind)
    enhanced = _write_enhanced(how, adata, tmp_path / "x2.h5ad")
    back = read(tmp_path / "x2.h5ad")
    assert is_enhanced(back)
    lattice = back.uns["stentrans_lattice"]
    assert lattice["enhanced"] and lattice["kind"] == kind
    assert lattice["pitch_um"] == pytest.approx(adata.uns["stentrans_lattice"]["pitch_um"] / 2)
    assert lattice["source"] == str(tmp_path / "x2.h5ad")
    # predictions (non-integer) come back as written, at the half-pitch sites
    np.testing.assert_allclose(np.asarray(back.X), np.asarray(enhanced.X), rtol=1e-6)
    assert np.any(np.asarray(back.X) != np.round(np.asarray(back.X)))
    assert back.obs["array_row"].dtype == np.int64
    np.testing.assert_array_equal(back.obs["array_row"], enhanced.obs["array_row"])
    np.testing.assert_array_equal(back.obs["array_col"], enhanced.obs["array_col"])
    np.testing.assert_array_equal(
        back.uns["spatial"]["lib"]["images"]["lowres"], adata.uns["spatial"]["lib"]["images"]["lowres"]
    )
    # its measured spots are the input slide again: same coordinates, counts, positions, spot size
    measured = measured_spots(back)
    order = adata.obs_names.get_indexer(measured.obs_names)
    assert (order >= 0).all() and len(order) == adata.n_obs
    np.testing.assert_array_equal(measured.obs["array_row"], adata.obs["array_row"].to_numpy()[order])
    np.testing.assert_array_equal(measured.obs["array_col"], adata.obs["array_col"].to_numpy()[order])
    np.testing.assert_array_equal(measured.X.toarray(), adata[measured.obs_names, back.var_names].X.toarray())
    np.testing.assert_allclose(measured.obsm["spatial"], adata.obsm["spatial"][order], atol=1e-6)
    assert measured.uns["spatial"]["lib"]["scalefactors"]["spot_diameter_fullres"] == 9.0
    assert measured.uns["stentrans_lattice"]["pitch_um"] == adata.uns["stentrans_lattice"]["pitch_um"]


def test_an_enhanced_slide_is_not_enhanced_again(tmp_path):
    import napari_stentrans as st

    _write_enhanced("model.write", _slide(), tmp_path / "x2.h5ad")
    back = read(tmp_path / "x2.h5ad")
    for attempt in (lambda: st.fit(back), lambda: st.Slide.from_adata(back), lambda: st.evaluate(back)):
        with pytest.raises(InputError, match=r"x2\.h5ad: an enhanced slide .* predictions"):
            attempt()


def test_cli_info_describes_an_enhanced_file_and_enhance_refuses_it(tmp_path, capsys):
    src = tmp_path / "slide.h5ad"
    _slide("hex").write_h5ad(src)
    assert main(["enhance", str(src), "-o", str(tmp_path / "x2.h5ad"), "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "x2.h5ad")]) == 0
    out = capsys.readouterr().out
    assert f"from {src}" in out and "X holds predictions" in out
    assert "hex at half pitch (50 um; input 100 um)" in out
    assert "165 (48 measured, 0 imputed, 117 new)" in out
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["enhance", str(tmp_path / "x2.h5ad"), "-o", str(tmp_path / "x4.h5ad"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x2.h5ad: an enhanced slide" in err and str(src) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # evaluate refuses it in one line too, before its note on the methods that train
    assert main(["evaluate", str(tmp_path / "x2.h5ad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x2.h5ad: an enhanced slide" in err and "note" not in err


def test_an_edited_enhanced_file_is_refused_by_name(tmp_path):
    enhanced = _write_enhanced("write_h5ad", _slide("hex"), tmp_path / "x2.h5ad")
    enhanced.obs["array_col"] = enhanced.obs["array_col"] + 1  # off the half-pitch hex lattice
    enhanced.write_h5ad(tmp_path / "edited.h5ad")
    with pytest.raises(ReadError, match=r"edited\.h5ad: .*not on the hex lattice"):
        read(tmp_path / "edited.h5ad")


# ---------------------------------------------------------------------- one definition of inputs


def _inputs(root):
    """(name, path, format) for a table of inputs, each built under ``root``."""
    from helpers import write_spaceranger

    slide = _slide("square", image=False)
    table = pd.DataFrame(
        slide.X.toarray().astype(int),
        index=[f"{c}x{r}" for r, c in zip(slide.obs["array_row"], slide.obs["array_col"], strict=True)],
        columns=slide.var_names,
    )
    cases = []

    def add(name, path, fmt):
        cases.append((name, path, fmt))

    (root / "one").mkdir()
    slide.write_h5ad(root / "one/slide.h5ad")
    add("folder with one .h5ad", root / "one", "h5ad")
    add(".h5ad", root / "one/slide.h5ad", "h5ad")
    for ext in (".tsv", ".csv", ".txt"):
        sep = "," if ext == ".csv" else "\t"
        table.to_csv(root / f"counts{ext}", sep=sep)
        add(ext, root / f"counts{ext}", "table")
    table.to_csv(root / "counts.tsv.gz", sep="\t")
    add(".tsv.gz", root / "counts.tsv.gz", "table")
    (root / "counts.tsv.bz2").write_bytes(bz2.compress(table.to_csv(sep="\t").encode()))
    add(".tsv.bz2", root / "counts.tsv.bz2", "table")
    r, c = block_sites("hex", 6, 10)
    write_spaceranger(root / "sr", make_slide(r, c, "hex"), matrix="h5", positions="v2")
    add("Space Ranger folder", root / "sr", "spaceranger")
    _write_enhanced("write_h5ad", _slide("hex"), root / "x2.h5ad")
    add("enhanced .h5ad", root / "x2.h5ad", "h5ad")
    _store(root / "store.zarr", {"table": slide})
    add("SpatialData store", root / "store.zarr", "spatialdata")
    (root / "empty").mkdir()
    add("empty folder", root / "empty", None)
    (root / "two").mkdir()
    slide.write_h5ad(root / "two/a.h5ad")
    slide.write_h5ad(root / "two/b.h5ad")
    add("folder with two .h5ad", root / "two", None)
    (root / "notes.txt.bak").write_text("x")
    add(".txt.bak", root / "notes.txt.bak", None)
    (root / "book.xlsx").write_text("x")
    add(".xlsx", root / "book.xlsx", None)
    (root / "m.h5").write_text("x")
    add("bare 10x .h5", root / "m.h5", None)
    add("missing file", root / "missing.h5ad", None)
    return cases


def _store(path, tables: dict, region_of=None) -> None:
    """A SpatialData store as spatialdata lays it out (root group, tables/NAME AnnData), written with anndata."""
    path.mkdir()
    (path / "zarr.json").write_text(
        json.dumps(
            {"zarr_format": 3, "node_type": "group", "attributes": {"spatialdata_attrs": {"version": "0.2"}}}
        )
    )
    (path / "tables").mkdir()
    for name, table in tables.items():
        table = table.copy()
        regions = region_of(table) if region_of else np.full(table.n_obs, "spots")
        table.obs["region"] = pd.Categorical(regions)
        table.obs["instance_id"] = np.arange(table.n_obs)
        table.uns["spatialdata_attrs"] = {
            "region": sorted(set(regions)),
            "region_key": "region",
            "instance_key": "instance_id",
        }
        with ad.settings.override(zarr_write_format=3), warnings.catch_warnings():  # as spatialdata writes
            warnings.filterwarnings("ignore", message="Consolidated metadata|zarr v3 autosharding")
            table.write_zarr(path / "tables" / name)


def test_core_and_napari_readers_accept_the_same_inputs(tmp_path):
    from napari_stentrans._napari.reader import get_reader

    cases = _inputs(tmp_path)
    for name, path, fmt in cases:
        assert input_format(path) == fmt, name
        assert (get_reader(str(path)) is not None) == (fmt is not None), name
        if fmt is None:
            with pytest.raises(ReadError, match=path.name):
                read(path)
        else:
            adata = read(path)
            assert adata.n_obs >= 30 and adata.obs["array_row"].dtype == np.int64, name
    assert sum(fmt is not None for _, _, fmt in cases) == 10 and len(cases) == 16


# ---------------------------------------------------------------------------------- SpatialData


def test_store_with_several_tables_or_slides_asks_which(tmp_path):
    a, b = _slide("square", image=False), _slide("square", image=False)
    b.X = b.X * 2
    _store(tmp_path / "two.zarr", {"a": a, "b": b})
    with pytest.raises(
        ReadError, match=r"two\.zarr: SpatialData store with 2 tables \(a, b\); choose one with --table"
    ):
        read(tmp_path / "two.zarr")
    np.testing.assert_array_equal(read(tmp_path / "two.zarr", table="b").X.toarray(), b.X.toarray())
    with pytest.raises(ReadError, match=r"no table 'c' in the store; it holds a, b"):
        read(tmp_path / "two.zarr", table="c")
    # one table over two slides (regions): never merged, one is picked by name
    _store(
        tmp_path / "regions.zarr",
        {"table": a},
        region_of=lambda t: np.where(t.obs["array_row"] < 4, "s1", "s2"),
    )
    with pytest.raises(ReadError, match=r"holds 2 slides \(regions s1, s2\); choose one .* never merged"):
        read(tmp_path / "regions.zarr")
    s2 = read(tmp_path / "regions.zarr", library_id="s2")
    assert s2.n_obs == int((a.obs["array_row"] >= 4).sum()) and (s2.obs["array_row"] >= 4).all()


def test_cli_picks_a_table_of_a_store(tmp_path, capsys):
    a, b = _slide("square", image=False), _slide("square", image=False)
    _store(tmp_path / "two.zarr", {"a": a, "b": b.copy()[:50]})
    assert main(["info", str(tmp_path / "two.zarr")]) == 2
    assert "choose one with --table NAME" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "two.zarr"), "--table", "b"]) == 0
    assert "spots:     50;" in capsys.readouterr().out


def test_shared_spatialdata_store_reads_like_its_space_ranger_folder():
    root = shared_data_or_skip()
    store = read(root / SHARED_STORE)
    folder = read(root / "visium_human_dlpfc_maynard2021/151674")
    folder = folder[store.obs_names]
    assert store.n_obs == 3673 and store.n_vars == 5000
    assert (store.X != folder.X).nnz == 0 and list(store.var_names) == list(folder.var_names)
    np.testing.assert_array_equal(store.obs["array_row"], folder.obs["array_row"])
    np.testing.assert_array_equal(store.obsm["spatial"], folder.obsm["spatial"])
    assert store.uns["stentrans_lattice"]["kind"] == "hex"
    assert store.obs["layer"].notna().sum() == 3635  # the layer labels come along
    try:
        import spatialdata  # noqa: F401
    except ImportError:
        assert "install spatialdata" in store.uns["stentrans_read_note"]
        return
    got, want = store.uns["spatial"]["151674"], folder.uns["spatial"]["151674"]
    np.testing.assert_array_equal(got["images"]["lowres"], want["images"]["lowres"])
    for key in ("tissue_lowres_scalef", "spot_diameter_fullres"):
        assert got["scalefactors"][key] == pytest.approx(want["scalefactors"][key], rel=1e-6)


@pytest.mark.parametrize("kind", ["hex", "square"])
def test_spatialdata_round_trip(tmp_path, kind):
    sd = spatialdata_or_skip()
    from spatialdata.transformations import get_transformation

    from napari_stentrans.core.io.spatialdata import write_spatialdata

    adata = _slide(kind, image=kind == "hex")
    enhanced = _write_enhanced("write_h5ad", adata, tmp_path / "x2.h5ad")
    write_spatialdata(enhanced, tmp_path / "x2.zarr")
    sdata = sd.read_zarr(tmp_path / "x2.zarr")
    library = "lib" if kind == "hex" else "slide"
    table = sdata.tables["table"]
    np.testing.assert_allclose(np.asarray(table.X), np.asarray(enhanced.X), rtol=1e-6)
    np.testing.assert_array_equal(table.obs["array_row"], enhanced.obs["array_row"])
    circles = sdata.shapes[f"{library}_x2"]
    assert table.uns["spatialdata_attrs"]["region"] == f"{library}_x2"
    np.testing.assert_array_equal(circles.index.to_numpy(), table.obs["site_id"].to_numpy())
    np.testing.assert_allclose(
        np.column_stack([circles.geometry.x, circles.geometry.y]), enhanced.obsm["spatial"]
    )
    um = get_transformation(circles, to_coordinate_system=f"{library}_um").to_affine_matrix(("x",), ("x",))[
        0, 0
    ]
    if kind == "hex":  # Visium: the halved spot diameter, 9 px -> 4.5 px, radius 2.25 px
        np.testing.assert_allclose(circles["radius"], 2.25)
        image = sdata.images["lib_lowres_image"]
        np.testing.assert_array_equal(
            np.moveaxis(image.values, 0, -1), adata.uns["spatial"]["lib"]["images"]["lowres"]
        )
        to_full = get_transformation(image, to_coordinate_system="lib").to_affine_matrix(
            ("x", "y"), ("x", "y")
        )
        np.testing.assert_allclose(to_full, np.diag([2.0, 2.0, 1.0]))  # lowres scale factor 0.5
        # the circles are in the image's own coordinate system too (they vanished from it)
        to_lowres = get_transformation(circles, to_coordinate_system="lib_downscaled_lowres")
        np.testing.assert_allclose(
            to_lowres.to_affine_matrix(("x", "y"), ("x", "y")), np.diag([0.5, 0.5, 1.0])
        )
    else:  # no scale factors: a quarter of the half pitch (100 um on this ST slide) across, in pixels
        np.testing.assert_allclose(circles["radius"] * um, 0.25 * 100.0, rtol=1e-6)
    # micrometres: the store's frame is obsm["spatial_um"]'s, for the circles and the image alike
    to_um = get_transformation(circles, to_coordinate_system=f"{library}_um").to_affine_matrix(
        ("x", "y"), ("x", "y")
    )
    centres = np.column_stack([circles.geometry.x, circles.geometry.y, np.ones(len(circles))])
    np.testing.assert_allclose((centres @ to_um.T)[:, :2], enhanced.obsm["spatial_um"], atol=1e-6)
    if kind == "hex":
        image_um = get_transformation(image, to_coordinate_system="lib_um").to_affine_matrix(
            ("x", "y"), ("x", "y")
        )
        np.testing.assert_allclose(image_um, to_um @ to_full, atol=1e-9)
    # micrometres: neighbouring measured spots one input pitch apart
    measured = enhanced.obs["kind"].to_numpy() == "measured"
    xy = enhanced.obsm["spatial"][measured] * um
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    gaps[gaps == 0] = np.inf
    assert np.min(gaps) == pytest.approx(adata.uns["stentrans_lattice"]["pitch_um"], rel=1e-6)
    # and it reads back as the enhanced slide, image included
    back = read(tmp_path / "x2.zarr")
    assert is_enhanced(back) and back.uns["stentrans_lattice"]["source"] == str(tmp_path / "x2.zarr")
    np.testing.assert_allclose(np.asarray(back.X), np.asarray(enhanced.X), rtol=1e-6)
    if kind == "hex":
        np.testing.assert_array_equal(
            back.uns["spatial"]["lib"]["images"]["lowres"], adata.uns["spatial"]["lib"]["images"]["lowres"]
        )


def test_a_folder_holding_one_store_is_read_through_it(tmp_path):
    spatialdata_or_skip()
    from napari_stentrans.core.io.spatialdata import write_spatialdata

    enhanced = _write_enhanced("write_h5ad", _slide("hex"), tmp_path / "x2.h5ad")
    folder = tmp_path / "sample"
    folder.mkdir()
    write_spatialdata(enhanced, folder / "151674.zarr")
    (folder / "README.txt").write_text("not a slide\n")
    assert input_format(folder) == "spatialdata"
    back = read(folder)
    assert back.uns["stentrans_read_note"].startswith("read 151674.zarr, the folder's only SpatialData store")
    np.testing.assert_allclose(np.asarray(back.X), np.asarray(enhanced.X), rtol=1e-6)
    (tmp_path / "x2.h5ad").rename(folder / "x2.h5ad")  # a store and an .h5ad: ambiguous
    assert input_format(folder) is None
    with pytest.raises(ReadError, match=r"holds 2 slides \(151674.zarr, x2.h5ad\)"):
        read(folder)


def test_spatialdata_writer_never_replaces_an_input_or_an_existing_store(tmp_path):
    spatialdata_or_skip()
    from napari_stentrans.core.io.spatialdata import write_spatialdata

    enhanced = _write_enhanced("write_h5ad", _slide("hex"), tmp_path / "x2.h5ad")
    write_spatialdata(enhanced, tmp_path / "x2.zarr")
    stamp = sorted(p.relative_to(tmp_path) for p in (tmp_path / "x2.zarr").rglob("*"))
    with pytest.raises(InputError, match="output exists"):
        write_spatialdata(enhanced, tmp_path / "x2.zarr")
    with pytest.raises(InputError, match="refusing to overwrite"):
        write_spatialdata(enhanced, tmp_path / "x2.zarr", inputs=[tmp_path / "x2.zarr"], overwrite=True)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "x2.zarr").rglob("*")) == stamp
    write_spatialdata(enhanced[:10], tmp_path / "x2.zarr", overwrite=True)
    assert read(tmp_path / "x2.zarr").n_obs == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.slow  # 28 s: the classical choice on 3,673 spots
def test_cli_enhances_the_shared_store_into_spatialdata(tmp_path, capsys):
    sd = spatialdata_or_skip()
    root = shared_data_or_skip()
    out = tmp_path / "x2.zarr"
    args = ["enhance", str(root / SHARED_STORE), "-o", str(out), "--genes", "MBP,PLP1", "--quiet"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    sdata = sd.read_zarr(out)
    table = sdata.tables["table"]
    assert sorted(table.var_names) == ["MBP", "PLP1"] and table.n_obs == 14472
    circles = sdata.shapes["151674_x2"]
    np.testing.assert_allclose(circles["radius"], 96.3779209567421 / 4)  # half the spot diameter, as radius
    assert "151674_lowres_image" in sdata.images
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x2.zarr"]  # no scratch .h5ad left
    assert is_enhanced(read(out))


def test_the_inputs_annotations_travel_to_the_sites_of_their_spots(tmp_path):
    """Layer labels, clusters and QC values of the input stay with their spots in the output
    (a scanpy user compares clusters of the enhanced slide with them); new sites have none."""
    import napari_stentrans as st

    r, c = block_sites("hex", 8, 12)
    adata = make_slide(r, c, "hex", n_genes=12, seed=2)
    n = adata.n_obs
    adata.obs["layer"] = pd.Categorical(np.where(c < 12, "L1", "WM"))
    adata.obs["cluster"] = (r % 3).astype(np.int64)
    adata.obs["pct_mito"] = np.linspace(0.0, 5.0, n)
    adata.obs["note"] = np.where(r < 4, "top", "bottom").astype(object)
    adata.obs["in_tissue"] = 1  # true of every spot, meaningless at new sites: not copied
    adata.obs["spot_id"] = np.arange(n)  # a SpatialData table's instance and region keys index the
    adata.obs["region"] = pd.Categorical(["A1"] * n)  # input store: not copied either
    adata.uns["spatialdata_attrs"] = {"instance_key": "spot_id", "region_key": "region", "region": "A1"}
    model = st.fit(adata)
    for out in (model.enhance(adata), ad.read_h5ad(model.write(adata, tmp_path / "x2.h5ad").path)):
        obs = out.obs
        assert {"layer", "cluster", "pct_mito", "note"} <= set(obs.columns)
        assert not {"in_tissue", "spot_id", "region"} & set(obs.columns)
        measured = obs[obs["kind"] == "measured"]
        by_barcode = adata.obs.loc[measured["barcode"].astype(str)]
        assert (measured["layer"].astype(str).to_numpy() == by_barcode["layer"].astype(str).to_numpy()).all()
        assert (measured["cluster"].to_numpy(dtype=np.int64) == by_barcode["cluster"].to_numpy()).all()
        np.testing.assert_allclose(measured["pct_mito"].to_numpy(dtype=float), by_barcode["pct_mito"])
        assert (measured["note"].astype(str).to_numpy() == by_barcode["note"].to_numpy()).all()
        new = obs[obs["kind"] == "new"]
        assert new["layer"].isna().all() and new["cluster"].isna().all() and new["pct_mito"].isna().all()
        assert str(obs["cluster"].dtype) == "Int64" and isinstance(obs["layer"].dtype, pd.CategoricalDtype)
