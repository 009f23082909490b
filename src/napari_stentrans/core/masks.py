"""Lost sites given by the user: every accepted form of a mask, turned into ``(k, 2)`` lattice sites.

A mask says which sites of a slide were lost (folded tissue, a bubble, a bad region): they are
never used as input or training target and are imputed. Accepted forms (:data:`MASK_FORMS`):

* a list, tuple or array of **barcodes** (the slide's obs names), or a ``pd.Series`` of them;
* a ``(k, 2)`` list or array of **(array_row, array_col)** pairs (integers; ``7.5`` is refused,
  never truncated);
* a **boolean array** with one entry per spot of the slide (True = lost);
* a ``pd.DataFrame`` with ``array_row``/``array_col`` or ``barcode`` columns;
* a **CSV/TSV file** (``str`` or ``Path``): columns ``array_row,array_col`` or a ``barcode``
  column (comma, tab or semicolon separated, UTF-8 with or without a byte-order mark), a single
  column of barcodes with or without a header, or two numeric columns without a header
  (array_row, array_col).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

MASK_FORMS = (
    "a list/array of barcodes, a (k, 2) array of (array_row, array_col), a boolean array with "
    "one entry per spot, a DataFrame with array_row/array_col or barcode columns, or a CSV file "
    "of those"
)
BARCODE_COLUMNS = ("barcode", "barcodes", "spot", "spot_id", "spots")
SEPARATORS = ",\t;"


def lost_sites(mask, obs_names: pd.Index, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """``(k, 2)`` int64 (array_row, array_col) of the lost sites a mask names (see module docstring).

    Parameters
    ----------
    mask
        None, or any of the forms in the module docstring.
    obs_names
        ``(n_spots,)`` barcodes of the slide, in the order of ``row`` and ``col``.
    row, col
        ``(n_spots,)`` array coordinates of the slide's spots.

    Raises
    ------
    InputError
        A mask of another form or shape, unknown barcodes, non-integer coordinates, or an
        unreadable file (the message names the file).
    """
    if mask is None:
        return np.zeros((0, 2), np.int64)
    if isinstance(mask, str | Path):
        return _sites_of_file(Path(mask), obs_names, row, col)
    if isinstance(mask, pd.DataFrame):
        return _sites_of_table(mask, obs_names, row, col, "mask")
    if isinstance(mask, pd.Series) and mask.dtype != bool:
        return _sites_of_barcodes(mask.astype(str).to_numpy(), obs_names, row, col, "mask")
    arr = np.asarray(mask.to_numpy() if isinstance(mask, pd.Series) else mask)
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.dtype == bool:
        if arr.shape != (len(obs_names),):
            raise InputError(
                f"mask: a boolean mask needs one entry per spot, shape ({len(obs_names)},); got {arr.shape}"
            )
        return np.column_stack([row[arr], col[arr]]).astype(np.int64)
    if arr.dtype.kind in "USO" and arr.ndim == 1:
        return _sites_of_barcodes(arr.astype(str), obs_names, row, col, "mask")
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype.kind in "iuf":
        return _integer_sites(arr, "mask")
    raise InputError(f"mask: cannot use an array of shape {arr.shape} ({arr.dtype}); expected {MASK_FORMS}")


def _integer_sites(values: np.ndarray, source: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InputError(
            f"{source}: (array_row, array_col) must be integers; pair {i + 1} is "
            f"({values[i, 0]:g}, {values[i, 1]:g}) ({int(bad.any(axis=1).sum())} such row(s))"
        )
    return values.astype(np.int64).reshape(-1, 2)


def _sites_of_barcodes(
    names: np.ndarray, obs_names: pd.Index, row: np.ndarray, col: np.ndarray, source: str
) -> np.ndarray:
    names = pd.Index(np.char.strip(np.asarray(names, dtype=str)))
    unknown = ~names.isin(obs_names)
    if unknown.any():
        raise InputError(
            f"{source}: {int(unknown.sum())} of {len(names)} barcode(s) are not spots of the slide, "
            f"e.g. {names[unknown][0]!r} (slide barcodes look like {obs_names[0]!r})"
        )
    sel = obs_names.isin(names)
    return np.column_stack([row[sel], col[sel]]).astype(np.int64)


def _sites_of_table(
    table: pd.DataFrame, obs_names: pd.Index, row: np.ndarray, col: np.ndarray, source: str
) -> np.ndarray:
    columns = {str(c).strip().lower(): c for c in table.columns}
    if "array_row" in columns and "array_col" in columns:
        sites = table[[columns["array_row"], columns["array_col"]]]
        numeric = sites.apply(pd.to_numeric, errors="coerce")
        if numeric.isna().to_numpy().any():
            i, j = np.argwhere(numeric.isna().to_numpy())[0]
            raise InputError(
                f"{source}: array_row/array_col must be integers; data row {i + 1} has {sites.iat[i, j]!r}"
            )
        return _integer_sites(numeric.to_numpy(dtype=np.float64), source)
    for name in BARCODE_COLUMNS:
        if name in columns:
            return _sites_of_barcodes(
                table[columns[name]].astype(str).to_numpy(), obs_names, row, col, source
            )
    raise InputError(
        f"{source}: a mask table needs array_row,array_col or barcode columns; found {list(table.columns)}"
    )


def _sites_of_file(path: Path, obs_names: pd.Index, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: mask file not found")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: the mask file is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}; "
            "an image or a spreadsheet?); a mask file is a CSV with array_row,array_col or barcode columns"
        ) from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the mask file ({type(exc).__name__}: {exc})") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{path}: the mask file is empty; {MASK_FORMS}")
    # comma, tab or semicolon: whichever the first line holds most of (pandas' sniffer once took
    # the "r" of "barcode" for the separator); a one-column file has none of them
    counts = {sep: lines[0].count(sep) for sep in SEPARATORS}
    sep = max(counts, key=counts.get) if max(counts.values()) else ","
    cells = [[cell.strip() for cell in record] for record in csv.reader(lines, delimiter=sep)]
    width = len(cells[0])
    ragged = [i for i, record in enumerate(cells) if len(record) != width]
    if ragged:
        raise InputError(
            f"{path}: line {ragged[0] + 1} has {len(cells[ragged[0]])} field(s), the first line {width}"
        )
    if all(_is_number(c) for c in cells[0]):  # no header
        if width == 2:
            values = np.array([[float(c) if _is_number(c) else np.nan for c in r] for r in cells])
            return _integer_sites(values, str(path))
        if width != 1:
            raise InputError(
                f"{path}: {width} numeric columns without a header; expected array_row,array_col"
            )
    if width == 1:
        names = [r[0] for r in cells]
        # a header names the column (no digit: barcodes and spot ids have some); a first line
        # that is a barcode of the slide is data, and any other is reported as unknown
        header = names[0].lower() in BARCODE_COLUMNS or not any(ch.isdigit() for ch in names[0])
        if header and names[0] not in obs_names:
            names = names[1:]
        if names and all(_is_number(n) for n in names) and not pd.Index(names).isin(obs_names).any():
            raise InputError(
                f"{path}: one column of numbers; a mask file lists barcodes or array_row,array_col pairs"
            )
        return _sites_of_barcodes(np.asarray(names, dtype=str), obs_names, row, col, str(path))
    table = pd.DataFrame(cells[1:], columns=cells[0])
    return _sites_of_table(table, obs_names, row, col, str(path))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


__all__ = ["lost_sites", "MASK_FORMS"]
