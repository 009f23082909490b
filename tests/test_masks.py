"""Masks of lost sites: every documented form names the same sites, and a bad one is refused by name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import block_sites, make_slide
from napari_stentrans.core.errors import InputError, LatticeError
from napari_stentrans.core.slide import Slide

LOST = ["bc5", "bc6", "bc17"]


@pytest.fixture
def adata():
    r, c = block_sites("square", 6, 6)
    return make_slide(r, c, "square")


def _pairs(adata, barcodes):
    obs = adata.obs.loc[barcodes]
    return np.column_stack([obs["array_row"], obs["array_col"]])


def _lost(adata, mask) -> list[tuple[int, int]]:
    return sorted(map(tuple, Slide.from_adata(adata, mask).lost_sites.tolist()))


def _write(path, text: str, bom: bool = False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_every_in_memory_form_names_the_same_sites(adata):
    expected = sorted(map(tuple, _pairs(adata, LOST).tolist()))
    assert len(expected) == 3
    forms = {
        "list of barcodes": list(LOST),  # raised an opaque int() ValueError before
        "array of barcodes": np.array(LOST),
        "Series of barcodes": pd.Series(LOST),
        "(k, 2) pairs": _pairs(adata, LOST),
        "list of tuples": [tuple(p) for p in _pairs(adata, LOST).tolist()],
        "float pairs that are integers": _pairs(adata, LOST).astype(float),
        "boolean per spot": adata.obs_names.isin(LOST),
        "DataFrame of pairs": pd.DataFrame(_pairs(adata, LOST), columns=["array_row", "array_col"]),
        "DataFrame of barcodes": pd.DataFrame({"barcode": LOST}),
    }
    for name, mask in forms.items():
        assert _lost(adata, mask) == expected, name


@pytest.mark.parametrize(
    ("text", "bom"),
    [
        ("barcode\nbc5\nbc6\nbc17\n", False),  # one column: "barcode" was split at its "r"
        ("barcode\nbc5\nbc6\nbc17\n", True),  # a byte-order mark (Excel's "CSV UTF-8")
        ("bc5\nbc6\nbc17\n", False),  # no header: the first line is a barcode of the slide
        ("spot_id,label\nbc5,fold\nbc6,fold\nbc17,bubble\n", False),
        ("Barcode;note\nbc5;a\nbc6;b\nbc17;c\n", True),  # semicolons, capitalised header
        ("{rows}", False),  # array_row,array_col
        ("{rows_headerless}", True),
    ],
)
def test_every_file_form_names_the_same_sites(adata, tmp_path, text, bom):
    pairs = _pairs(adata, LOST)
    text = text.format(
        rows="array_row\tarray_col\n" + "".join(f"{r}\t{c}\n" for r, c in pairs),
        rows_headerless="".join(f"{r},{c}\n" for r, c in pairs),
    )
    path = _write(tmp_path / "lost.csv", text, bom)
    expected = sorted(map(tuple, pairs.tolist()))
    assert _lost(adata, path) == expected
    assert _lost(adata, str(path)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("array_row,array_col\n3,4\n7.5,15\n", r"must be integers; pair 2 is \(7.5, 15\)"),
        ("7.5,15\n", r"must be integers; pair 1 is \(7.5, 15\)"),
        ("array_row,array_col\n3,x\n", "must be integers; data row 1 has 'x'"),
        ("barcode\nbc5\nNOPE-1\n", r"1 of 2 barcode\(s\) are not spots of the slide, e.g. 'NOPE-1'"),
        ("NOPE-1\n", "'NOPE-1'"),
        ("row,col\n3,4\n", "needs array_row,array_col or barcode columns"),
        ("array_row,array_col\n3,4\n5\n", "line 3 has 1 field"),
        ("\n\n", "mask file is empty"),
        ("3\n4\n", "one column of numbers"),
    ],
)
def test_bad_mask_files_are_refused_naming_the_file(adata, tmp_path, text, message):
    path = _write(tmp_path / "lost.csv", text)
    with pytest.raises(InputError, match=message) as info:
        Slide.from_adata(adata, path)
    assert str(info.value).startswith(str(path))


def test_a_binary_mask_file_is_refused_as_not_text(adata, tmp_path):
    """A PNG or .xlsx given as the mask: the reason in words, not a codec's traceback text."""
    path = tmp_path / "lost.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xf8")
    with pytest.raises(InputError) as info:
        Slide.from_adata(adata, path)
    assert str(info.value) == (
        f"{path}: the mask file is not UTF-8 text (byte 0 is 0x89; an image or a spreadsheet?); a mask "
        "file is a CSV with array_row,array_col or barcode columns"
    )


def test_bad_in_memory_masks_are_refused(adata):
    with pytest.raises(InputError, match=r"pair 1 is \(7.5, 15\)"):
        Slide.from_adata(adata, np.array([[7.5, 15.0]]))  # never truncated to (7, 15)
    with pytest.raises(InputError, match=r"one entry per spot, shape \(36,\)"):
        Slide.from_adata(adata, np.ones(5, dtype=bool))
    with pytest.raises(InputError, match="not spots of the slide, e.g. 'nope'"):
        Slide.from_adata(adata, ["bc1", "nope"])
    with pytest.raises(InputError, match=r"array of shape \(4,\)"):
        Slide.from_adata(adata, [1, 2, 3, 4])  # flat numbers: neither pairs nor one flag per spot
    with pytest.raises(InputError, match="mask file not found"):
        Slide.from_adata(adata, "no_such_mask.csv")


def test_off_lattice_sites_of_a_file_name_the_file(tmp_path):
    r, c = block_sites("hex", 6, 8)
    path = _write(tmp_path / "off.csv", "array_row,array_col\n3,4\n")  # row + col odd
    with pytest.raises(LatticeError, match="1 site") as info:
        Slide.from_adata(make_slide(r, c, "hex"), path)
    assert str(info.value).startswith(f"{path}: ")


def test_fit_and_enhance_take_a_plain_list_of_barcodes(adata):
    from napari_stentrans.core.fitting import fit

    model = fit(adata, "default", mask=LOST, device="cpu", min_detection=0.0, n_train_genes=16)
    out = model.enhance(adata, mask=LOST, genes=["G1", "G2"], device="cpu")
    imputed = out.obs[out.obs["kind"] == "imputed"]
    assert sorted(imputed["barcode"]) == sorted(LOST)
