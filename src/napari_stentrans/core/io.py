"""Readers: Space Ranger folders, ``.h5ad`` files and legacy ST count tables -> AnnData.

Every reader returns an AnnData in scanpy/squidpy conventions:

* ``X``: raw counts, CSR float32, spots x genes;
* ``obs["array_row"]``, ``obs["array_col"]``: integer lattice coordinates;
* ``obsm["spatial"]``: spot centres (x, y) in full-resolution image pixels when known,
  otherwise in array units;
* ``uns["spatial"][library_id]``: images and scale factors (Visium);
* ``uns["stentrans_lattice"]``: ``{"kind", "pitch_um", "source"}`` and, when the positions
  file lists them, ``in_tissue_unmeasured`` sites ``(k, 2)`` that are in tissue but have no counts.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .lattice import Lattice, LatticeError, detect_lattice, lattice_from_positions, snap_to_integers

SPOT_ID = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*x\s*(-?\d+(?:\.\d+)?)\s*$")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]


class ReadError(ValueError):
    """A file that cannot be read as a slide; the message names the file and the problem."""


# ----------------------------------------------------------------------------- dispatch


def read(
    path: str | Path,
    *,
    coords: str | Path | None = None,
    library_id: str | None = None,
) -> ad.AnnData:
    """Read a spot-based spatial transcriptomics slide.

    Parameters
    ----------
    path
        A Space Ranger output folder, an ``.h5ad`` file, or a legacy ST counts table
        (``.csv``/``.tsv``/``.txt``, optionally gzipped; spots as rows or columns).
    coords
        Optional coordinates table for a counts table (otherwise a sibling file such as
        ``coords.csv``, ``{name}_selection.tsv`` or ``alignment_table_{name}.tsv`` is used, and
        failing that the spot ids ``"{x}x{y}"``).
    library_id
        Key for ``uns["spatial"]``; defaults to the folder or file name.

    Returns
    -------
    AnnData with raw counts and lattice coordinates (see module docstring).

    Raises
    ------
    ReadError
        Missing path, unknown format, missing coordinates, off-lattice coordinates, empty
        matrix, or invalid counts; the message names the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    with _reading(path):
        if path.is_dir():
            adata = _read_folder(path, library_id)
        elif _suffix(path) == ".h5ad":
            adata = _read_h5ad(path)
        elif _suffix(path) in TABLE_SUFFIXES:
            adata = read_st_table(path, coords=coords)
        elif _suffix(path) == ".h5":
            raise ReadError(f"{path}: a bare 10x .h5 has no spot positions; open its Space Ranger folder")
        else:
            raise ReadError(
                f"{path}: unknown format {''.join(path.suffixes) or '(no suffix)'}; expected a "
                "Space Ranger folder, .h5ad, or a .csv/.tsv(.gz) counts table"
            )
    _validate_counts(adata, path)
    return adata


