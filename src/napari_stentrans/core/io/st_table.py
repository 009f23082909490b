"""Legacy ST count tables (CSV/TSV, gzipped or not, spots as rows or columns) with coordinates.

Spot ids ``"{x}x{y}"`` (Stahl et al. 2016, the ST pipeline) or a coordinates table beside the
counts (``coords``, ``{name}_selection.tsv``, ``alignment_table_{name}.tsv`` of the ST
pipeline and STUtility, ...).
"""

from __future__ import annotations

import csv
import re
import zlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from pandas.io.common import get_handle

from ..lattice import Lattice, detect_lattice, snap_to_integers
from .common import ReadError, add_read_note, reading, set_lattice, suffix, unique_names
from .st_image import attach_image

TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
SPOT_ID = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*x\s*(-?\d+(?:\.\d+)?)\s*$")
# column names of spot-position tables (Space Ranger tissue_positions, the legacy ST spot
# detector's spot_data-selection, scanpy/Seurat coordinate exports): never a counts header
POSITION_COLUMNS = frozenset(
    "barcode in_tissue tissue array_row array_col row col pxl_row_in_fullres pxl_col_in_fullres "
    "x y new_x new_y pixel_x pixel_y selected imagerow imagecol spatial_1 spatial_2".split()
)
#: share of a selection table's selected spots that may lack counts before it is refused as
#: another section's table (0-2 % on the real tables)
MAX_ORPHAN_SELECTED = 0.1
TEN_X_BARCODE = re.compile(r"^[ACGTN]{12,18}(-\d+)?$")


