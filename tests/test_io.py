"""Readers: every shared dataset loads with the right lattice, and hand-built formats round-trip."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers import (
    block_sites,
    make_slide,
    shared_data_or_skip,
    write_slide_with_bad_count,
    write_spaceranger,
)
from napari_stentrans.core.io import ReadError, input_format, read, source_of

# (path below shared/data, lattice kind, spots after reading)
DATASETS = [
    ("visium_mouse_muscle_mckellar2021/Vis5A_2dpi", "hex", 982),
    ("visium_mouse_muscle_mckellar2021/Vis7B_5dpi", "hex", 1011),
    ("visium_mouse_embryo_cytassist_coexpressdeconvolve", "hex", 2898),
    ("visium_tiny_scanpy_testdata", "hex", 100),
    ("visium_human_dlpfc_maynard2021/151673", "hex", 3639),
    ("visium_human_dlpfc_maynard2021/151674", "hex", 3673),
    ("visium_human_dlpfc_maynard2021/151510_drsc_500genes", "hex", 4634),
    ("spatialdata_zarr_visium_dlpfc151674/151674.zarr", "hex", 3673),
    ("st_melanoma_thrane2018_mel1_rep2/mel1_rep2.h5ad", "square", 293),
    ("st_melanoma_thrane2018_mel1_rep2/counts.csv.gz", "square", 293),
    ("st_mouse_olfactory_bulb_stahl2016/mob_stahl2016.h5ad", "square", 262),
    ("st_mouse_olfactory_bulb_stahl2016/counts.csv.gz", "square", 262),
    ("st_breast_cancer_layers_stahl2016/layer2_fullgenes.h5ad", "square", 251),
    ("st_breast_cancer_layers_stahl2016/layer2_fullgenes_counts.csv.gz", "square", 251),
    ("st_breast_cancer_layers_stahl2016/paste_slice1_counts.csv.gz", "square", 254),
    ("st_breast_cancer_layers_stahl2016/paste_slice2_counts.csv.gz", "square", 251),
    ("st_breast_cancer_layers_stahl2016/paste_slice3_counts.csv.gz", "square", 264),
    ("st_breast_cancer_layers_stahl2016/paste_slice4_counts.csv.gz", "square", 262),
    *[
        (f"st_her2st_andersson2021/{s}_counts.tsv.gz", "square", n)
        for s, n in zip(
            ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"],
            [346, 295, 176, 306, 587, 691, 467, 613],
            strict=True,
        )
    ],
    ("st2k_stutility_mob_hippo/MOB1_counts.tsv.gz", "checkerboard", 379),
    ("st2k_stutility_mob_hippo/Hippo1_counts.tsv.gz", "checkerboard", 1098),
]


@pytest.mark.parametrize(("relpath", "kind", "n_spots"), DATASETS, ids=[d[0] for d in DATASETS])
def test_shared_dataset_loads(relpath, kind, n_spots):
    root = shared_data_or_skip()
    adata = read(root / relpath)
    assert adata.n_obs == n_spots
    assert adata.uns["stentrans_lattice"]["kind"] == kind
    assert adata.obs["array_row"].dtype == np.int64 and adata.obs["array_col"].dtype == np.int64
    assert adata.obsm["spatial"].shape == (n_spots, 2)
    assert not adata.obs[["array_row", "array_col"]].duplicated().any()
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32 and adata.X.min() >= 0
    if kind != "square":
        assert ((adata.obs["array_row"] + adata.obs["array_col"]) % 2 == 0).all()
    if relpath.endswith(".zarr") and importlib.util.find_spec("spatialdata") is None:
        return  # the table alone: the image of a SpatialData store needs spatialdata
    if kind == "hex":
        library = next(iter(adata.uns["spatial"].values()))
        assert "lowres" in library["images"] and "tissue_lowres_scalef" in library["scalefactors"]


def test_every_shared_dataset_folder_is_covered():
    root = shared_data_or_skip()
    not_slides = {
        "visium_human_idc_spatial_only_stentrans",  # positions and image only: refused below
    }
    covered = {d[0].split("/")[0] for d in DATASETS} | not_slides
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    assert folders <= covered, f"add the new dataset(s) {sorted(folders - covered)} to DATASETS"


def test_positions_only_visium_folder_is_refused_by_name():
    root = shared_data_or_skip()
    with pytest.raises(ReadError, match="no count matrix"):
        read(root / "visium_human_idc_spatial_only_stentrans")


def test_table_and_h5ad_of_the_same_slide_agree():
    root = shared_data_or_skip() / "st_melanoma_thrane2018_mel1_rep2"
    a = read(root / "mel1_rep2.h5ad")
    b = read(root / "counts.csv.gz")
    assert list(a.obs_names) == list(b.obs_names)
    np.testing.assert_array_equal(a.obs["array_row"], b.obs["array_row"])
    np.testing.assert_array_equal(a.obs["array_col"], b.obs["array_col"])
    assert a.obs.loc["7x15", "array_row"] == 7 and a.obs.loc["7x15", "array_col"] == 15
    assert (a.X != b.X).nnz == 0


# ----------------------------------------------------------------------------- hand-built formats


@pytest.mark.parametrize(("matrix", "positions"), [("h5", "v1"), ("mtx", "v2"), ("h5", "parquet")])
def test_spaceranger_folder_round_trip(tmp_path, matrix, positions):
    r, c = block_sites("hex", 6, 10)
    src = make_slide(r, c, "hex")
    write_spaceranger(tmp_path / "sr", src, matrix=matrix, positions=positions)
    adata = read(tmp_path / "sr")
    assert list(adata.obs_names) == list(src.obs_names)
    np.testing.assert_array_equal(adata.X.toarray(), src.X.toarray())
    np.testing.assert_array_equal(adata.obs["array_row"], r)
    np.testing.assert_allclose(adata.obsm["spatial"], src.obsm["spatial"])
    assert adata.uns["spatial"]["sr"]["images"]["lowres"].shape == (20, 30, 3)
    assert adata.uns["spatial"]["sr"]["scalefactors"]["spot_diameter_fullres"] == 9.0
    # the in-tissue position without counts is remembered for imputation
    np.testing.assert_array_equal(adata.uns["stentrans_lattice"]["in_tissue_unmeasured"], [[40, 40]])
    # the file it came from, as every writer and message names it; nothing for one built in memory
    assert source_of(adata) == str(tmp_path / "sr")
    del src.uns["stentrans_lattice"]
    assert source_of(src) == ""


def test_spaceranger_barcode_without_position_names_the_file(tmp_path):
    r, c = block_sites("hex", 4, 6)
    src = make_slide(r, c, "hex")
    write_spaceranger(tmp_path / "sr", src, matrix="h5", positions="v2")
    pos = pd.read_csv(tmp_path / "sr/spatial/tissue_positions.csv")
    pos.iloc[1:].to_csv(tmp_path / "sr/spatial/tissue_positions.csv", index=False)
    with pytest.raises(ReadError, match=r"tissue_positions.csv: 1 barcode\(s\) .* no position"):
        read(tmp_path / "sr")


def _st_table(tmp_path, ids, counts, name="counts.tsv"):
    table = pd.DataFrame(counts, index=ids, columns=[f"G{i}" for i in range(counts.shape[1])])
    table.to_csv(tmp_path / name, sep="\t")
    return tmp_path / name


def test_st_table_spot_ids_rounded_and_transposed_tables(tmp_path):
    counts = np.arange(12).reshape(4, 3)
    ids = ["3.02x5.1", "4x5", "3x6", "4.2x6"]  # "{x}x{y}": x is the column
    a = read(_st_table(tmp_path, ids, counts))
    np.testing.assert_array_equal(a.obs["array_col"], [3, 4, 3, 4])
    np.testing.assert_array_equal(a.obs["array_row"], [5, 5, 6, 6])
    (tmp_path / "t").mkdir()
    pd.DataFrame(counts.T, index=[f"G{i}" for i in range(3)], columns=ids).to_csv(tmp_path / "t/counts.csv")
    b = read(tmp_path / "t/counts.csv")
    np.testing.assert_array_equal(b.X.toarray(), counts)
    np.testing.assert_array_equal(b.obs["array_row"], a.obs["array_row"])


@pytest.mark.parametrize("genes_as", ["columns", "rows"])
def test_st_table_repeated_gene_names_are_kept_renamed_with_a_warning(tmp_path, genes_as):
    from napari_stentrans.core.io import DuplicateGeneNamesWarning

    counts = np.arange(12).reshape(4, 3)
    table = pd.DataFrame(counts, index=["1x1", "1x2", "2x1", "2x2"], columns=["Actb", "Gapdh", "Actb"])
    (table if genes_as == "columns" else table.T).to_csv(tmp_path / "counts.tsv", sep="\t")
    with pytest.warns(DuplicateGeneNamesWarning, match=r"counts\.tsv: 1 gene name\(s\) .*'Actb'") as said:
        a = read(tmp_path / "counts.tsv")
    assert [w.filename for w in said] == [__file__]  # the user's line, not the reader's module
    # the same names whichever way the table is turned (pandas alone renames header repeats "Actb.1")
    assert list(a.var_names) == ["Actb", "Gapdh", "Actb-1"]
    np.testing.assert_array_equal(a.X.toarray(), counts)


def test_st_table_off_lattice_id_is_refused(tmp_path):
    with pytest.raises(ReadError, match="on no lattice"):
        read(_st_table(tmp_path, ["3x5", "4.5x5"], np.ones((2, 2))))


def test_st_table_coords_file_is_found_beside_the_counts(tmp_path):
    _st_table(tmp_path, ["AAA", "CCC", "GGG"], np.ones((3, 2)), name="slideA_counts.tsv")
    pd.DataFrame({"barcode": ["GGG", "AAA", "CCC"], "array_x": [2, 1, 2], "array_y": [7, 7, 8]}).to_csv(
        tmp_path / "slideA_coords.csv", index=False
    )
    a = read(tmp_path / "slideA_counts.tsv")
    np.testing.assert_array_equal(a.obs["array_col"], [1, 2, 2])
    np.testing.assert_array_equal(a.obs["array_row"], [7, 8, 7])


def test_st_table_with_a_coordinates_file_of_part_of_its_spots_says_so(tmp_path):
    """It said "no coordinates file matches" about the file the user had just named."""
    counts = _st_table(tmp_path, [f"spot{i}" for i in range(16)], np.ones((16, 2)), name="a.tsv")
    part = pd.DataFrame({"barcode": [f"spot{i}" for i in range(5)], "x": range(5), "y": range(5)})
    part.to_csv(tmp_path / "part.csv", index=False)
    with pytest.raises(ReadError, match=r"part\.csv: has coordinates for only 5 of the 16 spots of a\.tsv"):
        read(counts, coords=tmp_path / "part.csv")


def test_st_table_spots_without_an_annotation_stay_missing(tmp_path):
    """An empty `layer` cell in the coordinates file is a missing annotation, not a category
    "nan" (it showed as a cluster named "nan" in legends; MOB has 2 such spots)."""
    _st_table(tmp_path, ["AAA", "CCC", "GGG"], np.ones((3, 2)), name="slideA_counts.tsv")
    coords = pd.DataFrame(
        {
            "barcode": ["GGG", "AAA", "CCC"],
            "array_x": [2, 1, 2],
            "array_y": [7, 7, 8],
            "layer": ["L1", None, 2],
        }
    )
    coords.to_csv(tmp_path / "slideA_coords.csv", index=False)
    layer = read(tmp_path / "slideA_counts.tsv").obs["layer"]  # in the counts' spot order
    assert list(layer.cat.categories) == ["2", "L1"]
    assert layer.isna().tolist() == [True, False, False] and layer.iloc[2] == "L1"


def test_st_table_without_any_coordinates_is_refused(tmp_path):
    with pytest.raises(ReadError, match="no coordinates"):
        read(_st_table(tmp_path, ["AAA", "CCC"], np.ones((2, 2)), name="x.tsv"))


def test_h5ad_without_array_coordinates_recovers_the_lattice(tmp_path):
    r, c = block_sites("hex", 8, 12)
    src = make_slide(r, c, "hex")
    del src.obs["array_row"], src.obs["array_col"], src.uns["stentrans_lattice"]
    src.write_h5ad(tmp_path / "s.h5ad")
    a = read(tmp_path / "s.h5ad")
    assert a.uns["stentrans_lattice"]["kind"] == "hex"
    xy = a.obsm["spatial"]
    from napari_stentrans.core.lattice import Lattice

    rec = Lattice("hex").physical(a.obs["array_row"], a.obs["array_col"])
    d_rec = np.linalg.norm(rec[:, None] - rec[None], axis=-1)
    d_img = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.testing.assert_allclose(d_rec / 100.0, d_img / 10.0, atol=1e-6)


@pytest.mark.parametrize(
    ("value", "message"), [(np.nan, "NaN or infinite"), (-1.0, "negative"), (0.5, "non-integer")]
)
def test_invalid_counts_are_refused(tmp_path, value, message):
    with pytest.raises(ReadError, match=message):
        read(write_slide_with_bad_count(tmp_path, value))


def test_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "x.xlsx").write_text("nope")
    with pytest.raises(ReadError, match="unknown format"):
        read(tmp_path / "x.xlsx")
    with pytest.raises(ReadError, match="no such file"):
        read(tmp_path / "missing.h5ad")


@pytest.mark.parametrize(
    ("section", "n_labelled"),
    [("151673", 3611), ("151674", 3635), ("151510_drsc_500genes", 4595)],
)
def test_dlpfc_sections_carry_their_layer_labels(section, n_labelled):
    """The full DLPFC sections come with the authors' layer labels (L1-L6, WM) for the ARI."""
    from napari_stentrans.core.io.labels import read_labels

    folder = shared_data_or_skip() / "visium_human_dlpfc_maynard2021" / section
    adata = read(folder)
    labels = read_labels(folder / "layer_annotations.csv", adata.obs_names)
    labelled = labels[labels != "nan"]
    assert len(labelled) == n_labelled
    assert set(labelled) == {"L1", "L2", "L3", "L4", "L5", "L6", "WM"}


