"""10x Space Ranger output folders: counts (HDF5 or Matrix Market), positions, scale factors, images.

Formats: ``filtered_feature_bc_matrix.h5`` (10x feature-barcode HDF5) or the
``filtered_feature_bc_matrix/`` Matrix Market folder; ``spatial/tissue_positions_list.csv``
(Space Ranger 1.x, no header), ``tissue_positions.csv`` (2.0+, header) or
``tissue_positions.parquet``; ``scalefactors_json.json`` and the ``tissue_*_image.png`` images
(10x Genomics, "Space Ranger outputs"). The ``spatial/`` files may be gzipped (``.gz``, as public
repositories serve them).

Visium HD: a ``binned_outputs/square_NNNum/`` folder (same layout, ``tissue_positions.parquet``,
barcodes ``s_NNNum_RRRRR_CCCCC-1``) is read as a square lattice of bins whose pitch is
``bin_size_um`` from its ``scalefactors_json.json`` (10x Genomics, "Visium HD Space Ranger
outputs: binned outputs").
"""

from __future__ import annotations

import gzip
import io
import json
import re
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import LatticeError
from ..lattice import Lattice, detect_lattice, fit_affine, snap_to_integers
from .common import (
    IMAGE_RESOLUTIONS,
    READ_FAULTS,
    LeftOutFeaturesWarning,
    OptionalPartWarning,
    ReadError,
    add_read_note,
    check_compressed,
    check_not_empty,
    clean_scalefactors,
    first,
    open_text,
    reading,
    set_lattice,
    unique_names,
)

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
    ``tissue_positions.csv`` (v2+, header) or ``tissue_positions.parquet``. A Visium HD
    ``binned_outputs/square_NNNum`` folder gives a square lattice with the bin size as pitch.
    Missing, foreign or unreadable scale factors and images are left out with an
    :class:`~.common.OptionalPartWarning`; the slide is still read.

    Raises
    ------
    ReadError
        No count matrix (for a Visium HD ``outs/`` folder: which ``binned_outputs/`` folders to
        open instead), no or unreadable positions (``.parquet`` without pyarrow: the install
        command), barcodes without a position, coordinates off the lattice.
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
        bins = hd_bin_folders(path / "binned_outputs")
        if bins:
            raise ReadError(
                f"{path}: a Visium HD output; its bins are under binned_outputs/ "
                f"({', '.join(b.name for b in bins)}): open one of those, e.g. {_suggested_bins(bins)}"
            )
        raise ReadError(
            f"{path}: no count matrix (filtered_feature_bc_matrix.h5 or "
            "filtered_feature_bc_matrix/) in this Space Ranger folder"
        )
    check_not_empty(adata, h5 or mtx_dir)
    spatial_dir = path / "spatial"
    positions_file = first(spatial_dir, POSITION_FILES)
    if positions_file is None:
        others = sorted(p.name for p in spatial_dir.glob("tissue_positions*")) if spatial_dir.is_dir() else []
        raise ReadError(
            f"{spatial_dir}: no tissue_positions(.csv|.parquet) or tissue_positions_list.csv"
            + (f" (found {', '.join(others)}: decompress it)" if others else "")
        )
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
    entry = _read_spatial_images(spatial_dir)
    lattice = _spaceranger_lattice(adata, path, positions_file, entry["scalefactors"])
    measured = positions.index.isin(adata.obs_names)
    unmeasured = positions[(positions["in_tissue"] == 1) & ~measured]
    set_lattice(
        adata,
        lattice,
        path,
        in_tissue_unmeasured=unmeasured[["array_row", "array_col"]].to_numpy(dtype=np.int64),
        tissue_mask=True,  # every site is listed with its in_tissue flag (core/slide.py)
        unmeasured_barcodes=unmeasured.index.to_numpy(dtype=str),
    )
    adata.uns["spatial"] = {library_id: entry}
    return adata


POSITION_FILES = [
    "tissue_positions.parquet",
    "tissue_positions.csv",
    "tissue_positions_list.csv",
    "tissue_positions.csv.gz",
    "tissue_positions_list.csv.gz",
]
_HD_BARCODE = re.compile(r"^s_(\d{3})um_\d+_\d+-\d+$")
_HD_FOLDER = re.compile(r"^square_(\d{3})um$")