def read_st_table(path: str | Path, coords: str | Path | None = None) -> ad.AnnData:
    """Read a legacy ST counts table (spots as rows or columns) with optional coordinates.

    Spot ids ``"{x}x{y}"`` (floats allowed, rounded when within 0.3 of the lattice) give
    ``array_col = x`` and ``array_row = y``, the ST pipeline convention. A coordinates table
    (given or found beside the counts) takes precedence: columns ``array_row``/``array_col``,
    ``array_y``/``array_x``, or ``x``/``y`` keyed by spot id; ``pixel_x``/``pixel_y`` become
    ``obsm["spatial"]``; a ``selected`` column keeps only spots under the tissue.
    """
    path = Path(path)
    table = _read_counts_table(path)
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise ReadError(
            f"{path}: no counts: the table has a header but no rows or columns of numbers; "
            "expected a counts table of spots x genes"
        )
    coords_path = Path(coords) if coords is not None else _find_coords(path)
    coord_table = _read_coords(coords_path) if coords_path is not None else None
    transposed = _spots_are_columns(table, coord_table, path, coords_path)
    values = _numeric_counts(table, path, transposed)  # as in the file, one conversion for the table
    spots, genes = (table.columns, table.index) if transposed else (table.index, table.columns)
    if transposed:
        values = values.T
    spots = spots.astype(str)
    repeated = spots[spots.duplicated()]
    if len(repeated):
        raise ReadError(f"{path}: spot id {repeated[0]!r} occurs more than once ({len(repeated)} repeat(s))")
    del table  # the dense table is the largest thing a read holds: free it early
    adata = ad.AnnData(
        X=_sparse_by_rows(values),
        obs=pd.DataFrame(index=pd.Index(spots, dtype=str)),
        var=pd.DataFrame(index=unique_names(genes.astype(str), path)),
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
    set_lattice(adata, lattice, path)
    if coord_table is not None and {"pixel_x", "pixel_y"} <= set(coord_table.columns):
        note = attach_image(adata, path, coords_path)
        if note is not None:
            add_read_note(adata, note)
    # which positions were used: ``stentrans info`` says so (a sibling file is picked by name)
    adata.uns["stentrans_lattice"]["coordinates"] = (
        f"from {coords_path}"
        if coord_table is not None
        else "from the spot ids ('{x}x{y}'); no coordinates file"
    )
    return adata


def _sparse_by_rows(values: np.ndarray, rows: int = 256) -> sp.csr_matrix:
    """CSR of a dense matrix built a block of rows at a time (SciPy's own conversion holds int64
    row and column indices of every stored value at once: 2.5x the final matrix)."""
    if values.shape[0] <= rows:
        return sp.csr_matrix(values)
    return sp.vstack([sp.csr_matrix(values[i : i + rows]) for i in range(0, values.shape[0], rows)], "csr")


def _read_counts_table(path: Path) -> pd.DataFrame:
    """The counts table with its first column as the index, counts parsed straight to float32.

    Half the memory of pandas' default int64/float64 columns, and no second numeric copy (a 60 MB
    table of 1,000 spots x 30,000 genes took 1.4 GB for ``info``). A table with a non-numeric
    cell is read again the general way, so that the message can name the cell.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)  # converter wins over dtype
            return _read_table(path, index_col=0, dtype=np.float32, converters={0: str})
    except ReadError as exc:
        if not isinstance(exc.__cause__, ValueError):
            raise
    return _read_table(path, index_col=0)


def _separator(path: Path) -> str | None:
    kind = suffix(path)
    if kind == ".tsv":
        return "\t"
    if kind == ".csv":
        return ","
    line = _first_line(path)
    return "\t" if "\t" in line else ("," if "," in line else r"\s+")


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    """A delimited table; header names exactly as written (pandas renames repeats ``X.1``).

    One ``read_csv`` of the file; the header line is read again on its own (pandas would
    rename repeated gene names) and split with the same separator and quoting.
    """
    sep = _separator(path)
    with reading(path):
        table = pd.read_csv(path, sep=sep, **kwargs)
        if kwargs.get("header", 0) == 0 and table.shape[1]:
            names = _header_cells(path, sep)[-table.shape[1] :]  # R omits the index's cell
            if len(names) == table.shape[1]:
                table.columns = pd.Index(names)
    return table


def looks_like_counts_table(path: Path) -> bool:
    """False when a ``.csv``/``.tsv``/``.txt`` file is clearly another kind of table (first two lines).

    For front ends that share file types with other tools (napari opens CSVs of points, labels
    and annotations too). Another kind of table: napari's own point and shape tables (header
    ``index,axis-0,...``); spot-position tables (a header naming two or more position columns
    such as ``array_row``, ``pxl_col_in_fullres``, ``x``, ``new_y``, or Space Ranger 1's
    headerless ``barcode,in_tissue,row,col,pxl_row,pxl_col`` lines); a second line of fewer than 3 cells that does not start with a spot id ``12x7`` (masks,
    labels, coordinates); or a second line whose cells after the first are mostly not numbers.
    Anything unclear (an empty, one-line, unreadable or
    corrupt file) is True, so the reader that understands tables says what is wrong. Never raises.
    """
    try:
        header, line = (_first_lines(path, 2) + ["", ""])[:2]
    except (OSError, ValueError, EOFError, UnicodeError, zlib.error):
        return True
    sep = "\t" if "\t" in header else ("," if "," in header else None)
    header_cells = [cell.strip().strip('"').lower() for cell in header.split(sep)]
    if "axis-0" in header_cells:
        return False
    if sum(cell in POSITION_COLUMNS for cell in header_cells) >= 2:
        return False
    if len(header_cells) == 6 and TEN_X_BARCODE.match(header_cells[0].upper()):
        return False  # Space Ranger 1's headerless tissue_positions_list.csv
    if not line.strip():
        return True
    cells = line.split(sep)
    if SPOT_ID.match(cells[0].strip('"')):  # a legacy ST spot id: "12x7"
        return True
    if len(cells) < 3:
        return False
    numeric = [_is_number(cell.strip().strip('"')) for cell in cells[1:]]
    return 2 * sum(numeric) >= len(numeric)


def _first_lines(path: Path, n: int) -> list[str]:
    """A text file's first ``n`` lines (fewer if shorter; gzip, bz2, xz, zip or zstd by suffix,
    as pandas reads them), line endings removed."""
    with get_handle(path, "r", compression="infer", encoding="utf-8-sig", errors="replace") as handle:
        lines = [handle.handle.readline() for _ in range(n)]
    return [line.rstrip("\r\n") for line in lines if line]


def _first_line(path: Path) -> str:
    """A text file's first line ("" for an empty file)."""
    return (_first_lines(path, 1) or [""])[0]


def _header_cells(path: Path, sep: str) -> list[str]:
    """The cells of a table's first line, split as pandas' parser splits them."""
    line = _first_line(path)
    if sep == r"\s+":
        return [cell.strip('"') for cell in line.split()]
    return next(csv.reader([line], delimiter=sep, quotechar='"'), [])


