"""Issue 15, kinds 2 and 3: optional parts (scale factors, images, uns['spatial'], .parquet support)
that are missing, foreign or unreadable never break a slide, and messages name the real cause
(Visium HD bins, gzipped spatial files, counts in adata.raw, antibody features).

The inputs of ``shared/cases`` are built with ``make_cases.py`` into a temporary folder.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

from helpers import block_sites, build_cases, make_slide, one_error_line, run_cli, write_spaceranger
from napari_stentrans.core.io import (
    CountsFromRawWarning,
    DuplicateGeneNamesWarning,
    LeftOutFeaturesWarning,
    OptionalPartWarning,
    ReadError,
    read,
)

CASES = (
    "no-scalefactors",
    "parquet-positions",
    "visium-hd-bins",
    "positions-csv-gz",
    "counts-in-raw-h5ad",
    "antibody-capture",
)
HD = "visium-hd-bins/outs/binned_outputs/square_016um"
FAST = ["--genes", "5", "--train-genes", "16", "--quiet", "--device", "cpu"]  # the write is the point


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return build_cases(tmp_path_factory.mktemp("cases"), *CASES)


def _read_warning(path, category):
    with pytest.warns(category) as record:
        adata = read(path)
    return adata, [str(w.message) for w in record if issubclass(w.category, category)]


# ----------------------------------------------------------------------------- kind 2: optional parts


def test_missing_scalefactors_open_without_the_image_and_say_so(cases):
    folder = cases / "no-scalefactors/Vis5A_no_scalefactors"
    adata, messages = _read_warning(folder, OptionalPartWarning)
    assert adata.n_obs == 982 and adata.n_vars == 2000 and adata.uns["stentrans_lattice"]["kind"] == "hex"
    assert adata.uns["spatial"]["Vis5A_no_scalefactors"]["images"] == {}
    assert any("tissue_lowres_image.png" in m and "no scalefactors_json.json" in m for m in messages)


@pytest.mark.parametrize("case", ["Vis5A_no_scalefactors", "Vis5A_foreign_scalefactors"])
def test_enhance_writes_a_slide_whose_scalefactors_are_missing_or_foreign(cases, case, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    code, stdout, err = run_cli(["enhance", cases / "no-scalefactors" / case, "-o", out, *FAST], capsys)
    assert code == 0 and "wrote" in stdout, err
    assert "Traceback" not in err
    assert all(line.startswith("stentrans: ") for line in err.strip().splitlines())
    warnings_ = [line for line in err.splitlines() if line.startswith("stentrans: warning: ")]
    assert any("tissue_lowres_image.png" in line for line in warnings_)
    result = ad.read_h5ad(out)
    assert result.n_obs == 3800 and result.n_vars == 5
    assert result.uns["spatial"][case]["scalefactors"] == {}  # the fiducial list never reaches uns


def test_foreign_scalefactor_keys_are_named_and_left_out_at_read_time(cases):
    folder = cases / "no-scalefactors/Vis5A_foreign_scalefactors"
    adata, messages = _read_warning(folder, OptionalPartWarning)
    assert adata.uns["spatial"]["Vis5A_foreign_scalefactors"] == {
        "images": {},
        "scalefactors": {},
        "metadata": {},
    }
    (keys,) = [m for m in messages if "scalefactors_json.json: ignored 4 entries" in m]
    assert all(k in keys for k in ("fiducial", "transform", "serialNumber", "area"))


def _small_spaceranger(tmp_path):
    r, c = block_sites("hex", 6, 10)
    folder = tmp_path / "sr"
    write_spaceranger(folder, make_slide(r, c, "hex"), matrix="h5", positions="v2")
    return folder


@pytest.mark.parametrize(
    ("content", "kept", "message"),
    [
        (
            '{"tissue_lowres_scalef": 0.5, "spot_diameter_fullres": 9}',
            {"tissue_lowres_scalef": 0.5, "spot_diameter_fullres": 9.0},
            None,
        ),
        (
            '{"tissue_lowres_scalef": "0.5", "spot_diameter_fullres": 9}',
            {"spot_diameter_fullres": 9.0},
            "tissue_lowres_scalef='0.5'",
        ),
        ('{"tissue_lowres_scalef": -1, "spot_diameter_fullres": NaN}', {}, "tissue_lowres_scalef=-1"),
        ('{"tissue_lowres_scalef": true, "note": {"a": 1}}', {}, "note"),
        ("[0.5, 9.0]", {}, "not a mapping"),
        ('{"tissue_lowres_scalef": 0.5', {}, "cannot be read as JSON"),
        ("", {}, "cannot be read as JSON"),
    ],
)
def test_scalefactor_values_are_checked_when_read(tmp_path, content, kept, message):
    folder = _small_spaceranger(tmp_path)
    (folder / "spatial/scalefactors_json.json").write_text(content)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        adata = read(folder)
    entry = adata.uns["spatial"]["sr"]
    assert entry["scalefactors"] == kept
    assert list(entry["images"]) == (["lowres"] if "tissue_lowres_scalef" in kept else [])
    found = [str(w.message) for w in record if w.category is OptionalPartWarning]
    if message is None:
        assert found == []
    else:
        assert any(message in m and "scalefactors_json.json" in m for m in found), found


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n truncated", b"not an image at all"])
def test_an_image_that_does_not_decode_is_left_out_with_a_warning(tmp_path, content):
    folder = _small_spaceranger(tmp_path)
    (folder / "spatial/tissue_lowres_image.png").write_bytes(content)
    adata, messages = _read_warning(folder, OptionalPartWarning)
    assert adata.n_obs == 30 and adata.uns["spatial"]["sr"]["images"] == {}
    assert adata.uns["spatial"]["sr"]["scalefactors"]["tissue_lowres_scalef"] == 0.5
    assert any("tissue_lowres_image.png: cannot be decoded" in m for m in messages)


def test_odd_uns_spatial_of_an_h5ad_is_cleaned_at_read_time_and_the_output_writes(tmp_path, capsys):
    r, c = block_sites("square", 6, 6)
    adata = make_slide(r, c, "square")
    adata.uns["spatial"] = {
        "lib": {
            "images": {
                "hires": np.full((8, 8, 3), 200, np.uint8),
                "lowres": "not an image",
                "extra": np.zeros(3),
            },
            "scalefactors": {"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": "x", "weird": [1, 2]},
            "metadata": {"chemistry_description": "Visium", "nested": {"a": 1}},
        }
    }
    path = tmp_path / "odd.h5ad"
    adata.write_h5ad(path)
    got, messages = _read_warning(path, OptionalPartWarning)
    entry = got.uns["spatial"]["lib"]
    assert entry["scalefactors"] == {"tissue_hires_scalef": 0.5}
    assert list(entry["images"]) == ["hires"] and entry["metadata"] == {"chemistry_description": "Visium"}
    assert any("weird" in m for m in messages) and any("lowres" in m and "extra" in m for m in messages)
    code, _, err = run_cli(
        ["enhance", path, "-o", tmp_path / "out.h5ad", "--genes", "4", "--device", "cpu"], capsys
    )
    assert code == 0 and "Traceback" not in err
    assert ad.read_h5ad(tmp_path / "out.h5ad").uns["spatial"]["lib"]["scalefactors"] == {
        "tissue_hires_scalef": 0.5
    }


def test_uns_spatial_that_is_not_a_mapping_is_dropped(tmp_path):
    r, c = block_sites("square", 5, 5)
    adata = make_slide(r, c, "square")
    adata.uns["spatial"] = "lib"
    adata.write_h5ad(tmp_path / "s.h5ad")
    got, messages = _read_warning(tmp_path / "s.h5ad", OptionalPartWarning)
    assert got.uns["spatial"] == {} and got.n_obs == 25
    assert any("uns['spatial'] is a str" in m for m in messages)


def test_in_memory_slide_with_foreign_scalefactors_enhances_and_writes(tmp_path):
    """The Python API takes AnnData from anywhere: the output still holds only storable scale factors."""
    from napari_stentrans.core.files import write_h5ad
    from napari_stentrans.core.fitting import enhance

    r, c = block_sites("square", 6, 6)
    adata = make_slide(r, c, "square", n_genes=8)
    adata.uns["spatial"] = {
        "lib": {"images": {}, "scalefactors": {"fiducial": [{"x": 1.0}], "spot_diameter_fullres": 8.0}}
    }
    with pytest.warns(OptionalPartWarning, match="fiducial"):
        out = enhance(adata, device="cpu")
    assert out.uns["spatial"]["lib"]["scalefactors"] == {"spot_diameter_fullres": 4.0}
    write_h5ad(out, tmp_path / "out.h5ad")
    assert ad.read_h5ad(tmp_path / "out.h5ad").n_obs == out.n_obs


def test_parquet_positions_read_with_pyarrow(cases):
    adata = read(cases / "parquet-positions/Vis5A_parquet")
    assert adata.n_obs == 982 and adata.uns["stentrans_lattice"]["kind"] == "hex"
    assert list(adata.uns["spatial"]["Vis5A_parquet"]["images"]) == ["lowres"]


def test_parquet_without_pyarrow_is_one_line_with_the_install_command(cases, tmp_path, capsys, monkeypatch):
    folder = cases / "parquet-positions/Vis5A_parquet"
    parquet = folder / "spatial/tissue_positions.parquet"
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    monkeypatch.setitem(sys.modules, "fastparquet", None)
    with pytest.raises(ReadError) as info:
        read(folder)
    assert str(info.value).startswith(
        f"{parquet}: reading .parquet positions needs pyarrow: pip install pyarrow"
    )
    assert "napari-stentrans[" not in str(info.value)  # not on PyPI, and pyarrow is a base dependency
    for command in (["info", folder], ["enhance", folder, "-o", tmp_path / "out.h5ad", "--genes", "5"]):
        code, _, err = run_cli(command, capsys)
        line = one_error_line(err)
        assert code == 2 and str(parquet) in line and "pip install" in line
    assert list(tmp_path.iterdir()) == []


def test_pyarrow_is_a_base_dependency():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert any(dep.startswith("pyarrow") for dep in meta["project"]["dependencies"])


# ----------------------------------------------------------------------------- kind 3: Visium HD


def _neighbour_distances(xy: np.ndarray) -> np.ndarray:
    d, _ = cKDTree(xy).query(xy, k=2)
    return d[:, 1]


def test_visium_hd_bins_are_a_square_lattice_with_the_bin_pitch(cases):
    adata = read(cases / HD)
    lattice = adata.uns["stentrans_lattice"]
    assert (lattice["kind"], lattice["pitch_um"]) == ("square", 16.0) and adata.n_obs == 262
    scalefactors = adata.uns["spatial"]["square_016um"]["scalefactors"]
    um = adata.obsm["spatial"] * scalefactors["microns_per_pixel"]
    np.testing.assert_allclose(np.median(_neighbour_distances(um)), 16.0, rtol=1e-3)


def test_visium_hd_bins_enhance_to_8um_bins_from_the_command_line(cases, tmp_path, capsys):
    code, out, _ = run_cli(["info", cases / HD], capsys)
    assert code == 0 and "lattice:   square (pitch 16 um)" in out
    code, _, err = run_cli(
        ["enhance", cases / HD, "-o", tmp_path / "out.h5ad", "--genes", "10", "--device", "cpu"], capsys
    )
    assert code == 0, err
    result = ad.read_h5ad(tmp_path / "out.h5ad")
    assert result.uns["stentrans"]["pitch_um"] == 8.0
    np.testing.assert_allclose(_neighbour_distances(result.obsm["spatial_um"]), 8.0)
    scalefactors = result.uns["spatial"]["square_016um"]["scalefactors"]
    assert scalefactors["bin_size_um"] == 8.0
    px = result.obsm["spatial"] * scalefactors["microns_per_pixel"]
    np.testing.assert_allclose(np.median(_neighbour_distances(px)), 8.0, rtol=1e-3)


@pytest.mark.parametrize("sub", ["visium-hd-bins/outs", "visium-hd-bins/outs/binned_outputs"])
def test_visium_hd_top_folders_name_the_bin_folders(cases, sub, tmp_path, capsys):
    for command in (["info", cases / sub], ["enhance", cases / sub, "-o", tmp_path / "out.h5ad"]):
        code, _, err = run_cli(command, capsys)
        line = one_error_line(err)
        assert code == 2 and "Visium HD" in line and "square_016um" in line and str(cases / HD) in line
    assert list(tmp_path.iterdir()) == []


def test_synthetic_visium_hd_output_enhances_like_the_same_slide_on_a_legacy_st_grid(tmp_path):
    """The project's own HD fixture: the bins give the same predictions as the same counts read as
    a 200 um legacy ST slide (the lattice geometry is the same up to scale), at 8 um sites."""
    import napari_stentrans as st
    from napari_stentrans.synthetic import synthetic_slide, write_visium_hd

    folder = write_visium_hd(tmp_path / "outs", bin_um=16, n_genes=30, seed=0)
    assert folder == tmp_path / "outs/binned_outputs/square_016um"
    hd = read(folder)
    legacy = synthetic_slide("square", n_genes=30, seed=0)
    assert hd.uns["stentrans_lattice"]["pitch_um"] == 16.0
    np.testing.assert_array_equal(hd.X.toarray(), legacy.X.toarray())
    np.testing.assert_array_equal(hd.obs["array_row"], legacy.obs["array_row"])
    out_hd = st.fit(hd, device="cpu").enhance(hd)
    # the HD positions file is a tissue mask (enclosed sites outside it are not filled): the
    # legacy slide, which has none, is enhanced without hole filling to match
    out_st = st.fit(legacy, device="cpu", fill_holes=False).enhance(legacy, fill_holes=False)
    np.testing.assert_array_equal(out_hd.obs["array_col"], out_st.obs["array_col"])
    np.testing.assert_allclose(
        np.asarray(out_hd.X.todense() if sp.issparse(out_hd.X) else out_hd.X),
        np.asarray(out_st.X.todense() if sp.issparse(out_st.X) else out_st.X),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(_neighbour_distances(out_hd.obsm["spatial_um"]), 8.0)
    measured = out_hd.obs["kind"].to_numpy() == "measured"
    np.testing.assert_allclose(
        out_hd.obsm["spatial"][measured], hd[out_hd.obs["barcode"].to_numpy()[measured]].obsm["spatial"]
    )
    # the outs/ top of the fixture is refused with the bin folder named
    with pytest.raises(ReadError, match="Visium HD.*square_016um"):
        read(tmp_path / "outs")


def test_visium_hd_scalefactors_that_disagree_with_the_positions_are_refused(tmp_path):
    from napari_stentrans.synthetic import write_visium_hd

    folder = write_visium_hd(tmp_path / "outs", n_genes=10)
    sf = folder / "spatial/scalefactors_json.json"
    sf.write_text(json.dumps({**json.loads(sf.read_text()), "bin_size_um": 8.0}))
    with pytest.raises(ReadError, match=r"neighbouring bins are 16 um apart .* bin size is 8 um"):
        read(folder)


def test_square_positions_in_a_visium_folder_mention_visium_hd(cases, tmp_path):
    """Square bins without any sign of Visium HD (bin size, folder or barcode names): refused as
    off the hex lattice, with where Visium HD bins are read from."""
    folder = tmp_path / "renamed"
    shutil.copytree(cases / HD, folder)
    sf = folder / "spatial/scalefactors_json.json"
    sf.write_text(json.dumps({k: v for k, v in json.loads(sf.read_text()).items() if k != "bin_size_um"}))
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "r+") as f:
        barcodes = f["matrix/barcodes"][()]
        del f["matrix/barcodes"]
        f["matrix/barcodes"] = np.char.replace(barcodes, b"s_016um_", b"bin_")
    table = pd.read_parquet(folder / "spatial/tissue_positions.parquet")
    table["barcode"] = table["barcode"].str.replace("s_016um_", "bin_")
    table.to_parquet(folder / "spatial/tissue_positions.parquet")
    with pytest.raises(ReadError, match=r"not on the hex lattice.*Visium HD.*binned_outputs/square_NNNum"):
        read(folder)


# ----------------------------------------------------------------------------- kind 3: other wording


def test_gzipped_spatial_files_are_read_like_plain_ones(cases):
    gz = read(cases / "positions-csv-gz/Vis5A_spatial_gz", library_id="lib")
    plain = read(cases / "parquet-positions/Vis5A_parquet", library_id="lib")
    np.testing.assert_array_equal(gz.obs_names, plain.obs_names)
    np.testing.assert_array_equal(gz.X.toarray(), plain.X.toarray())
    np.testing.assert_array_equal(gz.obsm["spatial"], plain.obsm["spatial"])
    for key in ("array_row", "array_col", "in_tissue"):
        np.testing.assert_array_equal(gz.obs[key], plain.obs[key])
    assert gz.uns["spatial"]["lib"]["scalefactors"] == plain.uns["spatial"]["lib"]["scalefactors"]
    np.testing.assert_array_equal(
        gz.uns["spatial"]["lib"]["images"]["lowres"], plain.uns["spatial"]["lib"]["images"]["lowres"]
    )


def test_positions_in_another_compression_are_named(cases, tmp_path):
    folder = tmp_path / "bz"
    shutil.copytree(cases / "positions-csv-gz/Vis5A_spatial_gz", folder)
    src = folder / "spatial/tissue_positions_list.csv.gz"
    import bz2

    (folder / "spatial/tissue_positions_list.csv.bz2").write_bytes(
        bz2.compress(gzip.decompress(src.read_bytes()))
    )
    src.unlink()
    with pytest.raises(ReadError, match=r"found tissue_positions_list\.csv\.bz2: decompress it"):
        read(folder)


def test_counts_only_in_adata_raw_are_used_with_a_warning(cases, tmp_path, capsys):
    path = cases / "counts-in-raw-h5ad/counts_in_raw.h5ad"
    adata, messages = _read_warning(path, CountsFromRawWarning)
    stored = ad.read_h5ad(path)
    np.testing.assert_array_equal(adata.X.toarray(), stored.raw.X.toarray())
    assert adata.n_obs == 982 and adata.n_vars == 2000 and adata.raw is None
    assert "adata.raw" in messages[0] and str(path) in messages[0]
    code, out, err = run_cli(["info", path], capsys)
    assert code == 0 and "stentrans: warning:" in err and "adata.raw" in err


def test_normalised_raw_is_not_taken_and_the_message_points_at_adata_raw(tmp_path):
    r, c = block_sites("square", 5, 5)
    adata = make_slide(r, c, "square")
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    adata.raw = adata.copy()
    adata.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(ReadError, match=r"non-integer values.*adata\.raw"):
        read(tmp_path / "lognorm.h5ad")


def test_antibody_features_named_like_genes_are_no_duplicate_genes(cases):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        adata = read(cases / "antibody-capture/gex_protein_h5")
    assert not [w for w in record if w.category is DuplicateGeneNamesWarning]
    (left_out,) = [str(w.message) for w in record if w.category is LeftOutFeaturesWarning]
    assert left_out.endswith(
        "filtered_feature_bc_matrix.h5: left out 8 'Antibody Capture' features "
        "(only 'Gene Expression' is read)"
    )
    assert adata.n_vars == 2000 and not adata.var_names.str.endswith("-1").any()
    assert set(adata.var["feature_types"]) == {"Gene Expression"}
    assert adata.X.max() == 1823
    # and the reader says what it left out (they were dropped without a word)
    assert (
        "left out 8 'Antibody Capture' features (only 'Gene Expression' is read)"
        in (adata.uns["stentrans_read_note"])
    )


def test_an_mtx_folder_says_which_features_it_left_out(tmp_path):
    r, c = block_sites("hex", 6, 10)
    folder = tmp_path / "sr"
    write_spaceranger(folder, make_slide(r, c, "hex", n_genes=12), matrix="mtx", positions="v2")
    path = folder / "filtered_feature_bc_matrix" / "features.tsv.gz"
    features = pd.read_csv(path, sep="\t", header=None)
    features[2] = ["Gene Expression"] * 9 + ["Antibody Capture", "Antibody Capture", "CRISPR Guide Capture"]
    features.to_csv(path, sep="\t", header=False, index=False)
    with pytest.warns(LeftOutFeaturesWarning, match=r"filtered_feature_bc_matrix: left out 2 'Antibody"):
        adata = read(folder)  # a warning too: in Python the note alone went unseen
    assert adata.n_vars == 9
    note = "left out 2 'Antibody Capture', 1 'CRISPR Guide Capture' features (only 'Gene Expression' is read)"
    assert note in adata.uns["stentrans_read_note"]


def test_a_matrix_without_gene_expression_features_is_refused_by_name(tmp_path):
    folder = _small_spaceranger(tmp_path)
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "r+") as f:
        n = len(f["matrix/features/feature_type"])
        del f["matrix/features/feature_type"]
        f["matrix/features/feature_type"] = np.array([b"Antibody Capture"] * n)
    with pytest.raises(
        ReadError,
        match=r"filtered_feature_bc_matrix\.h5: no 'Gene Expression' features \(feature types: Antibody Capture\)",
    ):
        read(folder)


def test_info_says_what_was_left_out_once(cases, capsys):
    """``info`` prints the read note; the same words as a warning line above it would repeat it."""
    code, out, err = run_cli(["info", str(cases / "antibody-capture/gex_protein_h5")], capsys)
    assert code == 0
    assert "note:      left out 8 'Antibody Capture' features" in out
    assert "left out" not in err