@pytest.mark.parametrize("genes_as", ["columns", "rows"])
def test_st_table_non_numeric_cell_is_named_whichever_way_the_table_is_turned(tmp_path, genes_as):
    # one whole-table conversion (not one per gene) must still name the spot and the gene
    counts = pd.DataFrame(
        np.arange(12).reshape(4, 3), index=["1x1", "1x2", "2x1", "2x2"], columns=["A", "B", "C"]
    )
    counts = counts.astype(object)
    counts.loc["2x1", "B"] = "seven"
    (counts if genes_as == "columns" else counts.T).to_csv(tmp_path / "counts.tsv", sep="\t")
    with pytest.raises(ReadError, match=r"counts\.tsv: non-numeric count 'seven' at spot '2x1', gene 'B'"):
        read(tmp_path / "counts.tsv")


@pytest.mark.parametrize("name", ["counts.tsv.bz2", "counts.txt.gz", "counts.txt.xz"])
def test_st_table_compressed_header_keeps_repeated_gene_names(tmp_path, name):
    table = pd.DataFrame(
        np.arange(12).reshape(4, 3), index=["1x1", "1x2", "2x1", "2x2"], columns=["Actb", "Gapdh", "Actb"]
    )
    table.to_csv(tmp_path / name, sep="\t", encoding="utf-8-sig")  # a byte-order mark too
    with pytest.warns(UserWarning, match="Actb"):
        a = read(tmp_path / name)
    assert list(a.var_names) == ["Actb", "Gapdh", "Actb-1"]
    assert list(a.obs_names) == ["1x1", "1x2", "2x1", "2x2"]
    np.testing.assert_array_equal(a.X.toarray(), table.to_numpy())