def _numeric_counts(table: pd.DataFrame, path: Path, spots_are_columns: bool) -> np.ndarray:
    """The table's cells as ``float32`` (file orientation), converted once for the whole table.

    Columns pandas parsed as numbers are taken as they are; the cells of any other column are
    converted together (one ``to_numeric`` call, not one per gene). A cell that is not a number
    is a ReadError naming it, unless the table also has empty cells (then NaN, refused later as
    "NaN or infinite values").
    """
    numeric = np.array([pd.api.types.is_numeric_dtype(t) for t in table.dtypes], dtype=bool)
    if numeric.all():
        return table.to_numpy(dtype=np.float32)
    values = np.empty(table.shape, dtype=np.float32)
    if numeric.any():
        values[:, numeric] = table.iloc[:, np.flatnonzero(numeric)].to_numpy(dtype=np.float32)
    cells = table.iloc[:, np.flatnonzero(~numeric)].to_numpy(dtype=object)
    converted = pd.to_numeric(pd.Series(cells.ravel()), errors="coerce").to_numpy(dtype=np.float64)
    converted = converted.reshape(cells.shape)
    values[:, ~numeric] = converted
    failed = np.isnan(converted) & ~pd.isna(cells)
    if failed.any() and not table.isna().to_numpy().any():
        i, j = np.argwhere(failed)[0]
        row, col = table.index[i], table.columns[np.flatnonzero(~numeric)[j]]
        spot, gene = (col, row) if spots_are_columns else (row, col)
        raise ReadError(f"{path}: non-numeric count {cells[i, j]!r} at spot {spot!r}, gene {gene!r}")
    return values


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
    with reading(path):
        first = _first_line(path)
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


def _spots_are_columns(
    table: pd.DataFrame, coords: pd.DataFrame | None, path: Path, coords_path: Path | None = None
) -> bool:
    """Whether the table holds spots as columns (genes as rows), from its labels and coordinates."""
    index_ids = _parse_spot_ids(table.index.astype(str)) is not None
    column_ids = _parse_spot_ids(table.columns.astype(str)) is not None
    if index_ids:
        return False
    if column_ids:
        return True
    listed = None  # (labels listed in the coordinates file, of how many, "row"/"column")
    if coords is not None and not coords.attrs.get("positional"):
        keys = set(_coord_keys(coords))
        in_index, in_columns = table.index.astype(str).isin(keys), table.columns.astype(str).isin(keys)
        if in_index.mean() > 0.5:
            return False
        if in_columns.mean() > 0.5:
            return True
        if in_index.any() or in_columns.any():
            listed = max(
                (int(in_index.sum()), len(in_index), "row"),
                (int(in_columns.sum()), len(in_columns), "column"),
            )
    if coords is not None and coords.attrs.get("positional"):
        if len(coords) == table.shape[0]:
            return False
        if len(coords) == table.shape[1]:
            return True
    if listed is not None:  # a coordinates file for part of the spots (another slide's, a subset)
        n, total, axis = listed
        raise ReadError(
            f"{coords_path}: has coordinates for only {n} of the {total} spots of {path.name} (its {axis} "
            "labels): is it the coordinates file of this slide?"
        )
    raise ReadError(
        f"{path}: cannot tell spots from genes: neither the row labels nor the column labels are "
        f"spot ids like '12x7' (first row label {str(table.index[0])!r}) and no coordinates file matches"
        + (f" ({coords_path} lists none of them)" if coords is not None else "")
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
    # counts spots a selection table does not list, and its selected spots without counts
    unlisted = orphans = 0
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
            # a selection table lists the spots it considered; absent spots were not selected.
            # Its own selected spots lack counts rarely (0-2 % on the her2st and ST2k tables, spots
            # without counts); many of them missing means another section's table
            selected = keyed.index[keyed["selected"].to_numpy() == 1]
            orphans = int((~selected.isin(adata.obs_names)).sum())
            if orphans > MAX_ORPHAN_SELECTED * max(len(selected), 1):
                raise ReadError(
                    f"{coords_path}: {orphans} of its {len(selected)} selected spots have no counts and "
                    f"{int(missing.sum())} of the counts table's {adata.n_obs} spots are not in "
                    f"{coords_path.name}: is it the coordinates file of another section?"
                )
            unlisted = int(missing.sum())
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
        note = f"kept {int(keep.sum())} spots with selected == 1 (under tissue)"
        if unlisted:
            note += f"; {unlisted} spots of the counts table are not listed in {coords_path.name} (left out)"
        if orphans:  # counts removed upstream (e.g. spots with none): not imputed from an ST table
            note += f"; {orphans} selected spots of {coords_path.name} have no counts (left out)"
        add_read_note(adata, note)
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
            # a spot without an annotation stays missing (astype(str) made it a category "nan")
            values = matched[extra]
            adata.obs[extra] = pd.Categorical(values.where(values.isna(), values.astype(str)).to_numpy())
    return adata
