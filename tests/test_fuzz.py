"""Property-based fuzzing (hypothesis): readers and lattice detection never fail unhandled.

Whatever bytes a table or positions file holds, ``read`` returns a valid slide or raises
:class:`ReadError` naming the file; lattice detection returns a lattice that holds every site,
or raises :class:`LatticeError`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import block_sites, make_slide, write_spaceranger
from napari_stentrans.core.io import ReadError, read
from napari_stentrans.core.lattice import Lattice, LatticeError, detect_lattice, lattice_from_positions

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_FILES = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(
    st.integers(-5, 50),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["", "NA", "x", "1e3", " 7 ", "-0", "3.0"]),
)
spot_ids = st.one_of(
    st.builds(lambda x, y: f"{x}x{y}", st.integers(-3, 40), st.integers(-3, 40)),
    st.builds(lambda x, y: f"{x:.2f}x{y:.2f}", st.floats(0, 40), st.floats(0, 40)),
    st.text(alphabet='ACGTx0123456789.-_ ,\t"', min_size=0, max_size=8),
)


def _check_slide(adata, path: Path) -> None:
    """What every successfully read slide must satisfy."""
    x = adata.X.toarray()
    assert adata.n_obs >= 3 and adata.n_vars >= 1
    assert np.isfinite(x).all() and (x >= 0).all() and (x == np.round(x)).all()
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    assert rows.dtype.kind == "i" and cols.dtype.kind == "i"
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == adata.n_obs
    kind = adata.uns["stentrans_lattice"]["kind"]
    assert Lattice(kind).contains(rows, cols).all()


def _read_or_refuse(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            adata = read(path)
        except ReadError as exc:
            assert path.name in str(exc) or path.parent.name in str(exc), str(exc)
            return
    _check_slide(adata, path)


lattice_ids = st.lists(
    st.builds(lambda x, y: f"{x}x{y}", st.integers(1, 8), st.integers(1, 8)),
    min_size=0,
    max_size=12,
    unique=True,
)


@FUZZ_FILES
@given(
    ids=st.one_of(lattice_ids, st.lists(spot_ids, min_size=0, max_size=12)),
    values=st.lists(st.lists(st.integers(0, 30), min_size=3, max_size=3), min_size=12, max_size=12),
    corrupt=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2), numbers), max_size=2),
    sep=st.sampled_from(["\t", ","]),
    transpose=st.booleans(),
    header=st.one_of(
        st.just(["Actb", "Gapdh", "Mbp"]),
        st.lists(st.text(alphabet="ABCxy_0123 ", min_size=0, max_size=5), min_size=3, max_size=3),
    ),
)
def test_counts_tables_are_read_or_refused(ids, values, corrupt, sep, transpose, header):
    table = pd.DataFrame(values[: len(ids)], index=ids, columns=header, dtype=object)
    for i, j, value in corrupt:
        if i < len(table):
            table.iat[i, j] = value
    if transpose:
        table = table.T
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("counts.tsv" if sep == "\t" else "counts.csv")
        table.to_csv(path, sep=sep)
        _read_or_refuse(path)


@FUZZ_FILES
@given(data=st.data())
def test_positions_files_are_read_or_refused(data):
    r, c = block_sites("hex", 4, 8)
    slide = make_slide(r, c, "hex")
    with tempfile.TemporaryDirectory() as folder:
        sr = Path(folder) / "sr"
        write_spaceranger(sr, slide, matrix="h5", positions="v2")
        path = sr / "spatial" / "tissue_positions.csv"
        table = pd.read_csv(path).astype(object)
        for _ in range(data.draw(st.integers(1, 6))):  # corrupt a few cells, drop or rename columns
            action = data.draw(st.sampled_from(["cell", "drop", "rename", "rows"]))
            if action == "cell" and len(table):
                i = data.draw(st.integers(0, len(table) - 1))
                j = data.draw(st.integers(0, table.shape[1] - 1))
                table.iat[i, j] = data.draw(st.one_of(numbers, spot_ids))
            elif action == "drop" and table.shape[1] > 1:
                table = table.drop(columns=data.draw(st.sampled_from(list(table.columns))))
            elif action == "rename":
                old = data.draw(st.sampled_from(list(table.columns)))
                table = table.rename(columns={old: data.draw(st.text(min_size=1, max_size=6))})
            else:
                table = table.sample(frac=data.draw(st.floats(0.0, 1.0)), random_state=0)
        table.to_csv(path, index=False, header=data.draw(st.booleans()))
        _read_or_refuse(sr)


coords = st.lists(st.tuples(st.integers(-20, 20), st.integers(-20, 20)), min_size=0, max_size=40)


@FUZZ
@given(points=coords, hint=st.sampled_from([None, "square", "hex", "checkerboard"]), with_xy=st.booleans())
def test_lattice_detection_holds_every_site_or_refuses(points, hint, with_xy):
    rows = np.array([p[0] for p in points], dtype=np.int64)
    cols = np.array([p[1] for p in points], dtype=np.int64)
    spatial = np.column_stack([cols * 1.0, rows * 1.7]) if with_xy and len(points) else None
    try:
        lattice = detect_lattice(rows, cols, spatial=spatial, hint=hint)
    except LatticeError:
        return
    assert lattice.contains(rows, cols).all()
    u, v = lattice.to_index(rows, cols)
    np.testing.assert_array_equal(np.stack(lattice.from_index(u, v)), np.stack([rows, cols]))


@FUZZ
@given(
    kind=st.sampled_from(["square", "hex"]),
    angle=st.floats(0, 2 * np.pi),
    scale=st.floats(0.5, 500),
    noise=st.floats(0, 0.5),
    keep=st.floats(0.05, 1.0),
    junk=st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), max_size=3),
)
def test_lattice_recovery_from_positions_never_fails_unhandled(kind, angle, scale, noise, keep, junk):
    r, c = block_sites(kind, 8, 10)
    lattice = Lattice(kind)
    xy = lattice.physical(r, c) / lattice.pitch_um
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rng = np.random.default_rng(0)
    pts = (xy @ rot.T + rng.normal(0, noise * 0.3, xy.shape)) * scale
    pts = pts[rng.random(len(pts)) < keep]
    if junk:
        pts = np.vstack([pts, np.array(junk, dtype=float)])
    try:
        rows, cols, found = lattice_from_positions(pts)
    except LatticeError:
        return
    assert len(rows) == len(pts) and found.contains(rows, cols).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == len(pts)