def test_a_selection_table_of_another_section_is_refused_and_unlisted_spots_are_counted(tmp_path):
    """her2st A1's counts with B1's selection table kept 210 of 346 spots and blamed `selected`."""
    ids = [f"{x}x{y}" for y in range(2, 12) for x in range(2, 12)]  # 100 spots
    counts = _st_table(tmp_path, ids, np.ones((len(ids), 2)), name="A1_counts.tsv")

    def selection(xs, ys, name):
        xy = [(x, y) for y in ys for x in xs]
        pd.DataFrame({"x": [x for x, _ in xy], "y": [y for _, y in xy], "selected": 1}).to_csv(
            tmp_path / name, sep="\t", index=False
        )
        return tmp_path / name

    other = selection(range(6, 16), range(2, 12), "B1_selection.tsv")  # 40 % of it lies elsewhere
    with pytest.raises(
        ReadError, match="40 of its 100 selected spots have no counts and 40 of the counts table's"
    ):
        read(counts, coords=other)
    # a table that leaves out a few spots of the counts (off tissue) reads, and says how many
    own = selection(range(2, 13), range(2, 11), "A1_selection.tsv")  # the last row not listed, 9 more
    a = read(counts, coords=own)
    assert a.n_obs == 90
    assert a.uns["stentrans_read_note"].endswith(
        "; 10 spots of the counts table are not listed in A1_selection.tsv (left out)"
        "; 9 selected spots of A1_selection.tsv have no counts (left out)"
    )


