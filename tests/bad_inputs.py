"""Bad inputs real users feed the tool, each with the message it must produce.

Shared by the core reader, CLI and napari reader tests: ``CASES[name] = (make, pattern)``,
``make(folder) -> path`` writes the input below ``folder``; ``pattern`` is a regular expression
the one-line message must match (besides the file name).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from helpers import block_sites, make_slide, write_slide_with_bad_count, write_spaceranger


def _visium(folder: Path, matrix: str = "h5", positions: str = "v2") -> Path:
    r, c = block_sites("hex", 6, 10)
    write_spaceranger(folder / "sr", make_slide(r, c, "hex"), matrix=matrix, positions=positions)
    return folder / "sr"


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncated_h5(folder: Path) -> Path:
    sr = _visium(folder)
    _cut_in_half(sr / "filtered_feature_bc_matrix.h5")
    return sr


def truncated_mtx_gz(folder: Path) -> Path:
    sr = _visium(folder, matrix="mtx")
    _cut_in_half(sr / "filtered_feature_bc_matrix" / "matrix.mtx.gz")
    return sr


def _edit_positions(folder: Path, edit) -> Path:
    sr = _visium(folder)
    path = sr / "spatial" / "tissue_positions.csv"
    edit(pd.read_csv(path)).to_csv(path, index=False)
    return sr


def positions_missing_column(folder: Path) -> Path:
    return _edit_positions(folder, lambda t: t.drop(columns=["array_col"]))


def positions_renamed_column(folder: Path) -> Path:
    return _edit_positions(folder, lambda t: t.rename(columns={"array_row": "row"}))


def positions_other_barcodes(folder: Path) -> Path:
    return _edit_positions(folder, lambda t: t.assign(barcode=[f"OTHER-{i}" for i in range(len(t))]))


def positions_non_numeric(folder: Path) -> Path:
    return _edit_positions(
        folder, lambda t: t.assign(array_row=t["array_row"].astype(str).str.cat(["x"] * len(t)))
    )


def duplicate_coordinates(folder: Path) -> Path:
    r, c = block_sites("square", 5, 5)
    adata = make_slide(r, c, "square")
    adata.obs["array_row"] = np.where(np.arange(adata.n_obs) == 3, r[2], r)
    adata.obs["array_col"] = np.where(np.arange(adata.n_obs) == 3, c[2], c)
    del adata.uns["stentrans_lattice"]
    adata.write_h5ad(folder / "dup.h5ad")
    return folder / "dup.h5ad"


def _table(folder: Path, ids: list[str], counts: np.ndarray, name: str = "counts.tsv") -> Path:
    table = pd.DataFrame(counts, index=ids, columns=[f"G{i}" for i in range(counts.shape[1])])
    table.to_csv(folder / name, sep="\t")
    return folder / name


def off_lattice(folder: Path) -> Path:
    return _table(folder, ["1x1", "1.5x2", "3x3"], np.ones((3, 2)))


def repeated_spot_row(folder: Path) -> Path:
    return _table(folder, ["1x1", "1x2", "1x2", "2x1"], np.ones((4, 2)))


def repeated_spot_column(folder: Path) -> Path:
    pd.DataFrame(np.ones((2, 4)), index=["G0", "G1"], columns=["1x1", "1x2", "1x2", "2x1"]).to_csv(
        folder / "counts.tsv", sep="\t"
    )
    return folder / "counts.tsv"


def single_spot(folder: Path) -> Path:
    return _table(folder, ["1x1"], np.ones((1, 2)))


def no_coordinates(folder: Path) -> Path:
    return _table(folder, ["AAA", "CCC", "GGG"], np.ones((3, 2)))


def all_zero(folder: Path) -> Path:
    return _table(folder, ["1x1", "1x2", "2x1", "2x2"], np.zeros((4, 3)))


def empty_file(folder: Path) -> Path:
    (folder / "counts.tsv").write_text("")
    return folder / "counts.tsv"


def non_numeric_count(folder: Path) -> Path:
    path = _table(folder, ["1x1", "1x2", "2x1"], np.ones((3, 2)))
    path.write_text(path.read_text().replace("1.0", "one", 1))
    return path


def garbage_h5ad(folder: Path) -> Path:
    (folder / "slide.h5ad").write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 4)
    return folder / "slide.h5ad"


def garbage_gz(folder: Path) -> Path:
    (folder / "counts.tsv.gz").write_bytes(gzip.compress(b"1x1\t3\n1x2\t4\n")[:-9])
    return folder / "counts.tsv.gz"


def empty_matrix(folder: Path) -> Path:
    adata = ad.AnnData(X=sp.csr_matrix((0, 3), dtype=np.float32))
    adata.obs["array_row"] = np.zeros(0, int)
    adata.obs["array_col"] = np.zeros(0, int)
    adata.write_h5ad(folder / "empty.h5ad")
    return folder / "empty.h5ad"


def unknown_format(folder: Path) -> Path:
    (folder / "slide.xyz").write_text("x")
    return folder / "slide.xyz"


CASES = {
    "missing path": (lambda f: f / "nope.h5ad", "no such file"),
    "unknown format": (unknown_format, "unknown format"),
    "truncated h5": (truncated_h5, r"filtered_feature_bc_matrix\.h5.*cannot be read|truncated"),
    "truncated mtx.gz": (truncated_mtx_gz, r"matrix\.mtx\.gz.*(cannot be read|truncated|end of)"),
    "positions missing column": (positions_missing_column, r"tissue_positions\.csv: missing column"),
    "positions renamed column": (positions_renamed_column, r"tissue_positions\.csv: missing column"),
    "barcodes not in positions": (positions_other_barcodes, r"tissue_positions\.csv: .*no position"),
    "positions non-numeric": (positions_non_numeric, r"tissue_positions\.csv: .*array_row"),
    "duplicate coordinates": (duplicate_coordinates, "duplicate"),
    "coordinates on no lattice": (off_lattice, "on no lattice"),
    "repeated spot id (rows)": (repeated_spot_row, r"counts\.tsv: spot id '1x2' occurs more than once"),
    "repeated spot id (header)": (repeated_spot_column, r"counts\.tsv: spot id '1x2' occurs more than once"),
    "single spot": (single_spot, r"only 1 spot"),
    "no coordinates": (no_coordinates, "no coordinates"),
    "all counts zero": (all_zero, "every count is zero"),
    "empty file": (empty_file, "empty"),
    "non-numeric count": (non_numeric_count, "non-numeric count 'one'"),
    "garbage h5ad": (garbage_h5ad, "cannot be read"),
    "truncated gzip table": (garbage_gz, "cannot be read"),
    "empty matrix": (empty_matrix, "empty count matrix"),
    "NaN counts": (lambda f: write_slide_with_bad_count(f, np.nan), "NaN or infinite"),
    "inf counts": (lambda f: write_slide_with_bad_count(f, np.inf), "NaN or infinite"),
    "negative counts": (lambda f: write_slide_with_bad_count(f, -3), "negative"),
    "non-integer counts": (lambda f: write_slide_with_bad_count(f, 0.5), "non-integer"),
}
