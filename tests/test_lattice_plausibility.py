"""Lattice plausibility: coordinates are read as their own lattice or refused, never as another.

Property-based (hypothesis): blocks of each lattice kind, seen through a random image frame
(rotation, mirror, scale, offset), are detected as their own kind with the right neighbour
geometry; permuted, swapped, scaled and merged coordinates are refused, or (where the change is
a symmetry of the lattice, e.g. swapping a square grid's axes) read with the true geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from helpers import block_sites
from napari_stentrans.core.lattice import Lattice, LatticeError, check_plausible, detect_lattice

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = ("square", "hex", "checkerboard")


def _frame(xy: np.ndarray, angle: float, mirror: bool, scale: float, offset: float) -> np.ndarray:
    """Physical positions seen in an image: rotated, maybe mirrored, scaled and shifted."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if mirror:
        rot = rot @ np.diag([1.0, -1.0])
    return xy @ rot.T * scale + offset


def _block(kind: str, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    r, c = block_sites("square" if kind == "square" else "hex", n_rows, n_cols)
    return r + 3, c + 5  # away from 0, as on a real array


def _in_image(kind: str, r: np.ndarray, c: np.ndarray, frame) -> np.ndarray:
    """The true image positions of sites ``r, c`` of a ``kind`` lattice, in pitches, framed."""
    lattice = Lattice(kind)
    return _frame(lattice.physical(r, c) / lattice.pitch_um, *frame)


def _image_neighbours_are_one_pitch_apart(lattice: Lattice, r, c, spatial) -> None:
    """The README's check: spots nearest in the image are lattice neighbours, one pitch apart."""
    tree = cKDTree(spatial)
    dist, _ = tree.query(spatial, k=2)
    pairs = np.array(sorted(tree.query_pairs(1.2 * np.median(dist[:, 1]))))
    um = lattice.physical(r, c)
    d = np.linalg.norm(um[pairs[:, 0]] - um[pairs[:, 1]], axis=1)
    np.testing.assert_allclose(d, lattice.pitch_um, rtol=1e-9)


frames = st.tuples(
    st.floats(0, 2 * np.pi), st.booleans(), st.floats(0.5, 400), st.floats(-1e4, 1e4)
)  # angle, mirror, pixels per pitch, offset


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    size=st.tuples(st.integers(5, 12), st.integers(6, 16)),
    frame=frames,
    noise=st.floats(0, 0.1),
    hint=st.booleans(),
)
def test_true_lattices_are_read_as_themselves(kind, size, frame, noise, hint):
    r, c = _block(kind, *size)
    spatial = _in_image(kind, r, c, frame)
    spatial += np.random.default_rng(1).normal(0, noise * frame[2], spatial.shape)
    found = detect_lattice(r, c, spatial=spatial, hint=kind if hint else None)
    assert found.kind == kind
    if noise < 0.02:
        _image_neighbours_are_one_pitch_apart(found, r, c, spatial)


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    size=st.tuples(st.integers(5, 12), st.integers(6, 16)),
    frame=frames,
    hint=st.booleans(),
)
def test_swapped_coordinates_are_refused_or_read_with_the_true_geometry(kind, size, frame, hint):
    r, c = _block(kind, *size)
    spatial = _in_image(kind, r, c, frame)
    try:
        found = detect_lattice(c, r, spatial=spatial, hint=kind if hint else None)
    except LatticeError as exc:
        assert kind == "hex" and "swapped" in str(exc)  # only a Visium swap changes the geometry
        return
    assert kind != "hex" and found.kind == kind  # square, checkerboard: a transpose is a symmetry
    _image_neighbours_are_one_pitch_apart(found, c, r, spatial)


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    size=st.tuples(st.integers(5, 12), st.integers(6, 16)),
    frame=frames,
    n_moved=st.integers(2, 12),
    seed=st.integers(0, 2**16),
)
def test_permuted_coordinates_are_refused(kind, size, frame, n_moved, seed):
    r, c = _block(kind, *size)
    spatial = _in_image(kind, r, c, frame)
    rng = np.random.default_rng(seed)
    moved = rng.choice(len(r), size=min(n_moved, len(r)), replace=False)
    order = np.arange(len(r))
    order[moved] = np.roll(moved, 1)  # each moved spot takes another's position
    with pytest.raises(LatticeError, match="half a spot pitch"):
        detect_lattice(r, c, spatial=spatial[order])


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    size=st.tuples(st.integers(5, 12), st.integers(6, 16)),
    frame=frames,
    factor=st.tuples(st.integers(1, 3), st.integers(1, 3)).filter(lambda f: f != (1, 1)),
    with_xy=st.booleans(),
    hint=st.booleans(),
)
def test_scaled_coordinates_are_refused(kind, size, frame, factor, with_xy, hint):
    """Of 20 spots or more (fewer say too little about their spacing)."""
    r, c = _block(kind, *size)
    assume(len(r) >= 20)
    spatial = _in_image(kind, r, c, frame) if with_xy else None
    rs, cs = r * factor[0], c * factor[1]
    try:
        found = detect_lattice(rs, cs, spatial=spatial, hint=kind if hint else None)
    except LatticeError:
        return
    pytest.fail(f"{kind} coordinates scaled by {factor} were read as a {found.kind} lattice")


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    size=st.tuples(st.integers(5, 10), st.integers(6, 12)),
    frame=frames,
    other=st.one_of(st.none(), frames),
    shift=st.tuples(st.floats(2, 50), st.floats(0, 2 * np.pi)),
    gap=st.integers(0, 6),
)
def test_merged_sections_are_refused_or_read_with_the_true_geometry(kind, size, frame, other, shift, gap):
    """Two sections side by side in array coordinates, each with its own image positions: in
    another image frame (``other``), or in the same frame moved by 2-50 pitches."""
    r, c = _block(kind, *size)
    lattice = Lattice(kind)
    r2, c2 = r, c + 2 * ((c.max() - c.min()) // 2 + 1 + gap)  # the same parity, no collision
    xy = lattice.physical(r, c) / lattice.pitch_um
    xy2 = lattice.physical(r2, c2) / lattice.pitch_um
    if other is None:
        length, angle = shift
        xy2 = _frame(xy2 + length * np.array([np.cos(angle), np.sin(angle)]), *frame)
    else:
        xy2 = _frame(xy2, *other)
    rows, cols, spatial = (
        np.concatenate([r, r2]),
        np.concatenate([c, c2]),
        np.vstack([_frame(xy, *frame), xy2]),
    )
    try:
        found = detect_lattice(rows, cols, spatial=spatial)
    except LatticeError:
        return
    _image_neighbours_are_one_pitch_apart(found, rows, cols, spatial)  # never another geometry


@PROPERTY
@given(frame=frames, offset=st.sampled_from([(0, 1), (1, 0)]))
def test_hex_sections_merged_off_parity_are_refused(frame, offset):
    """Two Visium blocks, one shifted by a single array step: together they look square."""
    r, c = _block("hex", 8, 12)
    r2, c2 = r + offset[0], c + offset[1] + 30
    lattice = Lattice("hex")
    spatial = _frame(
        np.vstack([lattice.physical(r, c), lattice.physical(r2 - offset[0], c2 - offset[1])]) / 100, *frame
    )
    with pytest.raises(LatticeError):
        detect_lattice(np.concatenate([r, r2]), np.concatenate([c, c2]), spatial=spatial)


# ----------------------------------------------------------------------------- examples


def test_messages_say_what_is_wrong():
    r, c = _block("hex", 8, 14)
    xy = Lattice("hex").physical(r, c)
    with pytest.raises(LatticeError, match=r"look swapped: .* 0\.58 array_col steps"):
        detect_lattice(c, r, spatial=xy)
    with pytest.raises(LatticeError, match="look swapped"):
        detect_lattice(c, r, spatial=xy, hint="hex")
    with pytest.raises(LatticeError, match="scaled by 2"):
        detect_lattice(2 * r, 2 * c)
    sheared = xy + xy[:, [1]] * np.array([[0.6, 0.0]])
    with pytest.raises(LatticeError, match="degrees apart"):
        detect_lattice(r, c, spatial=sheared)
    stretched = xy * np.array([1.0, 1.5])
    with pytest.raises(LatticeError, match=r"2\.60 array_col steps long, but 1\.73 on a hex lattice"):
        check_plausible(Lattice("hex"), r, c, stretched)
    with pytest.raises(LatticeError, match="none of the 56 spots has a neighbouring spot on the hex"):
        detect_lattice(r, 3 * c)  # scaled along one axis only: no step of the lattice is left


def test_a_sparse_real_like_subset_is_still_read():
    """Scattered spots (the 100-spot scanpy toy slide is one) are not scaled coordinates."""
    r, c = _block("hex", 30, 60)
    keep = np.random.default_rng(3).choice(len(r), 100, replace=False)
    xy = Lattice("hex").physical(r[keep], c[keep])
    assert detect_lattice(r[keep], c[keep], spatial=xy).kind == "hex"