# what truncated, corrupt or mis-typed files raise inside pandas, h5py, gzip, scipy and PIL
READ_FAULTS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zlib.error, UnicodeDecodeError)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a fault while reading ``path`` into a ReadError that names that file."""
    try:
        yield
    except ReadError:
        raise
    except LatticeError as exc:
        raise ReadError(f"{path}: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise ReadError(f"{path}: file is empty") from exc
    except READ_FAULTS as exc:
        raise ReadError(
            f"{path}: cannot be read, truncated or corrupt? ({type(exc).__name__}: {exc})"
        ) from exc


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zip", ".xz"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_folder(path: Path, library_id: str | None) -> ad.AnnData:
    if (path / "spatial").is_dir() or any(path.glob("*filtered_feature_bc_matrix*")):
        return read_spaceranger(path, library_id=library_id)
    candidates = sorted(path.glob("*.h5ad"))
    if len(candidates) == 1:
        return _read_h5ad(candidates[0])
    raise ReadError(
        f"{path}: folder is not a Space Ranger output (no spatial/ folder and no "
        "filtered_feature_bc_matrix) and holds no single .h5ad; pass a file instead"
    )


# ----------------------------------------------------------------------------- Space Ranger


def read_spaceranger(path: str | Path, library_id: str | None = None) -> ad.AnnData:
    """Read a Space Ranger output folder (counts + ``spatial/``) into AnnData.

    Counts come from ``filtered_feature_bc_matrix.h5`` or the ``filtered_feature_bc_matrix/``
    Matrix Market folder; positions from ``tissue_positions_list.csv`` (v1, no header),
    ``tissue_positions.csv`` (v2+, header) or ``tissue_positions.parquet``.
    """
    path = Path(path)
    library_id = library_id or path.name
    h5 = _first(path, ["filtered_feature_bc_matrix.h5", "*filtered_feature_bc_matrix.h5"])
    mtx_dir = path / "filtered_feature_bc_matrix"
    if h5 is not None:
        with _reading(h5):
            adata = _read_10x_h5(h5)
    elif mtx_dir.is_dir():
        adata = _read_10x_mtx(mtx_dir)
    else:
        raise ReadError(
            f"{path}: no count matrix (filtered_feature_bc_matrix.h5 or "
            "filtered_feature_bc_matrix/) in this Space Ranger folder"
        )
    _check_not_empty(adata, h5 or mtx_dir)
    spatial_dir = path / "spatial"
    positions_file = _first(
        spatial_dir,
        ["tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv"],
    )
    if positions_file is None:
        raise ReadError(f"{spatial_dir}: no tissue_positions(.csv|.parquet) or tissue_positions_list.csv")
    with _reading(positions_file):
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
    _set_lattice(
        adata,
        lattice,
        path,
        in_tissue_unmeasured=unmeasured[["array_row", "array_col"]].to_numpy(dtype=np.int64),
    )
    adata.uns["spatial"] = {library_id: _read_spatial_images(spatial_dir)}
    return adata


def _first(folder: Path, patterns: list[str]) -> Path | None:
    if not folder.is_dir():
        return None
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


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
        var=pd.DataFrame({"gene_ids": ids}, index=_unique_names(names, path)),
    )
    if ftype is not None:
        adata.var["feature_types"] = ftype
        adata = adata[:, ftype == "Gene Expression"].copy()
    return adata


class DuplicateGeneNamesWarning(UserWarning):
    """Gene names repeated in a file were made unique (``GENE``, ``GENE-1``, ...)."""


def _unique_names(names, source: Path) -> pd.Index:
    """Gene names made unique the scanpy way (``GENE``, ``GENE-1``, ...), index name None.

    10x references repeat some gene symbols (the Ensembl ids differ), so repeats are kept as
    separate genes, renamed, with a warning naming the file.
    """
    raw = pd.Index(np.asarray(names, dtype=str))
    repeated = raw[raw.duplicated()].unique()
    if len(repeated):
        warnings.warn(
            f"{source}: {len(repeated)} gene name(s) occur more than once (e.g. {repeated[0]!r}); "
            f"kept as separate genes named {repeated[0]}, {repeated[0]}-1, ...",
            DuplicateGeneNamesWarning,
            stacklevel=3,
        )
    index = ad.utils.make_index_unique(raw)
    index.name = None
    return index


def _read_10x_mtx(folder: Path) -> ad.AnnData:
    from scipy.io import mmread

    matrix = _first(folder, ["matrix.mtx.gz", "matrix.mtx"])
    features = _first(folder, ["features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"])
    barcodes = _first(folder, ["barcodes.tsv.gz", "barcodes.tsv"])
    for name, file in (("matrix.mtx", matrix), ("features.tsv", features), ("barcodes.tsv", barcodes)):
        if file is None:
            raise ReadError(f"{folder}: {name}(.gz) is missing")
    with _reading(matrix):
        counts = sp.csr_matrix(mmread(str(matrix))).T.tocsr().astype(np.float32)
    with _reading(features):
        feat = pd.read_csv(features, sep="\t", header=None)
    with _reading(barcodes):
        bc = pd.read_csv(barcodes, sep="\t", header=None)[0].astype(str).to_numpy()
    if counts.shape != (len(bc), len(feat)):
        raise ReadError(
            f"{matrix}: matrix is {counts.shape[1]} features x {counts.shape[0]} barcodes but "
            f"{features.name} lists {len(feat)} and {barcodes.name} {len(bc)}"
        )
    names = feat[1] if feat.shape[1] > 1 else feat[0]
    var = pd.DataFrame(
        {"gene_ids": feat[0].astype(str).to_numpy()}, index=_unique_names(names.astype(str), features)
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
        with _open_text(path) as fh:
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


# ----------------------------------------------------------------------------- h5ad


def _read_h5ad(path: Path) -> ad.AnnData:
    adata = ad.read_h5ad(path)
    if adata.X is None:
        raise ReadError(f"{path}: AnnData has no X matrix")
    _check_not_empty(adata, path)
    if adata.var_names.has_duplicates:
        adata.var_names = _unique_names(adata.var_names, path)
    if _has_non_integer(adata.X) and "counts" in adata.layers:
        adata.X = adata.layers["counts"]
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    spatial = np.asarray(adata.obsm["spatial"], float) if "spatial" in adata.obsm else None
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        row = snap_to_integers(adata.obs["array_row"].to_numpy(dtype=float), f"{path.name} obs['array_row']")
        col = snap_to_integers(adata.obs["array_col"].to_numpy(dtype=float), f"{path.name} obs['array_col']")
        stored = adata.uns.get("stentrans_lattice", {})
        lattice = detect_lattice(
            row, col, spatial=spatial, hint=stored.get("kind"), pitch_um=stored.get("pitch_um")
        )
    elif spatial is not None:
        row, col, lattice = lattice_from_positions(spatial)
    else:
        raise ReadError(
            f"{path}: no coordinates: obs has no 'array_row'/'array_col' and obsm has no 'spatial'"
        )
    adata.obs["array_row"] = row
    adata.obs["array_col"] = col
    if spatial is None:
        adata.obsm["spatial"] = np.column_stack([col, row]).astype(float)
    _set_lattice(adata, lattice, path)
    return adata


# ----------------------------------------------------------------------------- ST tables


def read_st_table(path: str | Path, coords: str | Path | None = None) -> ad.AnnData:
    """Read a legacy ST counts table (spots as rows or columns) with optional coordinates.

    Spot ids ``"{x}x{y}"`` (floats allowed, rounded when within 0.3 of the lattice) give
    ``array_col = x`` and ``array_row = y``, the ST pipeline convention. A coordinates table
    (given or found beside the counts) takes precedence: columns ``array_row``/``array_col``,
    ``array_y``/``array_x``, or ``x``/``y`` keyed by spot id; ``pixel_x``/``pixel_y`` become
    ``obsm["spatial"]``; a ``selected`` column keeps only spots under the tissue.
    """
    path = Path(path)
    table = _read_table(path, index_col=0)
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise ReadError(f"{path}: empty counts table ({table.shape[0]} x {table.shape[1]})")
    coords_path = Path(coords) if coords is not None else _find_coords(path)
    coord_table = _read_coords(coords_path) if coords_path is not None else None
    table = _orient_spots_as_rows(table, coord_table, path)
    table.index = table.index.astype(str)
    repeated = table.index[table.index.duplicated()]
    if len(repeated):
        raise ReadError(f"{path}: spot id {repeated[0]!r} occurs more than once ({len(repeated)} repeat(s))")
    numeric = table.apply(pd.to_numeric, errors="coerce")
    if numeric.isna().to_numpy().any() and not table.isna().to_numpy().any():
        bad = numeric.isna().stack()
        spot, gene = bad[bad].index[0]
        raise ReadError(
            f"{path}: non-numeric count {table.loc[spot, gene]!r} at spot {spot!r}, gene {gene!r}"
        )
    adata = ad.AnnData(
        X=sp.csr_matrix(numeric.to_numpy(dtype=np.float32)),
        obs=pd.DataFrame(index=pd.Index(table.index, dtype=str)),
        var=pd.DataFrame(index=_unique_names(table.columns.astype(str), path)),
    )
    if coord_table is not None:
        adata = _attach_coords(adata, coord_table, coords_path)
    else:
        ids = _parse_spot_ids(adata.obs_names)
        if ids is None:
            raise ReadError(
                f"{path}: no coordinates: spot ids are not '{{x}}x{{y}}' (e.g. "
                f"{adata.obs_names[0]!r}) and no coordinates file was found or given"
            )
        adata.obs["array_col"] = snap_to_integers(ids[:, 0], f"{path.name} spot id x")
        adata.obs["array_row"] = snap_to_integers(ids[:, 1], f"{path.name} spot id y")
        adata.obsm["spatial"] = ids.copy()
    row = adata.obs["array_row"].to_numpy()
    col = adata.obs["array_col"].to_numpy()
    lattice = detect_lattice(row, col, spatial=np.asarray(adata.obsm["spatial"], float))
    if lattice.kind == "hex":  # ST tables are square (1k) or checkerboard (2k) arrays, never Visium
        lattice = Lattice("checkerboard")
    _set_lattice(adata, lattice, path)
    return adata


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt")
    return open(path, encoding="utf-8", errors="replace")


def _separator(path: Path) -> str | None:
    suffix = _suffix(path)
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    with _open_text(path) as fh:
        line = fh.readline()
    return "\t" if "\t" in line else ("," if "," in line else r"\s+")


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    """A delimited table; header names exactly as written (pandas renames repeats ``X.1``)."""
    sep = _separator(path)
    with _reading(path):
        table = pd.read_csv(path, sep=sep, **kwargs)
        if kwargs.get("header", 0) == 0 and table.shape[1]:
            header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
            names = header.iloc[0].astype(str).to_numpy()[-table.shape[1] :]  # R omits the index's cell
            if len(names) == table.shape[1]:
                table.columns = pd.Index(names)
    return table


def _parse_spot_ids(ids: pd.Index) -> np.ndarray | None:
    """``(n, 2)`` float (x, y) from ids like ``12x7`` or ``12.02x7.1``; None if any id differs."""
    parts = pd.Series(ids, dtype=str).str.extract(SPOT_ID)
    if parts.isna().to_numpy().any():
        return None
    return parts.to_numpy(dtype=float)


def _find_coords(counts_path: Path) -> Path | None:
    """A coordinates file beside a counts table, by the naming conventions of ST datasets."""
    name = counts_path.name
    stem = name.split(".")[0]
    prefix = re.sub(r"(_?counts?|_?cnts?|_?stdata)$", "", stem, flags=re.IGNORECASE)
    folder = counts_path.parent
    patterns = []
    if prefix:
        patterns += [
            f"{prefix}_coords.*",
            f"{prefix}_coordinates.*",
            f"{prefix}_selection.*",
            f"alignment_table_{prefix}.*",
            f"{prefix}_coor.*",
            f"{prefix}_positions.*",
        ]
    else:
        patterns += ["coords.*", "coordinates.*", "positions.*"]
    for pattern in patterns:
        hits = sorted(p for p in folder.glob(pattern) if p != counts_path)
        if hits:
            return hits[0]
    return None


def _read_coords(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ReadError(f"{path}: coordinates file not found")
    with _reading(path), _open_text(path) as fh:
        first = fh.readline()
    tokens = re.split(r"[,\t ]+", first.strip().replace('"', ""))
    headerless = all(_is_number(t) for t in tokens if t)
    table = _read_table(path, header=None if headerless else 0)
    if headerless:
        if table.shape[1] < 2:
            raise ReadError(f"{path}: expected at least 2 numeric columns (x, y), found {table.shape[1]}")
        table = table.iloc[:, :2]
        table.columns = ["x", "y"]
        table.attrs["positional"] = True
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _orient_spots_as_rows(table: pd.DataFrame, coords: pd.DataFrame | None, path: Path) -> pd.DataFrame:
    index_ids = _parse_spot_ids(table.index.astype(str)) is not None
    column_ids = _parse_spot_ids(table.columns.astype(str)) is not None
    if index_ids:
        return table
    if column_ids:
        return table.T
    if coords is not None and not coords.attrs.get("positional"):
        keys = set(_coord_keys(coords))
        if table.index.astype(str).isin(keys).mean() > 0.5:
            return table
        if table.columns.astype(str).isin(keys).mean() > 0.5:
            return table.T
    if coords is not None and coords.attrs.get("positional"):
        if len(coords) == table.shape[0]:
            return table
        if len(coords) == table.shape[1]:
            return table.T
    raise ReadError(
        f"{path}: cannot tell spots from genes: neither the row labels nor the column labels are "
        f"spot ids like '12x7' (first row label {str(table.index[0])!r}) and no coordinates file matches"
    )


def _has_id_column(coords: pd.DataFrame) -> bool:
    """Whether a coordinates table's first column holds spot ids (barcodes or spot names)."""
    first = str(coords.columns[0])
    return first.lower() in ("spot", "barcode", "barcodes", "row.names", "") or first.startswith("Unnamed")