def hd_bin_folders(folder: Path) -> list[Path]:
    """The ``square_NNNum`` bin folders of a Visium HD ``binned_outputs/`` folder, finest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _HD_FOLDER.match(p.name))


def _suggested_bins(bins: list[Path]) -> Path:
    # 16 um bins are the size of a cell neighbourhood and enhance to 8 um; 2 um bins are millions
    named = {b.name: b for b in bins}
    return named.get("square_016um", bins[-1])


def _hd_bin_size(path: Path, scalefactors: dict, barcodes) -> float | None:
    """The Visium HD bin size in um (scale factors, else folder name, else barcodes), or None."""
    if "bin_size_um" in scalefactors:
        return float(scalefactors["bin_size_um"])
    for match in (_HD_FOLDER.match(path.name), _HD_BARCODE.match(str(barcodes[0]) if len(barcodes) else "")):
        if match:
            return float(int(match.group(1)))
    return None


def _spaceranger_lattice(adata: ad.AnnData, path: Path, positions_file: Path, scalefactors: dict) -> Lattice:
    """Visium spots: the hex lattice (checked); Visium HD bins: a square lattice, pitch = bin size."""
    row = adata.obs["array_row"].to_numpy()
    col = adata.obs["array_col"].to_numpy()
    spatial = adata.obsm["spatial"]
    bin_um = _hd_bin_size(path, scalefactors, adata.obs_names)
    if bin_um is None:
        try:
            return detect_lattice(row, col, spatial=spatial, hint="hex")
        except LatticeError as exc:
            raise ReadError(
                f"{positions_file}: {exc} (Visium spots are on a hex lattice; Visium HD square bins "
                "are read from binned_outputs/square_NNNum with their scalefactors_json.json)"
            ) from exc
    lattice = detect_lattice(row, col, spatial=spatial, hint="square", pitch_um=bin_um)
    um_per_px = scalefactors.get("microns_per_pixel")
    coef = fit_affine(row, col, adata.obsm["spatial"]) if um_per_px else None
    if coef is not None:
        step_um = float(np.mean(np.linalg.norm(coef[:2], axis=1))) * um_per_px
        if abs(step_um / bin_um - 1.0) > 0.1:
            raise ReadError(
                f"{positions_file}: neighbouring bins are {step_um:.3g} um apart (pixel positions x "
                f"microns_per_pixel {um_per_px:g}) but the bin size is {bin_um:g} um; the positions "
                "and scalefactors_json.json disagree"
            )
    return lattice


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _read_10x_h5(path: Path) -> ad.AnnData:
    import h5py

    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise ReadError(f"{path}: not a 10x feature-barcode HDF5 file (no 'matrix' group)")
        m = f["matrix"]
        n_genes, n_spots = (int(x) for x in m["shape"][()])
        data, indices, indptr = m["data"][()], m["indices"][()], m["indptr"][()]
        check_compressed(data, indices, indptr, n_spots, n_genes, path)  # before scipy uses them
        counts = sp.csc_matrix((data, indices, indptr), shape=(n_genes, n_spots))
        barcodes = _decode(m["barcodes"][()])
        feats = m["features"]
        names = _decode(feats["name"][()])
        ids = _decode(feats["id"][()])
        ftype = _decode(feats["feature_type"][()]) if "feature_type" in feats else None
    genes = _gene_features(ftype, len(names), path)
    x = counts.T.tocsr().astype(np.float32)
    adata = ad.AnnData(
        X=x if genes.all() else x[:, np.flatnonzero(genes)],
        obs=pd.DataFrame(index=pd.Index(barcodes, dtype=str)),
        var=pd.DataFrame({"gene_ids": ids[genes]}, index=unique_names(names[genes], path)),
    )
    if ftype is not None:
        adata.var["feature_types"] = ftype[genes]
    _left_out_note(adata, ftype, genes, path)
    return adata


def _left_out_note(adata: ad.AnnData, ftype: np.ndarray | None, genes: np.ndarray, path: Path) -> None:
    """Say which features other than genes were left out, and how many: in the read note and as
    a :class:`LeftOutFeaturesWarning` (a protein panel dropped without a word surprises)."""
    if ftype is None or genes.all():
        return
    kinds, counts = np.unique(np.asarray(ftype)[~genes].astype(str), return_counts=True)
    left = ", ".join(f"{count:,} '{kind}'" for kind, count in zip(kinds, counts, strict=True))
    note = f"left out {left} features (only 'Gene Expression' is read)"
    add_read_note(adata, note)
    warnings.warn(f"{path}: {note}", LeftOutFeaturesWarning, stacklevel=4)


def _gene_features(ftype: np.ndarray | None, n: int, path: Path) -> np.ndarray:
    """Boolean mask of the ``Gene Expression`` features (all features when types are not given).

    Antibody, CRISPR or custom features are left out before gene names are made unique, so a
    protein named like its gene is not reported as a duplicate gene.
    """
    if ftype is None:
        return np.ones(n, dtype=bool)
    genes = np.asarray(ftype) == "Gene Expression"
    if not genes.any():
        raise ReadError(
            f"{path}: no 'Gene Expression' features (feature types: {', '.join(sorted(set(ftype)))})"
        )
    return genes


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
    names = (feat[1] if feat.shape[1] > 1 else feat[0]).astype(str).to_numpy()
    ftype = feat[2].astype(str).to_numpy() if feat.shape[1] > 2 else None
    genes = _gene_features(ftype, len(names), features)
    var = pd.DataFrame(
        {"gene_ids": feat[0].astype(str).to_numpy()[genes]}, index=unique_names(names[genes], features)
    )
    if ftype is not None:
        var["feature_types"] = ftype[genes]
    x = counts if genes.all() else counts[:, np.flatnonzero(genes)]
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=pd.Index(bc)), var=var)
    _left_out_note(adata, ftype, genes, folder)
    return adata


def _read_positions(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except ImportError as exc:  # pyarrow is a dependency, but may be missing or broken
            raise ReadError(
                f"{path}: reading .parquet positions needs pyarrow: pip install pyarrow (a dependency "
                "of napari-stentrans, missing or broken in this environment)"
            ) from exc
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
    """Scale factors and H&E images of ``spatial/``; what is missing or unreadable is left out.

    Only the known scale factors (:data:`~.common.SCALEFACTOR_KEYS`, positive numbers) are kept,
    and an image only when it decodes and its ``tissue_{res}_scalef`` is known (it cannot be
    placed over the spots otherwise). Each omission is an :class:`~.common.OptionalPartWarning`.
    """
    entry: dict = {"images": {}, "scalefactors": {}, "metadata": {}}
    sf = first(spatial_dir, ["scalefactors_json.json", "scalefactors_json.json.gz"])
    if sf is not None:
        try:
            raw = json.loads(_read_bytes(sf).decode("utf-8"))
        except READ_FAULTS as exc:
            _omit(f"{sf}: cannot be read as JSON ({type(exc).__name__}: {exc}); scale factors ignored")
        else:
            entry["scalefactors"] = clean_scalefactors(raw, sf)
    for res in IMAGE_RESOLUTIONS:
        png = first(spatial_dir, [f"tissue_{res}_image.png", f"tissue_{res}_image.png.gz"])
        if png is None:
            continue
        if f"tissue_{res}_scalef" not in entry["scalefactors"]:
            where = sf if sf is not None else f"{spatial_dir} (no scalefactors_json.json)"
            _omit(f"{png}: left out, no tissue_{res}_scalef in {where} to place it over the spots")
            continue
        image = _decode_image(png)
        if image is not None:
            entry["images"][res] = image
    return entry


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _decode_image(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(_read_bytes(path))) as im:
            return np.asarray(im.convert("RGB"))
    except (*READ_FAULTS, Image.DecompressionBombError) as exc:
        _omit(f"{path}: cannot be decoded ({type(exc).__name__}: {exc}); the image is left out")
        return None


def _omit(message: str) -> None:
    warnings.warn(message, OptionalPartWarning, stacklevel=3)