def _st_section_with_image(folder, size, name="MOB9", px_per_unit=20.0, origin=100.0):
    """An STUtility-style section: counts, alignment table with pixel positions, and an image."""
    from PIL import Image

    xy = [(x, y) for y in range(2, 12) for x in range(2, 12) if (x + y) % 2 == 0]
    ids = [f"{x}x{y}" for x, y in xy]
    counts = _st_table(folder, ids, np.arange(len(ids) * 2).reshape(-1, 2) + 1.0, name=f"{name}_counts.tsv")
    pd.DataFrame(
        {
            "x": [x for x, _ in xy],
            "y": [y for _, y in xy],
            "new_x": [x for x, _ in xy],
            "new_y": [y for _, y in xy],
            "pixel_x": [origin + px_per_unit * x for x, _ in xy],
            "pixel_y": [origin + px_per_unit * y for _, y in xy],
            "selected": 1,
        }
    ).to_csv(folder / f"alignment_table_{name}.tsv", sep="\t", index=False)
    image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    image[:, :, 0] = 200  # tissue colour
    Image.fromarray(image).save(folder / f"{name}.jpg")
    return counts


def test_an_st_sections_h5e_image_beside_its_counts_is_placed_under_the_spots(tmp_path):
    """STUtility's MOB1.jpg beside MOB1_counts and its alignment table was not shown."""
    from napari_stentrans.core.display import DisplayFrame

    counts = _st_section_with_image(tmp_path, (600, 500))
    a = read(counts)
    entry = a.uns["spatial"]["MOB9"]
    assert (
        entry["images"]["hires"].shape == (500, 600, 3)
        and entry["scalefactors"]["tissue_hires_scalef"] == 1.0
    )
    assert a.uns["stentrans_read_note"].endswith("; H&E: MOB9.jpg (600 x 500 px)")
    # the spots' diameter in image pixels, which scanpy.pl.spatial needs: half the 100 um pitch
    # (a diagonal step of 20 x sqrt(2) pixels on this checkerboard array)
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(0.5 * 20.0 * np.sqrt(2))
    # a spot's world position is its pixel position in the image's frame
    frame = DisplayFrame.of(a)
    world = frame.world(a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy())
    np.testing.assert_allclose(world / frame.um_per_pixel, a.obsm["spatial"][:, ::-1], atol=1e-6)
    # a large scan is kept at 2,000 pixels on its longest side, with its scale
    large = tmp_path / "large"
    large.mkdir()
    a = read(_st_section_with_image(large, (5000, 3000), px_per_unit=250.0))
    entry = a.uns["spatial"]["MOB9"]
    assert entry["images"]["hires"].shape == (1200, 2000, 3)
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(0.4)