def _coord_keys(coords: pd.DataFrame) -> list[str]:
    if _has_id_column(coords):
        return coords[coords.columns[0]].astype(str).tolist()
    if {"x", "y"} <= set(coords.columns):
        return [f"{int(round(x))}x{int(round(y))}" for x, y in zip(coords["x"], coords["y"], strict=True)]
    return coords.iloc[:, 0].astype(str).tolist()


def _attach_coords(adata: ad.AnnData, coords: pd.DataFrame, coords_path: Path) -> ad.AnnData:
    cols = set(coords.columns)
    if coords.attrs.get("positional"):
        if len(coords) != adata.n_obs:
            raise ReadError(f"{coords_path}: {len(coords)} rows but the counts table has {adata.n_obs} spots")
        matched = coords.reset_index(drop=True)
        matched.index = adata.obs_names
    else:
        keyed = coords.copy()
        if _has_id_column(keyed):
            keyed.index = keyed[keyed.columns[0]].astype(str)
        elif {"x", "y"} <= cols:
            ids = _parse_spot_ids(adata.obs_names)
            keyed.index = pd.Index(_coord_keys(keyed))
            if ids is not None:
                adata.obs_names = [f"{int(round(x))}x{int(round(y))}" for x, y in ids]
        else:
            keyed.index = keyed.iloc[:, 0].astype(str)
        if keyed.index.duplicated().any():
            raise ReadError(
                f"{coords_path}: spot {keyed.index[keyed.index.duplicated()][0]!r} is listed twice"
            )
        missing = ~adata.obs_names.isin(keyed.index)
        if missing.any() and "selected" in keyed.columns:
            # a selection table lists the spots it considered; absent spots were not selected
            adata = adata[~missing].copy()
            missing = np.zeros(adata.n_obs, dtype=bool)
        if missing.any():
            raise ReadError(
                f"{coords_path}: {int(missing.sum())} spot(s) of the counts table have no "
                f"coordinates, e.g. {adata.obs_names[missing][0]!r}"
            )
        matched = keyed.loc[adata.obs_names]
    if "selected" in matched.columns:
        keep = matched["selected"].to_numpy() == 1
        adata = adata[keep].copy()
        matched = matched[keep]
        adata.uns["stentrans_read_note"] = f"kept {int(keep.sum())} spots with selected == 1 (under tissue)"
    if {"array_row", "array_col"} <= cols:
        row_raw, col_raw = matched["array_row"], matched["array_col"]
    elif {"array_y", "array_x"} <= cols:
        row_raw, col_raw = matched["array_y"], matched["array_x"]
    elif {"x", "y"} <= cols:
        row_raw, col_raw = matched["y"], matched["x"]
    else:
        raise ReadError(
            f"{coords_path}: no coordinate columns: expected array_row/array_col, "
            f"array_y/array_x or x/y; found {list(coords.columns)}"
        )
    adata.obs["array_row"] = snap_to_integers(row_raw.to_numpy(dtype=float), f"{coords_path.name} row")
    adata.obs["array_col"] = snap_to_integers(col_raw.to_numpy(dtype=float), f"{coords_path.name} col")
    if {"pixel_x", "pixel_y"} <= cols:
        adata.obsm["spatial"] = matched[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    elif {"x", "y"} <= cols:
        adata.obsm["spatial"] = matched[["x", "y"]].to_numpy(dtype=float)
    else:
        adata.obsm["spatial"] = np.column_stack([adata.obs["array_col"], adata.obs["array_row"]]).astype(
            float
        )
    for extra in ("layer", "label", "spatial_cluster_BayesSpace"):
        if extra in cols:
            adata.obs[extra] = matched[extra].astype(str).to_numpy()
    return adata


# ----------------------------------------------------------------------------- shared


def _set_lattice(
    adata: ad.AnnData, lattice: Lattice, source: Path, in_tissue_unmeasured: np.ndarray | None = None
) -> None:
    adata.obs["array_row"] = adata.obs["array_row"].astype(np.int64)
    adata.obs["array_col"] = adata.obs["array_col"].astype(np.int64)
    info = {"kind": lattice.kind, "pitch_um": float(lattice.pitch_um), "source": str(source)}
    if in_tissue_unmeasured is not None and len(in_tissue_unmeasured):
        info["in_tissue_unmeasured"] = np.asarray(in_tissue_unmeasured, dtype=np.int64)
    adata.uns["stentrans_lattice"] = info


def lattice_of(adata: ad.AnnData) -> Lattice:
    """The lattice recorded by a reader (or detected from ``obs`` when absent)."""
    info = adata.uns.get("stentrans_lattice")
    if info is not None:
        return Lattice(info["kind"], float(info.get("pitch_um", 0.0)))
    spatial = np.asarray(adata.obsm["spatial"], float) if "spatial" in adata.obsm else None
    return detect_lattice(
        adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy(), spatial=spatial
    )


def _has_non_integer(x) -> bool:
    data = x.data if sp.issparse(x) else np.asarray(x)
    data = np.asarray(data)
    finite = data[np.isfinite(data)]
    return bool(finite.size and np.any(finite != np.round(finite)))


MIN_SPOTS = 3  # fewer spots fix no lattice and leave nothing to learn from


def _check_not_empty(adata: ad.AnnData, path: Path) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ReadError(f"{path}: empty count matrix ({adata.n_obs} spots x {adata.n_vars} genes)")


def _validate_counts(adata: ad.AnnData, path: Path) -> None:
    _check_not_empty(adata, path)
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not np.all(np.isfinite(data)):
        raise ReadError(f"{path}: count matrix contains NaN or infinite values")
    if data.size and data.min() < 0:
        raise ReadError(f"{path}: count matrix contains negative values (min {data.min():g})")
    if _has_non_integer(adata.X):
        raise ReadError(
            f"{path}: count matrix has non-integer values; stEnTrans needs raw counts "
            "(store them in X or layers['counts'])"
        )
    if adata.n_obs < MIN_SPOTS:
        raise ReadError(f"{path}: only {adata.n_obs} spot(s); a slide needs at least {MIN_SPOTS}")
    if not (data != 0).any():
        raise ReadError(f"{path}: every count is zero ({adata.n_obs} spots x {adata.n_vars} genes)")
