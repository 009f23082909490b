"""Hostile and careless input (issue 16): corrupt sparse files, crafted models, stray coordinates,
silently wrong values. Each refusal is one line naming the file (or option) and the problem, and
nothing is written."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from helpers import block_sites, make_slide, write_block_slide, write_spaceranger
from napari_stentrans.cli import main
from napari_stentrans.core.errors import InputError, LatticeError
from napari_stentrans.core.io import ReadError, read
from napari_stentrans.core.slide import Slide


def _files(folder):
    return sorted((p.relative_to(folder), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def _hex_slide():
    r, c = block_sites("hex", 6, 10)
    return make_slide(r, c, "hex")


def _one_line(exc_info, name: str, pattern: str) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and name in message, message
    assert pytest.importorskip("re").search(pattern, message), message
    return message


# ---------------------------------------------------------------- kind 1: corrupt sparse structure


def _corrupt_h5(tmp_path, edit) -> tuple:
    folder = tmp_path / "sr"
    write_spaceranger(folder, _hex_slide(), matrix="h5", positions="v2")
    h5 = folder / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r+") as f:
        edit(f["matrix"])
    return folder, h5


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda m: m["indices"].__setitem__(3, 10**6), r"index 1000000 is out of range \(0\.\.23\)"),
        (lambda m: m["indices"].__setitem__(0, -5), r"index -5 is out of range"),
        (lambda m: m["indptr"].__setitem__(5, m["indptr"][4] - 1), r"indptr decreases at position 4"),
        (lambda m: m["indptr"].__setitem__(-1, 10**9), r"indptr runs from 0 to 1000000000"),
    ],
    ids=["gene index too large", "negative index", "indptr decreasing", "indptr past the data"],
)
def test_corrupt_10x_h5_is_refused_before_any_matrix_is_built(tmp_path, edit, pattern):
    folder, h5 = _corrupt_h5(tmp_path, edit)
    before = _files(tmp_path)
    for _ in range(3):  # the same answer every time (it was 3 segfaults in 8 reads)
        with pytest.raises(ReadError) as info:
            read(folder)
        _one_line(info, "filtered_feature_bc_matrix.h5", "corrupt sparse count matrix: " + pattern)
    assert _files(tmp_path) == before


def test_corrupt_h5ad_is_refused_at_read_not_later(tmp_path, capsys):
    path = tmp_path / "slide.h5ad"
    _hex_slide().write_h5ad(path)
    with h5py.File(path, "r+") as f:
        f["X"]["indices"][7] = 24  # one past the last gene
    with pytest.raises(ReadError) as info:
        read(path)
    _one_line(info, "slide.h5ad", r"corrupt sparse count matrix: index 24 is out of range \(0\.\.23\)")
    assert main(["enhance", str(path), "-o", str(tmp_path / "out.h5ad"), "--quiet"]) == 2
    assert "corrupt sparse count matrix" in capsys.readouterr().err
    assert not (tmp_path / "out.h5ad").exists()


# ---------------------------------------------------------------- kind 4: coordinates far away


def _with_spot_at(adata, row: int, col: int):
    import anndata as ad

    extra = adata[:1].copy()  # the first spot's counts at a far-away site
    extra.obs_names = ["stray-1"]
    extra.obs["array_row"], extra.obs["array_col"] = row, col
    extra.obsm["spatial"] = np.array([[col * 5.0, row * 8.66]])
    out = ad.concat([adata, extra])
    out.uns["stentrans_lattice"] = adata.uns["stentrans_lattice"]
    return out


@pytest.mark.parametrize(("row", "col"), [(5000, 5000), (1_000_000, 1_000_000), (-300, 40)])
def test_a_stray_spot_far_from_the_tissue_is_refused_naming_it(tmp_path, row, col):
    path = tmp_path / "stray.h5ad"
    _with_spot_at(_hex_slide(), row, col).write_h5ad(path)
    with pytest.raises(ReadError) as info:
        read(path)
    _one_line(info, "stray.h5ad", rf"spot 'stray-1' at array_row {row}, array_col {col} is \d+ pitches")
    with pytest.raises(LatticeError, match="'stray-1'"):  # the Python API on a hand-made AnnData
        Slide.from_adata(_with_spot_at(_hex_slide(), row, col))


def test_a_group_of_stray_spots_is_refused_by_the_raster_size(tmp_path):
    adata = _with_spot_at(_with_spot_at(_hex_slide(), 4000, 4000), 4001, 4001)
    adata.obs_names = [*adata.obs_names[:-1], "stray-2"]
    with pytest.raises(LatticeError, match=r"lattice sites for 32 spots; spot 'stray-\d'"):
        Slide.from_adata(adata)


def test_spots_a_few_pitches_from_the_tissue_are_kept():
    slide = Slide.from_adata(_with_spot_at(_hex_slide(), 30, 40))  # 20 rows below the block
    assert slide.row.max() == 30 and len(slide.row) == 31


def test_mask_site_off_the_slide_is_refused_naming_it(tmp_path):
    adata = _hex_slide()
    with pytest.raises(
        InputError, match=r"^mask: site \(array_row 3000, array_col 3000\) lies off the slide"
    ):
        Slide.from_adata(adata, np.array([[3000, 3000]]))
    far = tmp_path / "far.csv"
    far.write_text("array_row,array_col\n3000,3000\n")
    with pytest.raises(InputError, match=rf"^{far}: site \(array_row 3000, array_col 3000\) lies off"):
        Slide.from_adata(adata, far)  # a mask file is named, as its other errors name it
    with pytest.raises(InputError, match="lies off the slide"):
        Slide.from_adata(adata, np.array([[100000, 100000]]))
    slide = Slide.from_adata(adata, np.array([[2, 4], [6, 0]]))  # a spot and a site just past the edge
    assert slide.lost_sites.tolist() == [[2, 4], [6, 0]]


# ---------------------------------------------------------------- kind 5: silently wrong values


def test_nan_in_one_spots_position_is_refused(tmp_path):
    adata = _hex_slide()
    adata.obsm["spatial"][4, 1] = np.nan
    adata.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(ReadError) as info:
        read(tmp_path / "nan.h5ad")
    _one_line(info, "nan.h5ad", r"obsm\['spatial'\] of spot 'bc4' is \[.*nan\] \(1 spot")


def test_repeated_spot_names_are_refused(tmp_path):
    adata = _hex_slide()
    adata.obs_names = ["bc0", "bc0", *adata.obs_names[2:]]
    adata.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(ReadError) as info:
        read(tmp_path / "dup.h5ad")
    _one_line(info, "dup.h5ad", r"spot name 'bc0' occurs more than once")


def test_unknown_encoding_type_is_one_line(tmp_path):
    path = tmp_path / "enc.h5ad"
    _hex_slide().write_h5ad(path)
    with h5py.File(path, "r+") as f:
        f["obsm"].attrs["encoding-type"] = "from-the-future"
    with pytest.raises(ReadError) as info:
        read(path)
    _one_line(info, "enc.h5ad", "cannot be read.*from-the-future")


def test_png_decompression_bomb_is_left_out_with_a_warning_naming_it(tmp_path):
    """A decompression bomb is never decoded: like any image that cannot be decoded (an optional
    part, issue 15 kind 2) it is left out with one warning naming the PNG; the slide still reads."""
    import struct
    import zlib

    from napari_stentrans.core.io import OptionalPartWarning

    folder = tmp_path / "sr"
    write_spaceranger(folder, _hex_slide(), matrix="h5", positions="v2")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # a 200 x 100 kilopixel header (PIL refuses > 179 Mpx) over a tiny compressed stream
    header = struct.pack(">IIBBBBB", 200_000, 100_000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    (folder / "spatial" / "tissue_lowres_image.png").write_bytes(png + chunk(b"IEND", b""))
    with pytest.warns(
        OptionalPartWarning, match=r"tissue_lowres_image\.png: cannot be decoded \(DecompressionBomb"
    ):
        adata = read(folder)
    assert adata.n_obs == _hex_slide().n_obs
    assert not any(entry["images"] for entry in adata.uns["spatial"].values())


def test_sparse_checker_accepts_every_valid_layout():
    from napari_stentrans.core.io.common import check_sparse_matrix

    rng = np.random.default_rng(0)
    for shape in [(5, 7), (1, 1), (0, 3), (4, 0)]:
        x = sp.random(*shape, density=0.4, format="csr", random_state=rng)
        check_sparse_matrix(x, "x")
        check_sparse_matrix(x.tocsc(), "x")
    check_sparse_matrix(np.zeros((2, 2)), "dense")  # not sparse: nothing to check


# ---------------------------------------------------------------- kind 3: broken models


def test_non_finite_predictions_are_refused_before_anything_is_written(tmp_path):
    """A model whose weights went NaN in memory (a diverged fit, an edited state_dict)."""
    import torch

    from helpers import fit_network, tiny_config

    r, c = block_sites("square", 12, 12)
    adata = make_slide(r, c, "square", n_genes=40, seed=4)
    model = fit_network(adata, tiny_config("square", restore_best=False))
    head = next(k for k in model.state_dict if k.startswith("head.") and k.endswith("bias"))
    model.state_dict[head] = torch.full_like(model.state_dict[head], float("nan"))
    with pytest.raises(InputError, match=r"predicted NaN or infinite counts for gene 'G\d+'"):
        model.enhance(adata, device="cpu")
    with pytest.raises(InputError, match="nothing was written"):
        model.write(adata, tmp_path / "out.h5ad", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_a_crafted_huge_architecture_is_refused_without_allocating_it(tmp_path):
    """A 14 KB checkpoint declaring 256 blocks of width 65,536 (~10^13 weights) is refused on
    shapes alone: peak traced memory stays under 50 MB."""
    import json
    import tracemalloc

    from safetensors import safe_open
    from safetensors.numpy import save_file

    from helpers import fit_network, tiny_config
    from napari_stentrans.core.checkpoint import CheckpointError, load_model

    r, c = block_sites("square", 8, 8)
    # a network kept whatever the gate says: the architecture check is what is tested
    model = fit_network(make_slide(r, c, "square", n_genes=20), tiny_config("square", restore_best=False))
    model.save(tmp_path / "ok.safetensors")
    with safe_open(str(tmp_path / "ok.safetensors"), framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    description = json.loads(meta["napari-stentrans"])
    description["config"]["network"].update(embed_dim=65536, depth=256, mlp_ratio=64.0)
    save_file(
        tensors, str(tmp_path / "huge.safetensors"), metadata={"napari-stentrans": json.dumps(description)}
    )
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="huge.safetensors: weights do not fit"):
            load_model(tmp_path / "huge.safetensors")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, peak


# ---------------------------------------------------------------- kind 5/7: option values


@pytest.fixture(scope="module")
def square_file(tmp_path_factory):
    return write_block_slide(
        tmp_path_factory.mktemp("sq") / "slide.h5ad", "square", 10, 10, n_genes=30, seed=3
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enhance", "--train-genes", "-1"], "n_train_genes: -1 is not allowed"),
        (["enhance", "--genes", "0"], "--genes: 0 is not a positive number of genes"),
        (["enhance", "--genes", "-3"], "--genes: -3 is not a positive number of genes"),
        (["evaluate", "--genes", "0"], "--genes: 0 is not a positive number of genes"),
        (["evaluate", "--genes", "-3"], "--genes: -3 is not a positive number of genes"),
        (["enhance", "--genes", "@missing.txt"], "gene list file missing.txt not found"),
    ],
)
def test_non_positive_gene_counts_are_refused_before_reading(square_file, tmp_path, capsys, args, message):
    command, *options = args
    out = ["-o", str(tmp_path / "out.h5ad")] if command == "enhance" else []
    assert main([command, str(square_file), *out, *options]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_non_positive_gene_counts_in_the_python_api(square_file):
    from napari_stentrans.core.errors import ConfigError
    from napari_stentrans.core.evaluate import evaluate

    adata = read(square_file)
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ConfigError, match="n_genes: .* expected an integer >= 1"):
            evaluate(adata, methods=("nearest",), n_genes=bad)


def test_genes_all_and_a_file_of_gene_names(square_file, tmp_path, capsys):
    import anndata as ad

    out = tmp_path / "all.h5ad"
    assert (
        main(["enhance", str(square_file), "-o", str(out), "--genes", "all", "--quiet", "--device", "cpu"])
        == 0
    )
    assert ad.read_h5ad(out, backed="r").n_vars == 30  # every gene, detected or not
    names = tmp_path / "genes.txt"
    names.write_text("\ufeffG3\nG1\n\nG7, G2\n", encoding="utf-8")  # BOM, blank line, commas
    out = tmp_path / "some.h5ad"
    assert main(["enhance", str(square_file), "-o", str(out), "--genes", f"@{names}", "--quiet"]) == 0
    assert list(ad.read_h5ad(out, backed="r").var_names) == ["G3", "G1", "G7", "G2"]  # the file's order
    names.write_text("G1\nNOPE\n")
    assert main(["enhance", str(square_file), "-o", str(tmp_path / "x.h5ad"), "--genes", f"@{names}"]) == 2
    assert "'NOPE'" in capsys.readouterr().err


def test_a_compressed_image_stays_compact_in_the_output(tmp_path):
    """A 4,000 x 3,000 px image stored gzip-compressed (36 MB raw) is written compressed too."""
    import anndata as ad

    adata = _hex_slide()
    image = np.full((4000, 3000, 3), 240, np.uint8)
    image[100:200, 100:200] = 10
    adata.uns["spatial"] = {
        "lib": {
            "images": {"hires": image},
            "scalefactors": {"spot_diameter_fullres": 9.0, "tissue_hires_scalef": 1.0},
        }
    }
    adata.write_h5ad(tmp_path / "img.h5ad", compression="gzip")
    out = tmp_path / "out.h5ad"
    assert main(["enhance", str(tmp_path / "img.h5ad"), "-o", str(out), "--quiet", "--device", "cpu"]) == 0
    assert out.stat().st_size < 2e6
    written = ad.read_h5ad(out)
    np.testing.assert_array_equal(written.uns["spatial"]["lib"]["images"]["hires"], image)
    assert written.uns["spatial"]["lib"]["scalefactors"]["spot_diameter_fullres"] == 4.5


def test_reading_a_counts_table_holds_few_copies_of_it(tmp_path):
    """``info`` on a counts table: the read peaks at under 6x the table as dense float32 (it was
    9x: int64 columns, a numeric copy, SciPy's whole-matrix conversion)."""
    import tracemalloc

    import pandas as pd

    n_spots, n_genes = 300, 4000
    ids = [f"{x}x{y}" for x in range(1, 21) for y in range(1, 16)]
    counts = np.random.default_rng(0).poisson(0.8, size=(n_spots, n_genes))
    table = pd.DataFrame(counts, index=ids, columns=[f"G{i}" for i in range(n_genes)])
    table.to_csv(tmp_path / "counts.tsv", sep="\t")
    tracemalloc.start()
    try:
        adata = read(tmp_path / "counts.tsv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert peak < 6 * n_spots * n_genes * 4, peak / (n_spots * n_genes * 4)


def test_the_python_writer_keeps_images_compact_and_the_slide_unchanged(tmp_path):
    import anndata as ad

    from napari_stentrans.core.files import write_h5ad

    adata = _hex_slide()
    image = np.zeros((3000, 3000, 3), np.uint8)
    adata.uns["spatial"] = {"lib": {"images": {"hires": image}, "scalefactors": {"x": 1.0}}}
    write_h5ad(adata, tmp_path / "out.h5ad")
    assert (tmp_path / "out.h5ad").stat().st_size < 1e6  # 27 MB raw
    assert adata.uns["spatial"]["lib"]["images"]["hires"] is image
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.uns["spatial"]["lib"]["images"]["hires"], image)
    assert back.uns["spatial"]["lib"]["scalefactors"] == {"x": 1.0}
