"""Spot annotations from a ``barcode,label`` table (e.g. the DLPFC layer labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ReadError
from .common import reading


def read_labels(path: str | Path, obs_names: pd.Index) -> np.ndarray:
    """One label per spot of a slide from a CSV whose first column is the barcode.

    Parameters
    ----------
    path
        CSV whose first column holds barcodes and second the labels, with a header row or
        without one (a first row whose first cell is a barcode of the slide is data).
    obs_names
        The slide's barcodes, in order.

    Returns
    -------
    ``(n_spots,)`` labels as text; ``"nan"`` for spots the table does not list.

    Raises
    ------
    ReadError
        The file cannot be read, has no label column, or lists none of the slide's barcodes.
    """
    path = Path(path)
    with reading(path):
        table = pd.read_csv(path, index_col=0)
        if str(table.index.name) in set(obs_names):  # no header: the first row is a spot
            table = pd.read_csv(path, index_col=0, header=None)
    if table.shape[1] < 1 or not obs_names.isin(table.index).any():
        raise ReadError(f"{path}: needs barcode,label columns with the slide's barcodes")
    return table.iloc[:, 0].reindex(obs_names).astype(str).to_numpy()


__all__ = ["read_labels"]