def test_an_st_image_that_does_not_hold_the_spots_is_left_out_with_a_warning(tmp_path):
    from napari_stentrans.core.io import OptionalPartWarning

    counts = _st_section_with_image(tmp_path, (200, 200))  # the spots reach pixel 320
    with pytest.warns(
        OptionalPartWarning, match=r"MOB9.jpg: 200 x 200 pixels, but the spots' pixel_x, pixel_y reach 320"
    ):
        a = read(counts)
    assert "spatial" not in a.uns and a.n_obs == 50
    (tmp_path / "MOB9.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(OptionalPartWarning, match=r"MOB9.jpg: cannot be decoded"):
        a = read(counts)
    assert "spatial" not in a.uns and a.n_obs == 50
    (tmp_path / "MOB9.jpg").unlink()
    a = read(counts)  # no image: nothing to say
    assert "spatial" not in a.uns and "H&E" not in a.uns.get("stentrans_read_note", "")


def test_st2k_mob1_reads_with_its_h5e_image(shared_data):
    a = read(shared_data / "st2k_stutility_mob_hippo" / "MOB1_counts.tsv.gz")
    entry = a.uns["spatial"]["MOB1"]
    assert entry["images"]["hires"].shape == (1905, 1905, 3)
    assert entry["scalefactors"]["tissue_hires_scalef"] == 1.0
    assert 14.0 < entry["scalefactors"]["spot_diameter_fullres"] < 18.0  # 50 um at about 3.1 um/px
    # the tissue (darker than the glass) lies under the selected spots
    image = entry["images"]["hires"].mean(axis=2)
    x, y = np.round(a.obsm["spatial"]).astype(int).T
    assert image[y, x].mean() < image.mean() - 10


def test_a_folder_of_st_sections_names_its_counts_tables(tmp_path):
    """A new user passed the her2st folder (8 sections' tables): the refusal said only 'pass a
    file instead'; it names the counts tables, one of them in full."""
    for name in ("B1_counts.tsv.gz", "A1_counts.tsv.gz", "A1_selection.tsv", "SOURCE.md"):
        (tmp_path / name).write_text("x\n")
    with pytest.raises(
        ReadError, match=r"pass one of its 2 counts tables instead, e\.g\. .*A1_counts\.tsv\.gz$"
    ):
        read(tmp_path)
    for name in ("B1_counts.tsv.gz", "A1_counts.tsv.gz", "A1_selection.tsv"):
        (tmp_path / name).unlink()
    with pytest.raises(ReadError, match=r"holds no \.h5ad or SpatialData store; pass a file instead$"):
        read(tmp_path)


def test_a_folder_read_through_its_only_h5ad_says_which_file(tmp_path):
    r, c = block_sites("square", 4, 4)
    make_slide(r, c, "square").write_h5ad(tmp_path / "mel1_rep2.h5ad")
    (tmp_path / "counts.csv").write_text("unused table beside it\n")
    a = read(tmp_path)
    assert a.n_obs == 16 and a.uns["stentrans_read_note"] == "read mel1_rep2.h5ad, the folder's only .h5ad"
    # two slides in one folder: which one is meant is the user's call
    make_slide(r, c, "square").write_h5ad(tmp_path / "mel1_rep1.h5ad")
    assert input_format(tmp_path) is None
    with pytest.raises(
        ReadError, match=r"holds 2 slides \(mel1_rep1.h5ad, mel1_rep2.h5ad\); open one of them"
    ):
        read(tmp_path)


def test_warnings_at_the_callers_line_also_on_error_and_never_from_a_worker_thread():
    """The public API's warnings name the caller's line (st.read, st.enhance), even when the call
    then raises; a worker thread's call leaves the process-wide warning state alone (napari reads
    slides in workers: two overlapping recorders could swallow every later warning)."""
    import sys
    import threading
    import warnings

    from napari_stentrans.core.caller import warns_at_caller
    from napari_stentrans.core.io.common import DuplicateGeneNamesWarning

    @warns_at_caller
    def deep(fail: bool):
        warnings.warn("first", DuplicateGeneNamesWarning, stacklevel=1)  # this line, unless re-issued
        if fail:
            raise ValueError("then an error")
        return warnings.showwarning

    own_line = deep.__wrapped__.__code__.co_firstlineno + 2
    with pytest.warns(UserWarning, match="first") as said:
        call_line = sys._getframe().f_lineno + 1
        deep(False)
    assert [(w.filename, w.lineno) for w in said] == [(__file__, call_line)]
    with pytest.warns(UserWarning, match="first") as said, pytest.raises(ValueError, match="then an error"):
        deep(True)
    assert [w.filename for w in said] == [__file__]
    seen = {}
    before = warnings.showwarning
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        worker = threading.Thread(target=lambda: seen.update(hook=deep(False)))
        worker.start()
        worker.join()
        assert seen["hook"] is warnings.showwarning  # the worker swapped nothing in
    assert warnings.showwarning is before
    assert [w.lineno for w in said] == [own_line]  # its own line: nothing re-issued


def test_other_libraries_warnings_keep_their_line_and_their_filters():
    """Only the engine's warnings move to the caller's line: another library's warning is shown
    where it was issued, and a DeprecationWarning that Python's default filters hide stays hidden
    (a user saw ome_zarr's deprecation notice at their own `st.read` line)."""
    import sys
    import warnings

    from napari_stentrans.core.caller import warns_at_caller

    @warns_at_caller
    def reads():
        warnings.warn("a library's notice", UserWarning, stacklevel=1)
        warnings.warn("a library's deprecation", DeprecationWarning, stacklevel=1)
        return 1

    library_line = reads.__wrapped__.__code__.co_firstlineno + 2
    with warnings.catch_warnings(record=True) as said:
        warnings.resetwarnings()  # Python's defaults: DeprecationWarning shown only in __main__
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        call_line = sys._getframe().f_lineno + 1
        assert reads() == 1
    assert [(str(w.message), w.lineno) for w in said] == [("a library's notice", library_line)]
    assert call_line not in [w.lineno for w in said]
    with warnings.catch_warnings(record=True) as said:  # a user's ignore filter is kept
        warnings.simplefilter("ignore")
        reads()
    assert said == []
