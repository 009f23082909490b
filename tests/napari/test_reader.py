"""Reader, sample data and layer geometry in a real napari viewer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from helpers import block_sites, make_slide, shared_data_or_skip
from napari_stentrans._napari.reader import get_reader
from napari_stentrans.core.display import DisplayFrame
from napari_stentrans.core.io import read


def test_get_reader_claims_slides_and_declines_everything_else(tmp_path):
    (tmp_path / "notes.txt.bak").write_text("x")
    (tmp_path / "empty").mkdir()
    r, c = block_sites("square", 3, 3)
    make_slide(r, c, "square").write_h5ad(tmp_path / "s.h5ad")
    assert get_reader(str(tmp_path / "s.h5ad")) is not None
    assert get_reader(str(tmp_path / "notes.txt.bak")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "missing.h5ad")) is None
    assert get_reader([str(tmp_path / "s.h5ad"), str(tmp_path / "s.h5ad")]) is None
    assert get_reader(None) is None


def _spot_world(layer, raster_doubled: bool, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    offset = 0.5 if raster_doubled else 0.0
    return np.array([layer.data_to_world((pi, qi + offset)) for pi, qi in zip(p, q, strict=True)])


@pytest.mark.parametrize(
    ("relpath", "doubled"),
    [
        ("visium_mouse_muscle_mckellar2021/Vis7B_5dpi", True),
        ("st_melanoma_thrane2018_mel1_rep2/mel1_rep2.h5ad", False),
        # with its H&E (MOB1.jpg); its pixel positions were fitted by hand, spot by spot, so they
        # scatter a few micrometres about the lattice's affine (6 um at most on a 100 um pitch)
        ("st2k_stutility_mob_hippo/MOB1_counts.tsv.gz", True),
    ],
)
def test_opened_slide_puts_every_spot_on_its_image_position(make_napari_viewer, relpath, doubled):
    path = shared_data_or_skip() / relpath
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-stentrans")
    adata = read(path)
    frame = DisplayFrame.of(adata)
    genes = [layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "gene"]
    assert len(genes) == 4 and all(layer.name in adata.var_names for layer in genes)
    layer = genes[0]
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    r0 = rows.min() - 1
    c0 = cols.min() - 1
    picks = np.linspace(0, adata.n_obs - 1, 25).astype(int)
    world = _spot_world(layer, doubled, rows[picks] - r0, cols[picks] - c0)
    expected = frame.um_per_pixel * adata.obsm["spatial"][picks, ::-1]
    tolerance = 10.0 if "MOB1" in relpath else 3.0  # um; Space Ranger rounds positions
    np.testing.assert_allclose(world, expected, atol=tolerance)
    # the spot's value is the gene's count there, read back through world_to_data
    gene = layer.name
    counts = np.asarray(adata[:, gene].X.todense()).ravel()
    for k in picks[:5]:
        p, q = np.round(layer.world_to_data(frame.um_per_pixel * adata.obsm["spatial"][k, ::-1])).astype(int)
        assert layer.data[p, q] == pytest.approx(counts[k])
    # every spot is drawn, those at zero count too (black, opaque); pixels without a spot are NaN,
    # which napari draws transparent: zero-count spots were see-through, so low tissue looked patchy
    spot_pixels = (2 if doubled else 1) * len(np.unique(np.column_stack([rows, cols]), axis=0))
    assert (~np.isnan(layer.data)).sum() == spot_pixels
    zero = np.flatnonzero(counts == 0)
    assert len(zero) > 0 and (np.nan_to_num(layer.data, nan=-1.0) == 0).sum() >= len(zero)
    assert layer.colormap.name == "magma"
    if "spatial" in adata.uns:
        he = next(layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "he")
        assert he.rgb and he.name.endswith("H&E")


@pytest.mark.parametrize("key", ["synthetic_visium", "synthetic_st"])
def test_sample_data_opens_with_truth_layers(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-stentrans", key)
    roles = [layer.metadata["stentrans"]["role"] for layer in viewer.layers]
    assert roles.count("gene") == 4 and roles.count("truth") == 4 and roles.count("he") == 1
    # the top of the layer list is the one visible gene (over the H&E); the truth lies under the
    # genes and above the H&E
    assert roles[-1] == "gene" and viewer.layers[-1].visible
    visible = [
        layer.name for layer in viewer.layers if layer.visible and layer.metadata["stentrans"]["role"] != "he"
    ]
    assert visible == [viewer.layers[-1].name]
    assert roles == ["he"] + ["truth"] * 4 + ["gene"] * 4
    gene = next(layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "gene")
    truth = viewer.layers[f"{gene.name} truth x2"]
    # half the pixel size, covering the same world extent
    np.testing.assert_allclose(
        np.abs(np.linalg.det(truth.affine.affine_matrix[:2, :2])),
        np.abs(np.linalg.det(gene.affine.affine_matrix[:2, :2])) / 4,
    )
    g_extent = np.array(gene.extent.world)
    t_extent = np.array(truth.extent.world)
    np.testing.assert_allclose(g_extent, t_extent, atol=0.6 * 200)


def test_bad_files_are_refused_with_the_file_named_and_the_viewer_unchanged(make_napari_viewer, tmp_path):
    """Each bad input of the CLI tests, opened in napari: an error naming file and problem, no layer."""
    import re

    from bad_inputs import CASES
    from napari_stentrans.core.io import ReadError

    viewer = make_napari_viewer()
    viewer.add_points([[1.0, 2.0]], name="user layer")
    before = [(layer.name, layer.data.copy()) for layer in viewer.layers]
    tried = 0
    for case, (make, pattern) in CASES.items():
        if case in ("missing path", "unknown format"):
            continue  # napari itself refuses these before any plugin reader runs
        folder = tmp_path / f"case{tried}"
        folder.mkdir()
        path = make(folder)
        with pytest.raises(ReadError) as info:
            viewer.open(path, plugin="napari-stentrans")
        assert re.search(pattern, str(info.value)) and path.name in str(info.value), (case, info.value)
        assert [layer.name for layer in viewer.layers] == [before[0][0]], case
        np.testing.assert_array_equal(viewer.layers[0].data, before[0][1])
        tried += 1
    assert tried == len(CASES) - 2


@pytest.fixture(scope="module")
def user_cases(tmp_path_factory):
    from helpers import build_cases

    return build_cases(
        tmp_path_factory.mktemp("cases"),
        "no-scalefactors",
        "positions-csv-gz",
        "counts-in-raw-h5ad",
        "visium-hd-bins",
    )


@pytest.mark.parametrize("case", ["Vis5A_no_scalefactors", "Vis5A_foreign_scalefactors"])
def test_slide_without_usable_scalefactors_opens_without_its_he(make_napari_viewer, user_cases, case):
    """Issue 15 case no-scalefactors: the H&E cannot be placed, so it is left out with a warning;
    the counts and positions open as usual (they raised KeyError in he_layers)."""
    from napari_stentrans.core.io import OptionalPartWarning

    path = str(user_cases / "no-scalefactors" / case)
    with pytest.warns(OptionalPartWarning, match="tissue_lowres_image.png"):
        layers = get_reader(path)(path)
    roles = [attrs["metadata"]["stentrans"]["role"] for _, attrs, _ in layers]
    assert roles == ["gene"] * 4
    viewer = make_napari_viewer()
    with pytest.warns(OptionalPartWarning):
        viewer.open(path, plugin="napari-stentrans")
    assert [layer.metadata["stentrans"]["role"] for layer in viewer.layers] == ["gene"] * 4


@pytest.mark.parametrize(
    ("relpath", "n_he"),
    [("positions-csv-gz/Vis5A_spatial_gz", 1), ("counts-in-raw-h5ad/counts_in_raw.h5ad", 0)],
)
def test_gzipped_spatial_files_and_counts_in_raw_open_in_napari(user_cases, relpath, n_he):
    path = str(user_cases / relpath)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counts_in_raw says where its counts came from
        layers = get_reader(path)(path)
    roles = [attrs["metadata"]["stentrans"]["role"] for _, attrs, _ in layers]
    assert roles == ["he"] * n_he + ["gene"] * 4
    gene = next(data for data, attrs, _ in layers if attrs["metadata"]["stentrans"]["role"] == "gene")
    assert np.nanmax(gene) > 0 and float(np.nanmax(gene)).is_integer()  # counts, not log-normalised values


def test_visium_hd_bins_open_over_their_image_at_the_bin_size(make_napari_viewer, tmp_path):
    """The project's synthetic Visium HD output: 16 um bins, each gene pixel one bin, every bin
    centred on its image position and on tissue colour in the H&E."""
    from napari_stentrans.synthetic import HD_MICRONS_PER_PIXEL, write_visium_hd

    folder = write_visium_hd(tmp_path / "outs", n_genes=20)
    from napari_stentrans.core.io import ReadError

    outs = str(tmp_path / "outs")
    with pytest.raises(ReadError, match=f"Visium HD.*{folder}"):  # claimed, then refused naming the bins
        get_reader(outs)(outs)
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin="napari-stentrans")
    adata = read(folder)
    frame = DisplayFrame.of(adata)
    assert frame.um_per_pixel == pytest.approx(HD_MICRONS_PER_PIXEL, rel=1e-6)
    he = next(layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "he")
    gene = next(layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "gene")
    np.testing.assert_allclose(np.abs(np.diag(gene.affine.affine_matrix)[:2]), 16.0, rtol=1e-6)
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    picks = np.linspace(0, adata.n_obs - 1, 25).astype(int)
    world = _spot_world(gene, False, rows[picks] - (rows.min() - 1), cols[picks] - (cols.min() - 1))
    expected = frame.um_per_pixel * adata.obsm["spatial"][picks, ::-1]
    np.testing.assert_allclose(world, expected, atol=1e-6)
    for w in expected:
        p, q = np.round(he.world_to_data(w)).astype(int)
        np.testing.assert_array_equal(he.data[p, q], (200, 130, 180))  # tissue colour under the bin


def test_a_file_of_two_libraries_opens_each_as_its_own_slide(make_napari_viewer, tmp_path):
    """Sections never share a lattice: each library is its own slide, layer names start with it."""
    import anndata as ad

    from napari_stentrans._napari import actions

    parts = {}
    r, c = block_sites("hex", 6, 12)
    for k, name in enumerate(["left", "right"]):
        parts[name] = make_slide(r, c + 14 * k, "hex", seed=k)
    both = ad.concat(parts, label="library_id", index_unique="-")
    both.write_h5ad(tmp_path / "two.h5ad")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "two.h5ad"), plugin="napari-stentrans")
    genes = [layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "gene"]
    assert len(genes) == 8
    by_library = {
        name: [layer for layer in genes if layer.name.startswith(f"{name} ")] for name in ("left", "right")
    }
    assert all(len(layers) == 4 for layers in by_library.values())
    slides = actions.slides(viewer)
    assert len(slides) == 2 and sorted(info.name for info in slides.values()) == ["two left", "two right"]
    for name, layers in by_library.items():
        adata = layers[0].metadata["stentrans"]["adata"]
        assert set(adata.obs["library_id"]) == {name} and adata.n_obs == len(r)
        assert len({layer.metadata["stentrans"]["slide_id"] for layer in layers}) == 1
        gene = layers[0].metadata["stentrans"]["gene"]
        assert layers[0].name == f"{name} {gene}"
    assert not any(layer.visible for layer in by_library["right"])  # the sections would overlap


@pytest.mark.parametrize("kind", ["hex", "square"])
def test_enhanced_file_opens_at_half_pitch_over_its_slide_and_exports_again(
    make_napari_viewer, tmp_path, kind
):
    """An enhanced .h5ad opens as 'GENE x2' layers: each site at its image position, half the spot spacing."""
    import napari_stentrans as st
    from helpers import with_image
    from napari_stentrans._napari.writer import write_enhanced
    from napari_stentrans.core.io import measured_spots

    r, c = block_sites(kind, 8, 12)
    adata = with_image(make_slide(r, c, kind))
    st.fit(adata).write(adata, tmp_path / "x2.h5ad")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "x2.h5ad"), plugin="napari-stentrans")
    enhanced = read(tmp_path / "x2.h5ad")
    roles = [layer.metadata["stentrans"]["role"] for layer in viewer.layers]
    assert roles == ["he", "enhanced", "enhanced", "enhanced", "enhanced"]
    layer = viewer.layers[1]
    assert layer.name.endswith(" x2") and layer.name[:-3] in enhanced.var_names
    frame = DisplayFrame.of(measured_spots(enhanced))
    rows, cols = enhanced.obs["array_row"].to_numpy(), enhanced.obs["array_col"].to_numpy()
    world = _spot_world(layer, kind != "square", rows - rows.min() + 1, cols - cols.min() + 1)
    np.testing.assert_allclose(world, frame.um_per_pixel * enhanced.obsm["spatial"][:, ::-1], atol=1e-6)
    # half the input's spot spacing: nearest sites one half pitch apart, in micrometres
    gaps = np.linalg.norm(world[:, None] - world[None], axis=-1)
    gaps[gaps == 0] = np.inf
    assert np.min(gaps) == pytest.approx(enhanced.uns["stentrans_lattice"]["pitch_um"], rel=1e-6)
    values = np.asarray(enhanced[:, layer.name[:-3]].X).ravel()
    p, q = rows - rows.min() + 1, cols - cols.min() + 1
    np.testing.assert_allclose(layer.data[p, q], values, rtol=1e-6)
    # the H&E sits where it sat under the input slide
    he = viewer.layers[0]
    np.testing.assert_allclose(he.affine.affine_matrix[:2, :2], np.eye(2) * frame.um_per_pixel / 0.5)
    # exported again from the opened layers: the same slide, and never onto the file it came from
    layers = [(lay.data, {"metadata": lay.metadata}, "image") for lay in viewer.layers]
    write_enhanced(str(tmp_path / "again.h5ad"), layers)
    again = read(tmp_path / "again.h5ad")
    np.testing.assert_array_equal(np.asarray(again.X), np.asarray(enhanced.X))
    with pytest.raises(Exception, match="refusing to overwrite"):
        write_enhanced(str(tmp_path / "x2.h5ad"), layers)


def test_opening_an_output_whose_genes_share_few_patterns_says_so(make_napari_viewer, tmp_path):
    """`stentrans enhance` warned that the output's genes follow few shared patterns; opened in
    napari, the same file said nothing."""
    from dataclasses import replace

    from napari.utils.notifications import notification_manager

    import napari_stentrans as st
    from napari_stentrans.core.classical import ClassicalParams

    r, c = block_sites("hex", 12, 20)
    adata = make_slide(r, c, "hex", n_genes=30)
    fitted = st.fit(adata)
    replace(fitted, params=ClassicalParams(1, None, None), _bases={}).write(adata, tmp_path / "one.h5ad")
    fitted.write(adata, tmp_path / "default.h5ad")
    warnings_of = {
        name: read(tmp_path / name).uns["stentrans"]["patterns"].get("warning")
        for name in ("one.h5ad", "default.h5ad")
    }
    assert warnings_of["one.h5ad"] is not None
    viewer = make_napari_viewer()
    for name, warning in warnings_of.items():
        before = len(notification_manager.records)
        viewer.open(str(tmp_path / name), plugin="napari-stentrans")
        said = [str(n.message) for n in notification_manager.records[before:]]
        assert said == ([f"{name}: {warning}"] if warning else []), name


def test_inputs_the_core_reads_open_in_napari(make_napari_viewer, tmp_path):
    """The inputs the napari reader used to decline: a folder holding one .h5ad and a .tsv.bz2 table."""
    import bz2

    import pandas as pd

    r, c = block_sites("square", 6, 6)
    slide = make_slide(r, c, "square")
    (tmp_path / "one").mkdir()
    slide.write_h5ad(tmp_path / "one/s.h5ad")
    table = pd.DataFrame(
        slide.X.toarray().astype(int),
        index=[f"{ci}x{ri}" for ri, ci in zip(r, c, strict=True)],
        columns=slide.var_names,
    )
    (tmp_path / "counts.tsv.bz2").write_bytes(bz2.compress(table.to_csv(sep="\t").encode()))
    viewer = make_napari_viewer()
    for path in (tmp_path / "one", tmp_path / "counts.tsv.bz2"):
        before = len(viewer.layers)
        viewer.open(str(path), plugin="napari-stentrans")
        added = viewer.layers[before:]
        assert len(added) == 4 and all(layer.metadata["stentrans"]["role"] == "gene" for layer in added)
        assert all(layer.metadata["stentrans"]["gene"] in slide.var_names for layer in added)


def test_reader_leaves_images_and_other_tables_to_other_readers(tmp_path):
    """Issue 14 item 5: the reader claimed every PNG, CSV and folder (napari then asked which plugin)."""
    import pandas as pd
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "he.png")
    (tmp_path / "layers.csv").write_text("barcode,layer\nAAAC-1,L1\nAAAG-1,L2\n")
    (tmp_path / "points.csv").write_text("index,axis-0,axis-1\n0,10.5,20.0\n1,11.0,21.5\n")
    (tmp_path / "mask.csv").write_text("array_row,array_col\n3,5\n4,6\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/readme.txt").write_text("hello\n")
    (tmp_path / "tissue_positions.csv").write_text(
        "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n"
        "ACGCCTGACACGCGCT-1,0,0,0,2433,1705\nTACCGATCCAACACTT-1,1,1,1,2554,1774\n"
    )
    (tmp_path / "tissue_positions_list.csv").write_text(
        "ACGCCTGACACGCGCT-1,0,0,0,2433,1705\nTACCGATCCAACACTT-1,1,1,1,2554,1774\n"
    )
    (tmp_path / "spot_data-selection.tsv").write_text(
        "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n7\t12\t7.02\t11.96\t1234.5\t2201.1\t1\n"
    )
    (tmp_path / "coords.csv").write_text(",x,y\nAAAC-1,10.5,20.0\nAAAG-1,11.5,22.0\n")
    others = ("he.png", "layers.csv", "points.csv", "mask.csv", "notes", "tissue_positions.csv")
    others += ("tissue_positions_list.csv", "spot_data-selection.tsv", "coords.csv")
    for name in others:
        assert get_reader(str(tmp_path / name)) is None, name
    counts = pd.DataFrame([[3, 0, 5], [1, 2, 0]], index=["1x1", "1x2"], columns=["A", "B", "C"])
    counts.to_csv(tmp_path / "counts.csv")
    counts.T.to_csv(tmp_path / "genes_as_rows.tsv", sep="\t")
    for name in ("counts.csv", "genes_as_rows.tsv"):
        assert get_reader(str(tmp_path / name)) is not None, name


def test_an_enhanced_slide_without_an_image_opens_with_one_distinct_gene_visible(tmp_path):
    """Without an H&E the first gene stayed visible beside the last (two translucent genes over
    each other), and the genes were the plain top-ranked ones, clones and families included."""
    import napari_stentrans as st
    from napari_stentrans._napari.layers import distinct_genes, enhanced_file_layers
    from napari_stentrans.core.display import spatially_variable_genes
    from napari_stentrans.core.io import measured_spots

    r, c = block_sites("square", 10, 12)
    adata = make_slide(r, c, "square", n_genes=24, seed=5)
    names = list(adata.var_names)
    names[:3] = ["RP11-34P13.7", "HLA-A", "HLA-B"]  # a clone and one family, the most spatial genes
    adata.var_names = names
    x = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=np.float32)
    x[:, :3] = np.where(c < 6, 1.0, 200.0)[:, None] * [1.0, 1.1, 1.2]
    adata.X = np.rint(x)
    st.fit(adata, preset="default").write(adata, tmp_path / "x2.h5ad")
    enhanced = st.read(tmp_path / "x2.h5ad")
    layers = enhanced_file_layers(enhanced, "x2")
    assert all(attrs["metadata"]["stentrans"]["role"] == "enhanced" for _, attrs, _ in layers)  # no H&E
    assert [attrs["visible"] for _, attrs, _ in layers] == [False, False, False, True]
    ranked = spatially_variable_genes(measured_spots(enhanced), n=16)
    shown = [attrs["name"][: -len(" x2")] for _, attrs, _ in layers]
    assert shown == distinct_genes(ranked, 4)[::-1] and shown[::-1] != ranked[:4]
    assert shown[-1] == distinct_genes(ranked, 4)[0]  # the visible one is the most spatially variable
    assert "RP11-34P13.7" not in shown and not {"HLA-A", "HLA-B"} <= set(shown)
