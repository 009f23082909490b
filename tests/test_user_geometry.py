"""Issue 15, kind 1: real users' files never give silently wrong geometry or lose spots.

The inputs of cases 2-4 of ``shared/cases/README.md`` (zero-count spots, two sections in one
.h5ad, array_row/array_col swapped) are built with ``make_cases.py`` into a temporary folder and
checked against the README's "Expected"; small hand-built slides check the same rules without
the shared data.
"""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers import SHARED_DATA, block_sites, make_slide, shared_data_or_skip
from napari_stentrans.cli import main
from napari_stentrans.core.errors import InputError, ReadError, SeveralLibrariesError
from napari_stentrans.core.io import read
from napari_stentrans.core.sites import output_sites
from napari_stentrans.core.slide import Slide

CASES = ("zero-count-spots", "two-sections-in-one-h5ad", "row-col-swapped-h5ad")
FAST = ["--genes", "5", "--train-genes", "50", "--quiet", "--device", "cpu"]
EDGE_SPOTS = {  # the README's 4 empty spots on the tissue edge that used to vanish
    "GGCGCTTCATTCCCTG-1": (67, 71),
    "TCAATACGCCGTCATG-1": (63, 61),
    "TCATATGAGCTTTGTT-1": (64, 62),
    "TCATCCTCAGCTGCTT-1": (68, 90),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """The three cases' inputs, built once for this module (about 4 s)."""
    shared_data = shared_data_or_skip()  # the shared_data fixture, at module scope
    script = shared_data.parent / "cases" / "make_cases.py"
    if not script.exists():
        pytest.skip(f"{script} not found")
    out = tmp_path_factory.mktemp("cases")
    env = {**os.environ, "STENTRANS_SHARED_DATA": str(SHARED_DATA)}
    subprocess.run([sys.executable, str(script), str(out), *CASES], check=True, env=env, capture_output=True)
    return out


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _sites(path) -> set[tuple[int, int, str]]:
    sites = output_sites(Slide.from_adata(read(path)))
    return set(zip(sites.row.tolist(), sites.col.tolist(), sites.kind.tolist(), strict=True))


# ----------------------------------------------------------------------------- zero-count spots


def test_empty_spots_are_imputed_with_their_barcodes(cases, tmp_path, capsys):
    folder = cases / "zero-count-spots" / "Vis5A_empty_spots"
    adata = read(folder)
    out = tmp_path / "out.h5ad"
    code, stdout, _ = run_cli(["enhance", folder, "-o", out, *FAST], capsys)
    assert code == 0, stdout
    result = ad.read_h5ad(out)
    barcodes = result.obs["barcode"].dropna()
    assert set(barcodes) == set(adata.obs_names)  # every spot of the input is in the output
    # 25 without counts and 2 near-empty (12 and 20 counts against a median of 4,033)
    assert len(result) == 3800 and (result.obs["kind"] == "imputed").sum() == 27
    for barcode, (row, col) in EDGE_SPOTS.items():
        site = result.obs[result.obs["barcode"] == barcode]
        assert len(site) == 1 and site["kind"].iloc[0] == "imputed"
        assert (site["array_row"].iloc[0], site["array_col"].iloc[0]) == (2 * row, 2 * col)
    assert np.isfinite(result.X).all()


def test_an_empty_spot_and_a_missing_spot_give_the_same_sites(cases):
    base = cases / "zero-count-spots"
    absent = _sites(base / "Vis5A_spots_absent")
    assert len(absent) == 3800
    assert _sites(base / "Vis5A_empty_spots") == absent


def test_in_tissue_spots_missing_from_the_matrix_keep_their_barcodes(cases, tmp_path, capsys):
    """New-user trial: the 25 spots absent from the matrix were imputed with an empty barcode,
    although the positions file names them."""
    import pandas as pd

    folder = cases / "zero-count-spots" / "Vis5A_spots_absent"
    adata = read(folder)
    positions = pd.read_csv(next((folder / "spatial").glob("tissue_positions*.csv")), header=None)
    if not str(positions.iloc[0, 1]).isdigit():  # a header line
        positions = positions.iloc[1:]
    positions = positions.set_index(0)
    in_tissue = positions[positions.iloc[:, 0].astype(int) == 1]
    absent = in_tissue.index.difference(adata.obs_names)
    assert len(absent) == 25
    out = tmp_path / "out.h5ad"
    code, stdout, _ = run_cli(["enhance", folder, "-o", out, *FAST], capsys)
    assert code == 0, stdout
    obs = ad.read_h5ad(out).obs
    named = obs[obs["barcode"].isin(absent)]
    assert len(named) == 25 and set(named["kind"]) == {"imputed"}
    rows = in_tissue.loc[named["barcode"]].iloc[:, 1:3].astype(int).to_numpy()
    np.testing.assert_array_equal(named[["array_row", "array_col"]].to_numpy(), 2 * rows)
    assert obs["barcode"].dropna().is_unique


def test_a_shallow_slide_keeps_every_spot(cases):
    adata = read(cases / "zero-count-spots" / "Vis5A_thin_1pct")
    slide = Slide.from_adata(adata)
    sites = output_sites(slide)
    spots = sites.spot[sites.spot >= 0]
    assert sorted(spots.tolist()) == list(range(adata.n_obs))  # each of the 982 spots once
    empty = np.flatnonzero(slide.depth == 0)
    assert len(empty) == 24
    assert set(sites.kind[np.isin(sites.spot, empty)]) == {"imputed"}


def test_edge_spots_without_counts_are_imputed_on_a_small_slide():
    r, c = block_sites("hex", 8, 16)
    adata = make_slide(r, c, "hex")
    edge = np.flatnonzero((r == 0) | (c == c.max()))[:3]
    x = adata.X.toarray()
    x[edge] = 0
    adata.X = sp.csr_matrix(x)
    sites = output_sites(Slide.from_adata(adata))
    assert sorted(sites.spot[sites.spot >= 0].tolist()) == list(range(adata.n_obs))
    assert set(sites.kind[np.isin(sites.spot, edge)]) == {"imputed"}


# ----------------------------------------------------------------------------- several libraries


@pytest.mark.parametrize("name", ["two_sections_whole", "two_sections_halves"])
def test_two_sections_are_refused_in_one_line_naming_them(cases, name, tmp_path, capsys):
    path = cases / "two-sections-in-one-h5ad" / f"{name}.h5ad"
    for command in (["info", path], ["enhance", path, "-o", tmp_path / "out.h5ad", *FAST]):
        code, _, err = run_cli(command, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("stentrans: error:")
        assert "'Vis5A_2dpi'" in err and "'Vis7B_5dpi'" in err and "--library NAME" in err
    assert not (tmp_path / "out.h5ad").exists()
    with pytest.raises(SeveralLibrariesError) as refused:
        read(path)
    assert refused.value.libraries == ["Vis5A_2dpi", "Vis7B_5dpi"]


def test_one_library_is_read_alone_and_named_in_the_output(cases, tmp_path, capsys):
    path = cases / "two-sections-in-one-h5ad" / "two_sections_halves.h5ad"
    whole = ad.read_h5ad(path)
    mine = whole.obs["library_id"] == "Vis7B_5dpi"
    adata = read(path, library="Vis7B_5dpi")
    assert adata.n_obs == int(mine.sum()) == 239
    assert list(adata.uns["spatial"]) == ["Vis7B_5dpi"]
    assert set(adata.obs["library_id"]) == {"Vis7B_5dpi"}
    out = tmp_path / "out.h5ad"
    code, stdout, _ = run_cli(["enhance", path, "--library", "Vis7B_5dpi", "-o", out, *FAST], capsys)
    assert code == 0, stdout
    result = ad.read_h5ad(out)
    assert set(result.obs["library_id"]) == {"Vis7B_5dpi"}
    assert result.uns["stentrans"]["library_id"] == "Vis7B_5dpi"
    assert list(result.uns["spatial"]) == ["Vis7B_5dpi"]
    # no site between the two animals: every site lies within the chosen section's columns
    cols = whole.obs["array_col"][mine]
    assert result.obs["array_col"].min() >= 2 * cols.min() - 1
    assert set(result.obs["barcode"].dropna()) == set(whole.obs_names[mine])


def test_an_unknown_library_is_refused_naming_the_libraries(cases, tmp_path, capsys):
    path = cases / "two-sections-in-one-h5ad" / "two_sections_whole.h5ad"
    assert read(path, library="Vis5A_2dpi").n_obs == 982
    code, _, err = run_cli(["info", path, "--library", "Vis5A"], capsys)
    assert code == 2 and "no library 'Vis5A'" in err and "'Vis5A_2dpi', 'Vis7B_5dpi'" in err


def _two_library_file(tmp_path):
    r, c = block_sites("hex", 6, 12)
    parts = {}
    for k, name in enumerate(["left", "right"]):
        part = make_slide(r, c + 14 * k, "hex", seed=k)
        part.uns = {"spatial": {name: {"images": {}, "scalefactors": {"spot_diameter_fullres": 5.0}}}}
        parts[name] = part
    both = ad.concat(parts, label="library_id", uns_merge="unique", index_unique="-")
    path = tmp_path / "two.h5ad"
    both.write_h5ad(path)
    return path, both


def test_library_selection_on_a_small_file(tmp_path):
    path, both = _two_library_file(tmp_path)
    with pytest.raises(SeveralLibrariesError, match=r"'left' \(36 spots\), 'right' \(36 spots\)"):
        read(path)
    right = read(path, library="right")
    assert list(right.obs_names) == list(both.obs_names[both.obs["library_id"] == "right"])
    assert list(right.uns["spatial"]) == ["right"]
    assert read(path, library_id="left").n_obs == 36  # the former name of the parameter
    with pytest.raises(InputError, match="disagree"):
        read(path, library="left", library_id="right")
    with pytest.raises(ReadError, match="no library 'middle'"):
        read(path, library="middle")
    with pytest.raises(InputError, match="2 libraries"):  # never merged in memory either
        Slide.from_adata(both)


def test_several_images_without_library_column_are_refused(tmp_path):
    path, both = _two_library_file(tmp_path)
    del both.obs["library_id"]
    both = both[both.obs["array_col"] < 12].copy()  # one section's spots, two images
    both.uns = ad.read_h5ad(path).uns
    both.write_h5ad(path)
    with pytest.raises(ReadError, match="no 'library_id' column"):
        read(path)


# ----------------------------------------------------------------------------- swapped coordinates


def test_swapped_row_and_col_are_refused(cases, tmp_path, capsys):
    path = cases / "row-col-swapped-h5ad" / "row_col_swapped.h5ad"
    out = tmp_path / "out.h5ad"
    code, _, err = run_cli(["enhance", path, "-o", out, *FAST], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(path) in err and "array_row and array_col look swapped" in err
    assert not out.exists()
    reference = read(cases / "row-col-swapped-h5ad" / "reference.h5ad")
    assert reference.uns["stentrans_lattice"]["kind"] == "hex" and reference.n_obs == 982


def test_swapped_small_slide_is_refused_in_h5ad_and_space_ranger_folder(tmp_path):
    from helpers import write_spaceranger

    r, c = block_sites("hex", 8, 14)
    adata = make_slide(r, c, "hex")
    del adata.uns["stentrans_lattice"]
    swapped = adata.copy()
    swapped.obs["array_row"], swapped.obs["array_col"] = c, r
    swapped.write_h5ad(tmp_path / "swapped.h5ad")
    with pytest.raises(ReadError, match="swapped.h5ad: array_row and array_col look swapped"):
        read(tmp_path / "swapped.h5ad")
    write_spaceranger(tmp_path / "sr", swapped, matrix="h5", positions="v2")
    with pytest.raises(ReadError, match="look swapped"):
        read(tmp_path / "sr")
    adata.write_h5ad(tmp_path / "right.h5ad")
    assert read(tmp_path / "right.h5ad").uns["stentrans_lattice"]["kind"] == "hex"


def test_coordinates_that_disagree_with_the_positions_are_refused(tmp_path):
    r, c = block_sites("square", 8, 8)
    adata = make_slide(r, c, "square")
    del adata.uns["stentrans_lattice"]
    order = np.random.default_rng(0).permutation(adata.n_obs)
    adata.obsm["spatial"] = adata.obsm["spatial"][order]  # positions of other spots
    adata.write_h5ad(tmp_path / "shuffled.h5ad")
    with pytest.raises(ReadError, match="more than half a spot pitch"):
        read(tmp_path / "shuffled.h5ad")


def test_library_column_of_a_one_library_file_is_kept(tmp_path):
    r, c = block_sites("square", 6, 6)
    adata = make_slide(r, c, "square")
    adata.obs["library_id"] = pd.Categorical(["s1"] * adata.n_obs)
    adata.write_h5ad(tmp_path / "one.h5ad")
    assert set(read(tmp_path / "one.h5ad").obs["library_id"]) == {"s1"}
    with pytest.raises(ReadError, match="no library 's2'"):
        read(tmp_path / "one.h5ad", library="s2")
