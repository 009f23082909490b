"""Spot annotations from a table: ``barcode,label`` (e.g. the DLPFC layer labels) or, for legacy
ST, ``x,y,...,label`` keyed by the spots' array coordinates (e.g. her2st's
``*_labeled_coordinates.tsv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ReadError
from .common import reading


def read_labels(
    path: str | Path,
    obs_names: pd.Index,
    array: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """One label per spot of a slide from a CSV or TSV table.

    Two layouts are read (the separator, comma or tab, is detected):

    - the first column holds barcodes and the second the labels, with a header row or without
      one (a first row whose first cell is a barcode of the slide is data);
    - legacy ST (Andersson et al. 2021, her2st ``*_labeled_coordinates.tsv``): columns ``x``
      and ``y`` hold each spot's array coordinates (adjusted, so ``9.02``, ``20.994``) and a
      ``label`` column (else the last column) its label; ``x`` rounds to ``array_col`` and
      ``y`` to ``array_row``, as in the counts table's spot ids ``XxY``. Used when the first
      column names none of the slide's barcodes and ``array`` is given.

    Parameters
    ----------
    path
        The table.
    obs_names
        The slide's barcodes, in order.
    array
        ``(array_row, array_col)`` of the slide's spots, for the legacy ST layout.

    Returns
    -------
    ``(n_spots,)`` labels as text; ``"nan"`` for spots the table does not list.

    Raises
    ------
    ReadError
        The file cannot be read, has no label column, lists none of the slide's barcodes (nor,
        by ``x``/``y``, any of its spots), or gives two labels to one spot.
    """
    path = Path(path)
    with reading(path):
        table = pd.read_csv(path, index_col=0, sep=None, engine="python")
        if str(table.index.name) in set(obs_names):  # no header: the first row is a spot
            table = pd.read_csv(path, index_col=0, header=None, sep=None, engine="python")
    if table.shape[1] >= 1 and obs_names.isin(table.index.astype(str)).any():
        table.index = table.index.astype(str)
        return table.iloc[:, 0].reindex(obs_names).astype(str).to_numpy()
    columns = {str(c).strip().lower(): c for c in table.columns}
    if array is not None and {"x", "y"} <= columns.keys() and table.shape[1] >= 3:
        return _by_array_coordinates(path, table, columns, array)
    raise ReadError(
        f"{path}: needs barcode,label columns with the slide's barcodes (or, for legacy ST, x, y "
        "and label columns with its spots' array coordinates)"
    )


def _by_array_coordinates(
    path: Path, table: pd.DataFrame, columns: dict, array: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Labels matched to spots by rounded ``x`` (array_col) and ``y`` (array_row)."""
    label = table[columns.get("label", table.columns[-1])].astype(str).to_numpy()
    xy = table[[columns["x"], columns["y"]]].apply(pd.to_numeric, errors="coerce").to_numpy()
    ok = np.isfinite(xy).all(axis=1)
    col, row = np.rint(xy[ok]).astype(np.int64).T
    keys = pd.MultiIndex.from_arrays([row, col])
    if keys.has_duplicates:
        r, c = keys[keys.duplicated()][0]
        raise ReadError(f"{path}: two rows label the spot at x={c}, y={r} (array_col, array_row)")
    spots = pd.MultiIndex.from_arrays([np.asarray(array[0]), np.asarray(array[1])])
    where = keys.get_indexer(spots)
    if (where < 0).all():
        raise ReadError(f"{path}: its x,y coordinates match none of the slide's spots (array_col, array_row)")
    return np.where(where >= 0, label[ok][where], "nan").astype(str)


__all__ = ["read_labels"]
