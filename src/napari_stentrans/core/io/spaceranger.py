"""10x Space Ranger output folders: counts (HDF5 or Matrix Market), positions, scale factors, images.

Formats: ``filtered_feature_bc_matrix.h5`` (10x feature-barcode HDF5) or the
``filtered_feature_bc_matrix/`` Matrix Market folder; ``spatial/tissue_positions_list.csv``
(Space Ranger 1.x, no header), ``tissue_positions.csv`` (2.0+, header) or
``tissue_positions.parquet``; ``scalefactors_json.json`` and the ``tissue_*_image.png`` images
(10x Genomics, "Space Ranger outputs").
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..lattice import detect_lattice, snap_to_integers
from .common import ReadError, check_not_empty, first, open_text, reading, set_lattice, unique_names

POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


def read_spaceranger(path: str | Path, library_id: str | None = None) -> ad.AnnData:
    """Read a Space Ranger output folder (counts + ``spatial/``) into AnnData.

    Counts come from ``filtered_feature_bc_matrix.h5`` or the ``filtered_feature_bc_matrix/``
    Matrix Market folder; positions from ``tissue_positions_list.csv`` (v1, no header),
    ``tissue_positions.csv`` (v2+, header) or ``tissue_positions.parquet``.
    """
    path = Path(path)
    library_id = library_id or path.name
    h5 = first(path, ["filtered_feature_bc_matrix.h5", "*filtered_feature_bc_matrix.h5"])
    mtx_dir = path / "filtered_feature_bc_matrix"
    if h5 is not None:
        with reading(h5):
            adata = _read_10x_h5(h5)
    elif mtx_dir.is_dir():
        adata = _read_10x_mtx(mtx_dir)
    else:
        raise ReadError(
            f"{path}: no count matrix (filtered_feature_bc_matrix.h5 or "
            "filtered_feature_bc_matrix/) in this Space Ranger folder"
        )
    check_not_empty(adata, h5 or mtx_dir)
    spatial_dir = path / "spatial"
    positions_file = first(
        spatial_dir,
        ["tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv"],
    )
    if positions_file is None:
        raise ReadError(f"{spatial_dir}: no tissue_positions(.csv|.parquet) or tissue_positions_list.csv")
    with reading(positions_file):
        positions = _read_positions(positions_file)
    missing = ~adata.obs_names.isin(positions.index)
    if missing.any():
        raise ReadError(
            f"{positions_file}: {int(missing.sum())} barcode(s) of the count matrix have no "
            f"position, e.g. {adata.obs_names[missing][0]!r}"
        )
    pos = positions.loc[adata.obs_names]
    adata.obs["in_tissue"] = pos["in_tissue"].to_numpy(dtype=np.int64)
    adata.obs["array_row"] = pos["array_row"].to_numpy(dtype=np.int64)
    adata.obs["array_col"] = pos["array_col"].to_numpy(dtype=np.int64)
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    lattice = detect_lattice(adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy(), hint="hex")
    measured = positions.index.isin(adata.obs_names)
    unmeasured = positions[(positions["in_tissue"] == 1) & ~measured]
    set_lattice(
        adata,
        lattice,
        path,
        in_tissue_unmeasured=unmeasured[["array_row", "array_col"]].to_numpy(dtype=np.int64),
        tissue_mask=True,  # every site is listed with its in_tissue flag (core/slide.py)
    )
    adata.uns["spatial"] = {library_id: _read_spatial_images(spatial_dir)}
    return adata


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _read_10x_h5(path: Path) -> ad.AnnData:
    import h5py

    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise ReadError(f"{path}: not a 10x feature-barcode HDF5 file (no 'matrix' group)")
        m = f["matrix"]
        n_genes, n_spots = (int(x) for x in m["shape"][()])
        counts = sp.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=(n_genes, n_spots))
        barcodes = _decode(m["barcodes"][()])
        feats = m["features"]
        names = _decode(feats["name"][()])
        ids = _decode(feats["id"][()])
        ftype = _decode(feats["feature_type"][()]) if "feature_type" in feats else None
    adata = ad.AnnData(
        X=counts.T.tocsr().astype(np.float32),
        obs=pd.DataFrame(index=pd.Index(barcodes, dtype=str)),
        var=pd.DataFrame({"gene_ids": ids}, index=unique_names(names, path)),
    )
    if ftype is not None:
        adata.var["feature_types"] = ftype
        adata = adata[:, ftype == "Gene Expression"].copy()
    return adata


def _read_10x_mtx(folder: Path) -> ad.AnnData:
    from scipy.io import mmread

    matrix = first(folder, ["matrix.mtx.gz", "matrix.mtx"])
    features = first(folder, ["features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"])
    barcodes = first(folder, ["barcodes.tsv.gz", "barcodes.tsv"])
    for name, file in (("matrix.mtx", matrix), ("features.tsv", features), ("barcodes.tsv", barcodes)):
        if file is None:
            raise ReadError(f"{folder}: {name}(.gz) is missing")
    with reading(matrix):
        counts = sp.csr_matrix(mmread(str(matrix))).T.tocsr().astype(np.float32)
    with reading(features):
        feat = pd.read_csv(features, sep="\t", header=None)
    with reading(barcodes):
        bc = pd.read_csv(barcodes, sep="\t", header=None)[0].astype(str).to_numpy()
    if counts.shape != (len(bc), len(feat)):
        raise ReadError(
            f"{matrix}: matrix is {counts.shape[1]} features x {counts.shape[0]} barcodes but "
            f"{features.name} lists {len(feat)} and {barcodes.name} {len(bc)}"
        )
    names = feat[1] if feat.shape[1] > 1 else feat[0]
    var = pd.DataFrame(
        {"gene_ids": feat[0].astype(str).to_numpy()}, index=unique_names(names.astype(str), features)
    )
    adata = ad.AnnData(X=counts, obs=pd.DataFrame(index=pd.Index(bc)), var=var)
    if feat.shape[1] > 2:
        ftype = feat[2].astype(str).to_numpy()
        adata.var["feature_types"] = ftype
        adata = adata[:, ftype == "Gene Expression"].copy()
    return adata


def _read_positions(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        with open_text(path) as fh:
            first = fh.readline()
        has_header = "barcode" in first or "array_row" in first
        table = pd.read_csv(path, header=0 if has_header else None)
        if not has_header:
            if table.shape[1] != 6:
                raise ReadError(
                    f"{path}: expected 6 columns ({', '.join(POSITION_COLUMNS)}), found {table.shape[1]}"
                )
            table.columns = POSITION_COLUMNS
    missing = [c for c in POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise ReadError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    table["barcode"] = table["barcode"].astype(str)
    if table["barcode"].duplicated().any():
        dup = table["barcode"][table["barcode"].duplicated()].iloc[0]
        raise ReadError(f"{path}: barcode {dup!r} is listed twice")
    for col in POSITION_COLUMNS[1:]:
        numbers = pd.to_numeric(table[col], errors="coerce")
        bad = numbers.isna() | ~np.isfinite(numbers)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ReadError(
                f"{path}: column {col!r} has a non-numeric value {table[col].iloc[i]!r} "
                f"(barcode {table['barcode'].iloc[i]!r})"
            )
        table[col] = numbers
    for col in ("in_tissue", "array_row", "array_col"):
        table[col] = snap_to_integers(table[col].to_numpy(dtype=float), f"{path.name} column {col}")
    return table.set_index("barcode")


def _read_spatial_images(spatial_dir: Path) -> dict:
    from PIL import Image

    entry: dict = {"images": {}, "scalefactors": {}, "metadata": {}}
    sf = spatial_dir / "scalefactors_json.json"
    if sf.exists():
        entry["scalefactors"] = json.loads(sf.read_text())
    for res in ("hires", "lowres"):
        png = spatial_dir / f"tissue_{res}_image.png"
        if png.exists():
            with Image.open(png) as im:
                entry["images"][res] = np.asarray(im.convert("RGB"))
    return entry
