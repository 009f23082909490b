"""Lattice identities on hand-built lattices: geometry must be exact."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import block_sites
from napari_stentrans.core.lattice import (
    IndexRaster,
    Lattice,
    LatticeError,
    apply_symmetry,
    child_between,
    detect_lattice,
    lattice_from_positions,
    snap_to_integers,
)

KINDS = ["square", "hex", "checkerboard"]


def _nearest_distances(xy: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    return d[:, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_index_coordinates_round_trip(kind):
    lattice = Lattice(kind)
    r, c = block_sites(kind, 11, 14)
    u, v = lattice.to_index(r, c)
    back = lattice.from_index(u, v)
    np.testing.assert_array_equal(back[0], r)
    np.testing.assert_array_equal(back[1], c)


@pytest.mark.parametrize("kind", KINDS)
def test_nearest_neighbours_are_one_pitch_apart(kind):
    lattice = Lattice(kind)
    r, c = block_sites(kind, 12, 16)
    d = _nearest_distances(lattice.physical(r, c))
    np.testing.assert_allclose(d, lattice.pitch_um, rtol=1e-9)


def _children(lattice, row, col):
    """The four 2x children ``(n, 4)`` of coarse sites of coset 0, in fine coordinates (index + offsets)."""
    from napari_stentrans.core.lattice import CHILD_OFFSETS

    u, v = lattice.to_index(row, col)
    return lattice.from_index(u[:, None] + CHILD_OFFSETS[:, 0], v[:, None] + CHILD_OFFSETS[:, 1])


@pytest.mark.parametrize("kind", KINDS)
def test_children_of_the_coarse_lattice_cover_every_fine_site_exactly_once(kind):
    lattice = Lattice(kind)
    u, v = np.meshgrid(np.arange(-8, 8), np.arange(-8, 8), indexing="ij")
    r, c = lattice.from_index(u.ravel(), v.ravel())
    for coset in range(4):
        keep, _, _ = lattice.downsample(r, c, coset)
        du, dv = divmod(coset, 2)
        # children are defined for coset 0; shift the fine lattice so this coset becomes coset 0
        sr, sc = lattice.from_index(np.array([du]), np.array([dv]))
        cr, cc = _children(lattice, r[keep] - sr, c[keep] - sc)
        cr, cc = cr + sr, cc + sc
        pairs = list(zip(cr.ravel().tolist(), cc.ravel().tolist(), strict=True))
        assert len(pairs) == len(set(pairs)) == 4 * keep.sum()  # no site is a child twice
        interior = (np.abs(u.ravel() + 0.5) < 7) & (np.abs(v.ravel() + 0.5) < 7)
        fine = set(zip(r[interior].tolist(), c[interior].tolist(), strict=True))
        assert fine <= set(pairs)  # every fine site away from the window edge is a child


@pytest.mark.parametrize("kind", KINDS)
def test_downsampling_keeps_the_lattice_type_at_twice_the_pitch(kind):
    lattice = Lattice(kind)
    r, c = block_sites(kind, 24, 32)
    counts = []
    for coset in range(4):
        keep, cr, cc = lattice.downsample(r, c, coset)
        counts.append(keep.sum())
        assert lattice.contains(cr, cc).all()  # coarse coordinates are again this lattice type
        fine_xy = lattice.physical(r[keep], c[keep])
        np.testing.assert_allclose(_nearest_distances(fine_xy), 2 * lattice.pitch_um, rtol=1e-9)
        coarse_xy = lattice.physical(cr, cc)
        np.testing.assert_allclose(_nearest_distances(coarse_xy), lattice.pitch_um, rtol=1e-9)
    assert sum(counts) == len(r)


def test_hex_downsampling_and_children_match_method_md():
    lattice = Lattice("hex")
    r, c = block_sites("hex", 16, 24)
    keep, cr, cc = lattice.downsample(r, c, 0)
    expected = (r % 2 == 0) & ((c - r) % 4 == 0)
    np.testing.assert_array_equal(keep, expected)
    np.testing.assert_array_equal(cr, r[keep] // 2)
    np.testing.assert_array_equal(cc, c[keep] // 2)
    kr, kc = _children(lattice, np.array([4, 6]), np.array([8, 10]))
    assert list(zip(kr[0], kc[0], strict=True)) == [(4, 8), (4, 10), (5, 7), (5, 9)]
    assert list(zip(kr[1], kc[1], strict=True)) == [(6, 10), (6, 12), (7, 9), (7, 11)]


@pytest.mark.parametrize("kind", KINDS)
def test_half_pitch_children_are_midpoints_between_neighbours(kind):
    lattice = Lattice(kind)
    hr, hc = lattice.half_pitch_children(np.array([4]), np.array([6]))
    assert (hr[0, 0], hc[0, 0]) == (8, 12)
    xy = lattice.physical(hr[0], hc[0], scale=2.0)
    centre = lattice.physical(np.array([4]), np.array([6]))[0]
    dist = np.linalg.norm(xy - centre, axis=1)
    assert dist[0] == 0
    # edge midpoints sit half a pitch away; the square's cell centre sqrt(2)/2 pitches
    expected = [0.5, 0.5, np.sqrt(0.5)] if kind in ("square", "checkerboard") else [0.5, 0.5, 0.5]
    np.testing.assert_allclose(dist[1:], np.array(expected) * lattice.pitch_um)


@pytest.mark.parametrize("kind", KINDS)
def test_child_parents_count_nearest_fine_sites(kind):
    parents = Lattice(kind).child_parents()
    assert [len(p) for p in parents] == ([1, 2, 2, 2] if kind == "hex" else [1, 2, 2, 4])


@pytest.mark.parametrize("kind", KINDS)
def test_raster_round_trip_and_downsampling_is_every_other_pixel(kind):
    lattice = Lattice(kind)
    r, c = block_sites(kind, 10, 12)
    raster = IndexRaster.covering(lattice, r, c)
    values = np.arange(len(r) * 3, dtype=np.float32).reshape(len(r), 3) + 1
    img = raster.rasterize(values, r, c)
    assert img.shape == (3, *raster.shape)
    np.testing.assert_array_equal(img.reshape(3, -1)[:, raster.flat_index(r, c)].T, values)
    assert np.count_nonzero(img[0]) == len(r)
    keep, _, _ = lattice.downsample(r, c, 0)
    kept_img = raster.rasterize(values[keep], r[keep], c[keep])
    np.testing.assert_array_equal(kept_img[:, ::2, ::2], img[:, ::2, ::2])
    assert np.count_nonzero(img[0, ::2, ::2]) == keep.sum()


@pytest.mark.parametrize("kind", KINDS)
def test_raster_symmetries_are_lattice_isometries(kind):
    lattice = Lattice(kind)
    raster = IndexRaster(lattice, 0, 0, 6, 6)
    p, q = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    xy = lattice.physical_index(p + raster.u0, q + raster.v0).reshape(-1, 2)
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    for op in lattice.symmetries:
        idx = apply_symmetry(np.arange(36).reshape(6, 6), op).ravel()
        np.testing.assert_allclose(dist[np.ix_(idx, idx)], dist, atol=1e-9)


def test_new_sites_lie_midway_between_two_known_sites():
    lattice = Lattice("square")
    known = np.zeros((4, 4), dtype=bool)
    known[1, 1] = known[1, 2] = True
    between = child_between(lattice, known)
    assert between[1, 1, 1]  # midpoint of (1,1)-(1,2)
    assert not between[2, 1, 1]  # midpoint towards (2,1), unknown
    assert not between[3, 1, 1]  # cell centre with only an edge known lies outside the tissue
    known[2, 2] = True
    assert child_between(lattice, known)[3, 1, 1]  # the diagonal (1,1)-(2,2) is known
    assert child_between(lattice, known)[0].sum() == 3


def test_hex_new_sites_are_edge_midpoints():
    lattice = Lattice("hex")
    known = np.zeros((5, 5), dtype=bool)
    known[2, 2] = True
    known[3, 3] = True  # index (1, 1) = array (1, 1): a hex neighbour
    between = child_between(lattice, known)
    assert between[1:].sum() == 1 and between[3, 2, 2]


def test_detect_square_hex_and_checkerboard():
    r, c = block_sites("square", 5, 5)
    assert detect_lattice(r, c).kind == "square"
    r, c = block_sites("hex", 6, 10)
    hex_xy = Lattice("hex").physical(r, c)
    assert detect_lattice(r, c, spatial=hex_xy).kind == "hex"
    checker_xy = Lattice("checkerboard").physical(r, c)
    assert detect_lattice(r, c, spatial=checker_xy).kind == "checkerboard"


def test_detect_refuses_duplicates_and_off_lattice_hints():
    with pytest.raises(LatticeError, match="duplicate"):
        detect_lattice(np.array([1, 1, 2]), np.array([1, 1, 3]))
    with pytest.raises(LatticeError, match="not on the hex lattice"):
        detect_lattice(np.array([0, 1]), np.array([0, 0]), hint="hex")


def test_snap_to_integers_tolerance():
    np.testing.assert_array_equal(snap_to_integers(np.array([1.2, 2.8]), "x"), [1, 3])
    with pytest.raises(LatticeError, match="0.40 from the nearest"):
        snap_to_integers(np.array([1.0, 2.4]), "x")


@pytest.mark.parametrize("kind", ["square", "hex"])
def test_lattice_recovered_from_rotated_noisy_positions(kind):
    lattice = Lattice(kind)
    r, c = block_sites(kind, 14, 20)
    xy = lattice.physical(r, c)
    angle = np.deg2rad(7.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    noisy = (xy @ rot.T) * 1.7 + 40 + np.random.default_rng(0).normal(0, 2.0, xy.shape)
    rr, cc, found = lattice_from_positions(noisy)
    assert found.kind == kind
    # same lattice up to an isometry: all pairwise physical distances agree
    d_true = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    rec = found.physical(rr, cc)
    d_rec = np.linalg.norm(rec[:, None] - rec[None], axis=-1)
    np.testing.assert_allclose(d_rec, d_true, atol=1e-6)


def test_lattice_recovery_refuses_random_points():
    pts = np.random.default_rng(1).uniform(0, 100, size=(200, 2))
    with pytest.raises(LatticeError):
        lattice_from_positions(pts)
