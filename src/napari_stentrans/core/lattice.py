"""Spot lattices: detection, physical positions, rasters, down-sampling and 2x children.

All geometry of the project lives here. A lattice is described by an integer basis ``A``
(a 2 x 2 matrix) that maps *index coordinates* ``(u, v)`` to array coordinates::

    (array_row, array_col) = A @ (u, v)

In index coordinates every supported lattice is the plain integer grid Z^2, so

* down-sampling by 2 that keeps the lattice type is "u and v even" (four cosets),
* the four 2x children of coarse site ``(u, v)`` are ``(u + du, v + dv)``, du, dv in {0, 1},
  i.e. an exact 2 x 2 pixel shuffle in an index raster,
* the half-pitch lattice of a slide is the same lattice with every array coordinate doubled:
  measured spot ``(r, c)`` sits at ``(2r, 2c)`` and its children at ``(2r, 2c) + A @ (du, dv)``.

Lattices (``kind``):

``square``
    legacy ST (1k arrays), neighbours (r +- 1, c), (r, c +- 1); A = identity; pitch 200 um.
``hex``
    10x Visium, ``array_row + array_col`` even, neighbours (r, c +- 2), (r +- 1, c +- 1);
    A = [[1, 0], [-1, 2]] so u = r, v = (r + c) / 2; children of (r, c) are (r, c), (r, c + 2),
    (r + 1, c - 1), (r + 1, c + 1) (METHOD.md defect 8); pitch 100 um.
``checkerboard``
    ST 2k arrays, ``x + y`` even, nearest neighbours on the diagonals (r +- 1, c +- 1);
    A = [[1, -1], [1, 1]]; nominal nearest-neighbour pitch 100 um (not verified, override it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import LatticeError

LatticeKind = Literal["square", "hex", "checkerboard"]

_BASIS: dict[str, np.ndarray] = {
    "square": np.array([[1, 0], [0, 1]]),
    "hex": np.array([[1, 0], [-1, 2]]),
    "checkerboard": np.array([[1, -1], [1, 1]]),
}
# array (row, col) unit steps -> physical (x, y) in units of the nearest-neighbour pitch
_PHYSICAL: dict[str, np.ndarray] = {
    "square": np.array([[0.0, 1.0], [1.0, 0.0]]),
    "hex": np.array([[0.0, 0.5], [np.sqrt(3.0) / 2.0, 0.0]]),
    "checkerboard": np.array([[0.0, 1.0], [1.0, 0.0]]) / np.sqrt(2.0),
}
DEFAULT_PITCH_UM: dict[str, float] = {"square": 200.0, "hex": 100.0, "checkerboard": 100.0}
# Raster operations (on index coordinates) that map each lattice onto itself isometrically.
_SYMMETRIES: dict[str, tuple[tuple[bool, bool, bool], ...]] = {
    # (transpose, flip_u, flip_v) applied in that order
    "square": tuple((t, a, b) for t in (False, True) for a in (False, True) for b in (False, True)),
    "checkerboard": tuple((t, a, b) for t in (False, True) for a in (False, True) for b in (False, True)),
    # the hex index basis vectors are at 120 degrees: swapping them is a mirror, negating both a
    # rotation by 180 degrees; negating one alone is a shear, not an isometry.
    "hex": ((False, False, False), (False, True, True), (True, False, False), (True, True, True)),
}
CHILD_OFFSETS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])  # (du, dv), pixel-shuffle order
ROUNDING_TOLERANCE = 0.3
# Nearest-neighbour steps (array_row, array_col) of each lattice, one per direction (up to sign).
NEIGHBOUR_STEPS: dict[str, tuple[tuple[int, int], ...]] = {
    "square": ((1, 0), (0, 1)),
    "hex": ((0, 2), (1, 1), (1, -1)),
    "checkerboard": ((1, 1), (1, -1)),
}
# Length of one array_row step over one array_col step in image space (the image may be
# rotated or mirrored, not stretched): sqrt(3) on Visium (rows sqrt(3)/2 pitch apart, columns
# 1/2), 1 on square and checkerboard arrays.
ROW_COL_RATIO: dict[str, float] = {"square": 1.0, "hex": float(np.sqrt(3.0)), "checkerboard": 1.0}
# Plausibility bounds, from the shared real slides (6 Visium, 13 legacy ST, 2 ST 2k): step
# ratios within 1.11x of the nominal one (ST 2k alignments 1.11, Visium 1.74), row and column
# steps at most 0.3 degrees from perpendicular, every spot within 0.25 pitch of where an affine
# map of its array coordinates puts it, and 99-100 % of spots with a neighbouring spot (14 % on the
# scanpy toy slide of 100 scattered spots).
RATIO_TOLERANCE = 1.25
MAX_COSINE = 0.15  # |cos| of the angle between the row and column steps (81-99 degrees)
MAX_OFFSET_PITCH = 0.5  # a spot farther than this from its lattice site is nearer to another
NEIGHBOUR_CHECK_SPOTS = 20  # fewer spots say too little about their spacing


@dataclass(frozen=True)
class Lattice:
    """A spot lattice type with its physical pitch.

    Parameters
    ----------
    kind
        ``"square"``, ``"hex"`` or ``"checkerboard"``.
    pitch_um
        Centre-to-centre distance of nearest neighbours in micrometres.
    """

    kind: LatticeKind
    pitch_um: float = field(default=0.0)

    def __post_init__(self) -> None:
        if self.kind not in _BASIS:
            raise LatticeError(f"unknown lattice kind {self.kind!r}; expected one of {list(_BASIS)}")
        if self.pitch_um <= 0:
            object.__setattr__(self, "pitch_um", DEFAULT_PITCH_UM[self.kind])

    @property
    def basis(self) -> np.ndarray:
        """Integer matrix ``A`` with ``(row, col) = A @ (u, v)``."""
        return _BASIS[self.kind]

    @property
    def symmetries(self) -> tuple[tuple[bool, bool, bool], ...]:
        """Index-raster operations ``(transpose, flip_u, flip_v)`` that are lattice isometries."""
        return _SYMMETRIES[self.kind]

    def contains(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Boolean array: which integer (row, col) pairs are sites of this lattice."""
        row, col = np.asarray(row), np.asarray(col)
        if self.kind == "square":
            return np.ones(row.shape, dtype=bool)
        return (row + col) % 2 == 0

    def to_index(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Array coordinates -> index coordinates (u, v); raises on off-lattice sites."""
        row = np.asarray(row, dtype=np.int64)
        col = np.asarray(col, dtype=np.int64)
        bad = ~self.contains(row, col)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise LatticeError(
                f"{int(bad.sum())} site(s) are not on the {self.kind} lattice, e.g. "
                f"(array_row={row.flat[k]}, array_col={col.flat[k]}): row + col must be even"
            )
        if self.kind == "square":
            return row, col
        if self.kind == "hex":
            return row, (row + col) // 2
        return (row + col) // 2, (col - row) // 2

    def from_index(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index coordinates (u, v) -> array coordinates (row, col)."""
        a = self.basis
        u = np.asarray(u, dtype=np.int64)
        v = np.asarray(v, dtype=np.int64)
        return a[0, 0] * u + a[0, 1] * v, a[1, 0] * u + a[1, 1] * v

    def physical(self, row: np.ndarray, col: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Physical centre positions ``(n, 2)`` as (x, y) in micrometres.

        ``scale`` divides the coordinates first: use ``scale=2`` for half-pitch coordinates.
        """
        rc = np.stack([np.asarray(row, float), np.asarray(col, float)], axis=-1) / scale
        return rc @ _PHYSICAL[self.kind].T * self.pitch_um

    def physical_index(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Physical positions ``(..., 2)`` in units of the pitch for index coordinates."""
        row, col = self.from_index(u, v)
        rc = np.stack([row, col], axis=-1).astype(float)
        return rc @ _PHYSICAL[self.kind].T

    def coset(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Coset id 0..3 of each site under down-sampling by 2 (``2 * (u % 2) + v % 2``)."""
        u, v = self.to_index(row, col)
        return 2 * (u % 2) + (v % 2)

    def downsample(
        self, row: np.ndarray, col: np.ndarray, coset: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keep one coset of the sites: a lattice of the same type at twice the pitch.

        Returns
        -------
        keep
            Boolean mask over the input sites.
        coarse_row, coarse_col
            Array coordinates of the kept sites in the coarse lattice's own units (for coset 0
            of a hex lattice these are ``(r / 2, c / 2)``, again a Visium-like lattice).
        """
        u, v = self.to_index(row, col)
        du, dv = divmod(int(coset), 2)
        keep = ((u - du) % 2 == 0) & ((v - dv) % 2 == 0)
        cr, cc = self.from_index((u[keep] - du) // 2, (v[keep] - dv) // 2)
        return keep, cr, cc

    def half_pitch_children(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Half-pitch coordinates ``(n, 4)`` of the four children of each fine site.

        Child 0 is the site itself at ``(2r, 2c)``; the others are the new half-pitch sites it
        owns (``(2r, 2c) + A @ (du, dv)``).
        """
        row = np.asarray(row, dtype=np.int64)
        col = np.asarray(col, dtype=np.int64)
        self.to_index(row, col)  # validates
        dr, dc = self.from_index(CHILD_OFFSETS[:, 0], CHILD_OFFSETS[:, 1])
        return 2 * row[:, None] + dr, 2 * col[:, None] + dc

    def child_parents(self) -> list[np.ndarray]:
        """For each child offset (pixel-shuffle order), the fine index offsets nearest to it.

        A new half-pitch site's lattice neighbours are the measured sites at the smallest
        distance; e.g. the edge midpoints of a hex lattice have two, the square's cell centres
        four. Returns a list of four ``(k, 2)`` integer arrays of (du, dv) offsets.
        """
        window = np.array([(a, b) for a in (-1, 0, 1, 2) for b in (-1, 0, 1, 2)])
        fine = self.physical_index(window[:, 0], window[:, 1])
        out = []
        for du, dv in CHILD_OFFSETS:
            target = self.physical_index(np.array(du), np.array(dv)) / 2.0
            dist = np.linalg.norm(fine - target, axis=1)
            out.append(window[dist < dist.min() + 1e-9])
        return out


# ----------------------------------------------------------------------------- detection


def snap_to_integers(values: np.ndarray, name: str, tolerance: float = ROUNDING_TOLERANCE) -> np.ndarray:
    """Round coordinates to integers, refusing values further than ``tolerance`` from one."""
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)):
        raise LatticeError(f"{name} contains NaN or infinite coordinates")
    rounded = np.rint(values)
    err = np.abs(values - rounded)
    if err.size and err.max() > tolerance:
        k = int(np.argmax(err))
        raise LatticeError(
            f"{name} value {values.flat[k]:g} is {err.flat[k]:.2f} from the nearest lattice "
            f"position (tolerance {tolerance}); the coordinates are on no lattice"
        )
    return rounded.astype(np.int64)


def detect_lattice(
    row: np.ndarray,
    col: np.ndarray,
    spatial: np.ndarray | None = None,
    hint: LatticeKind | None = None,
    pitch_um: float | None = None,
) -> Lattice:
    """Find the lattice of integer spot coordinates.

    Parameters
    ----------
    row, col
        Integer array coordinates of the spots.
    spatial
        Optional ``(n, 2)`` image positions (x, y) of the same spots; used to tell a Visium
        hex lattice (a row step is sqrt(3) times a column step) from an ST 2k checkerboard.
    hint
        Lattice kind the file format implies (e.g. ``"hex"`` for Space Ranger output). It is
        checked, not trusted.
    pitch_um
        Pitch override in micrometres.

    Raises
    ------
    LatticeError
        Duplicate coordinates, coordinates incompatible with ``hint``, or coordinates that
        are not a plausible lattice of the detected kind (see :func:`check_plausible`: e.g.
        ``array_row``/``array_col`` swapped, scaled, or not matching ``spatial``).
    """
    row = np.asarray(row, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    if row.size == 0:
        raise LatticeError("no spots: cannot determine a lattice from zero coordinates")
    keys = np.unique(np.stack([row, col], axis=1), axis=0)
    if len(keys) != row.size:
        raise LatticeError(
            f"{row.size - len(keys)} duplicate (array_row, array_col) coordinate(s); every spot "
            "must have its own lattice site"
        )
    all_even = bool(np.all((row + col) % 2 == 0))
    spatial = _usable_positions(spatial, row.size)
    if hint is not None:
        lattice = Lattice(hint, pitch_um or 0.0)
        lattice.to_index(row, col)  # raises with the offending site
    elif not all_even:
        lattice = Lattice("square", pitch_um or 0.0)
    else:
        kind: LatticeKind = "hex"
        ratio = None if spatial is None else _row_to_col_step_ratio(row, col, spatial)
        # the nearer on a log scale (swapped Visium, 0.58, is nearer 1; check_plausible says so)
        if ratio is not None and abs(np.log(ratio)) < abs(np.log(ratio / ROW_COL_RATIO["hex"])):
            kind = "checkerboard"
        lattice = Lattice(kind, pitch_um or 0.0)
    check_plausible(lattice, row, col, spatial)
    return lattice


def _usable_positions(spatial: np.ndarray | None, n: int) -> np.ndarray | None:
    """``spatial`` as a finite ``(n, 2)`` float array, or None when it cannot be compared."""
    if spatial is None:
        return None
    spatial = np.asarray(spatial, dtype=float)
    if spatial.shape != (n, 2) or not np.all(np.isfinite(spatial)):
        return None
    return spatial


def _has_neighbour(row: np.ndarray, col: np.ndarray, steps) -> np.ndarray:
    """``(n,)`` booleans: whether each spot has another spot one lattice ``step`` away."""
    keys = np.unique((row << 32) + (col & 0xFFFFFFFF))
    out = np.zeros(row.size, dtype=bool)
    for dr, dc in steps:
        for sign in (1, -1):
            out |= np.isin(((row + sign * dr) << 32) + ((col + sign * dc) & 0xFFFFFFFF), keys)
    return out


def check_plausible(
    lattice: Lattice, row: np.ndarray, col: np.ndarray, spatial: np.ndarray | None = None
) -> None:
    """Refuse array coordinates that are not a plausible lattice of ``lattice.kind``.

    Checks, each with a message that says what is wrong and what to do:

    * spacing (20 spots or more): the spots do not all sit on every k-th site along a lattice
      axis (coordinates scaled by k), and some spot has a neighbouring spot one lattice step
      away (scattered spots are fine: the 100-spot scanpy toy slide has 14 with one);
    * with ``spatial`` (``(n, 2)`` image positions of the same spots): an affine map of the
      array coordinates puts every spot within half a pitch of its position (shuffled rows,
      or two sections in one frame, fail this); one array_row step and one array_col step
      are perpendicular and their lengths have the lattice's ratio (``ROW_COL_RATIO``, within
      1.25x). A Visium slide with ``array_row`` and ``array_col`` swapped (ratio 1/sqrt(3))
      is named as such.

    Parameters
    ----------
    lattice
        The lattice the coordinates are read as.
    row, col
        ``(n,)`` integer array coordinates, unique and on ``lattice``.
    spatial
        Optional ``(n, 2)`` spot centres (x, y) in any unit (image pixels, micrometres).

    Raises
    ------
    LatticeError
        When a check fails.
    """
    row = np.asarray(row, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    kind = lattice.kind
    steps = NEIGHBOUR_STEPS[kind]
    if row.size >= NEIGHBOUR_CHECK_SPOTS:
        u, v = lattice.to_index(row, col)
        every = max(int(np.gcd.reduce(u - u.min())), int(np.gcd.reduce(v - v.min())))
        if every > 1:
            raise LatticeError(
                f"all {row.size} spots sit on every {every}th site of the {kind} lattice along one of its "
                f"axes, never between: the array coordinates look scaled by {every}; give array_row/"
                "array_col with adjacent spots one lattice step apart"
            )
        if not _has_neighbour(row, col, steps).any():
            raise LatticeError(
                f"none of the {row.size} spots has a neighbouring spot on the {kind} lattice (steps "
                f"{', '.join(f'+-{step}' for step in steps)} in array_row, array_col): these are not "
                f"array coordinates of a {kind} lattice (scaled along one axis?)"
            )
    spatial = _usable_positions(spatial, row.size)
    coef = None if spatial is None else fit_affine(row, col, spatial)
    if coef is None:
        return
    row_step, col_step = coef[0], coef[1]
    step_px = np.array([np.linalg.norm(dr * row_step + dc * col_step) for dr, dc in steps])
    pitch_px = float(step_px.max())
    offset = np.linalg.norm(spatial - np.column_stack([row, col, np.ones(row.size)]) @ coef, axis=1)
    misplaced = offset > MAX_OFFSET_PITCH * pitch_px
    if pitch_px <= 0 or misplaced.any():
        k = int(np.argmax(offset))
        raise LatticeError(
            f"{int(misplaced.sum()) if pitch_px > 0 else row.size} of {row.size} spots lie more than half "
            f"a spot pitch from where their array coordinates put them in the spot positions "
            f"(obsm['spatial']), e.g. the spot at (array_row={row[k]}, array_col={col[k]}): the array "
            "coordinates and the positions disagree (spots of several sections, or reordered "
            "rows?); read one section whose coordinates and positions belong together"
        )
    row_len, col_len = float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))
    cosine = float(row_step @ col_step) / (row_len * col_len)
    if abs(cosine) > MAX_COSINE:
        raise LatticeError(
            f"array_row and array_col steps are {np.degrees(np.arccos(cosine)):.0f} degrees apart in "
            "the spot positions (obsm['spatial']), not 90: the coordinates are not a "
            f"{kind} lattice of these positions"
        )
    ratio = row_len / col_len
    expected = ROW_COL_RATIO[kind]
    if abs(np.log(ratio / expected)) <= np.log(RATIO_TOLERANCE):
        return
    if np.all((row + col) % 2 == 0):
        swapped_off = abs(np.log(ratio * ROW_COL_RATIO["hex"]))
        if swapped_off <= np.log(RATIO_TOLERANCE):
            raise LatticeError(
                f"array_row and array_col look swapped: in the spot positions (obsm['spatial']) one "
                f"array_row step is {ratio:.2f} array_col steps long; on a Visium hex lattice it is "
                f"{ROW_COL_RATIO['hex']:.2f} (sqrt(3)), which these positions give with the two swapped: "
                "swap the two columns and read again"
            )
    raise LatticeError(
        f"in the spot positions (obsm['spatial']) one array_row step is {ratio:.2f} array_col steps "
        f"long, but {expected:.2f} on a {kind} lattice: the array coordinates do not fit the positions "
        "(swapped, scaled along one axis, or another lattice?)"
    )


def fit_affine(row: np.ndarray, col: np.ndarray, positions: np.ndarray) -> np.ndarray | None:
    """Least-squares affine map from array coordinates to positions (e.g. image pixels).

    Returns ``coef`` ``(3, k)`` with ``positions ~= [row, col, 1] @ coef``, or None when the
    sites do not fix an affine map (fewer than three, or all on one line).
    """
    design = np.column_stack([row, col, np.ones(len(row))]).astype(float)
    if len(design) < 3:
        return None
    coef, _, rank, _ = np.linalg.lstsq(design, np.asarray(positions, float), rcond=None)
    return coef if rank == 3 else None


def _row_to_col_step_ratio(row: np.ndarray, col: np.ndarray, spatial: np.ndarray) -> float | None:
    """Length ratio of one array-row step to one array-column step in image space."""
    coef = fit_affine(row, col, spatial)
    if coef is None:
        return None
    row_step, col_step = np.linalg.norm(coef[0]), np.linalg.norm(coef[1])
    return float(row_step / col_step) if col_step > 0 else None


def lattice_from_positions(spatial: np.ndarray) -> tuple[np.ndarray, np.ndarray, Lattice]:
    """Recover integer array coordinates from spot centre positions alone.

    Finds the nearest-neighbour distance, the lattice directions among neighbour vectors, and
    solves for integer coordinates. Square lattices get ``row``/``col`` along the two axes,
    hexagonal lattices Visium's doubled-column convention.

    Raises
    ------
    LatticeError
        When the points are not on a square or hexagonal lattice within 0.3 of a pitch.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(spatial, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise LatticeError("need at least 3 spatial positions (n x 2) to recover a lattice")
    if not np.all(np.isfinite(pts)):
        raise LatticeError("spatial positions contain NaN or infinite values")
    tree = cKDTree(pts)
    dist, idx = tree.query(pts, k=min(7, len(pts)))
    nn = float(np.median(dist[:, 1]))
    if nn <= 0:
        raise LatticeError("duplicate spatial positions: several spots share one centre")
    near = (dist[:, 1:] < 1.2 * nn) & (dist[:, 1:] > 0.8 * nn)
    vecs = (pts[idx[:, 1:]] - pts[:, None, :])[near]
    angles = np.mod(np.arctan2(vecs[:, 1], vecs[:, 0]), np.pi)
    # the neighbour direction closest to the image x axis defines e1
    hist, edges = np.histogram(angles, bins=180, range=(0, np.pi))
    peaks = _circular_peaks(hist, edges)
    if len(peaks) == 2:
        kind: LatticeKind = "square"
    elif len(peaks) == 3:
        kind = "hex"
    else:
        raise LatticeError(
            f"spatial positions show {len(peaks)} neighbour directions; expected 2 (square) "
            "or 3 (hexagonal) lattice directions"
        )
    e1 = _mean_vector(vecs, angles, min(peaks, key=lambda a: min(a, np.pi - a)))
    if e1[0] < 0:
        e1 = -e1
    turn = np.pi / 2 if kind == "square" else np.pi / 3
    others = [a for a in peaks if abs(np.angle(np.exp(2j * (a - np.arctan2(e1[1], e1[0]) - turn)))) < 0.3]
    if not others:
        raise LatticeError("spatial positions: no second lattice direction at the expected angle")
    e2 = _mean_vector(vecs, angles, others[0])
    if e2[1] < 0:  # image y grows downwards with the row index
        e2 = -e2
    if kind == "hex" and e2[0] < 0:  # use the +60 degree direction
        e2 = e2 + e1
    origin = pts[np.argmin(pts[:, 1] * 1e6 + pts[:, 0])]
    basis = np.column_stack([e1, e2])
    for _ in range(3):  # refine the basis on the integer assignment (absorbs slight shear/scale)
        coef = np.linalg.solve(basis, (pts - origin).T).T
        ij = np.rint(coef)
        design = np.column_stack([ij, np.ones(len(ij))])
        fit = np.linalg.lstsq(design, pts, rcond=None)[0]
        basis, origin = fit[:2].T, fit[2]
    coef = np.linalg.solve(basis, (pts - origin).T).T
    i = snap_to_integers(coef[:, 0], "recovered lattice coordinate")
    j = snap_to_integers(coef[:, 1], "recovered lattice coordinate")
    if kind == "square":
        row, col = j, i
    else:
        row, col = j, 2 * i + j
    row, col = row - row.min(), col - col.min()
    if kind == "hex" and (row + col).min() % 2:
        col = col + 1
    return row, col, detect_lattice(row, col, hint=kind)


def _mean_vector(vecs: np.ndarray, angles: np.ndarray, peak: float) -> np.ndarray:
    """Mean of the neighbour vectors whose direction (mod pi) is within 0.2 rad of ``peak``."""
    close = np.abs(np.angle(np.exp(2j * (angles - peak)))) < 0.4
    sel = vecs[close]
    ref = np.array([np.cos(peak), np.sin(peak)])
    sel = np.where((sel @ ref)[:, None] < 0, -sel, sel)
    return sel.mean(axis=0)


def _circular_peaks(hist: np.ndarray, edges: np.ndarray) -> list[float]:
    """Centres of direction clusters in a histogram of angles modulo pi."""
    occupied = hist > max(1, 0.05 * hist.max())
    centres = (edges[:-1] + edges[1:]) / 2
    groups: list[list[int]] = []
    for k in np.flatnonzero(occupied):
        if groups and k - groups[-1][-1] <= 3:
            groups[-1].append(int(k))
        else:
            groups.append([int(k)])
    if len(groups) > 1 and groups[0][0] <= 3 and groups[-1][-1] >= len(hist) - 4:
        groups[0] = groups.pop() + groups[0]  # wrap around 0 == pi
    peaks = []
    for g in groups:
        w = hist[g].astype(float)
        ang = centres[g]
        ang = np.where(ang > np.pi / 2, ang - np.pi, ang) if g[0] > g[-1] else ang
        peaks.append(float(np.mod(np.sum(w * ang) / w.sum(), np.pi)))
    return peaks


# ----------------------------------------------------------------------------- rasters


def _even_bounds(p: np.ndarray, q: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    """Origin (even, so cosets are pixel parities) and even shape of a raster holding (p, q) + pad."""
    p0 = int(p.min()) - pad
    q0 = int(q.min()) - pad
    p0 -= p0 % 2
    q0 -= q0 % 2
    height = int(p.max()) - p0 + 1 + pad
    width = int(q.max()) - q0 + 1 + pad
    return p0, q0, height + height % 2, width + width % 2


@dataclass(frozen=True)
class IndexRaster:
    """A raster of a lattice in index coordinates: pixel (p, q) = site (u0 + p, v0 + q).

    In this raster the lattice's type-preserving down-sampling is ``image[::2, ::2]`` (for an
    even origin) and the 2x children are an exact 2 x 2 pixel shuffle.
    """

    lattice: Lattice
    u0: int
    v0: int
    height: int
    width: int

    @classmethod
    def covering(cls, lattice: Lattice, row: np.ndarray, col: np.ndarray, pad: int = 1) -> IndexRaster:
        """The smallest raster holding all sites plus ``pad`` pixels, with an even origin."""
        u, v = lattice.to_index(row, col)
        return cls(lattice, *_even_bounds(u, v, pad))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def pixels(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel (p, q) of each site; raises when a site falls outside the raster."""
        u, v = self.lattice.to_index(row, col)
        p, q = u - self.u0, v - self.v0
        if p.size and (p.min() < 0 or q.min() < 0 or p.max() >= self.height or q.max() >= self.width):
            raise LatticeError("site outside the raster")
        return p, q

    def flat_index(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        p, q = self.pixels(row, col)
        return p * self.width + q

    def contains(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Boolean array: which sites fall inside the raster."""
        u, v = self.lattice.to_index(row, col)
        p, q = u - self.u0, v - self.v0
        return (p >= 0) & (q >= 0) & (p < self.height) & (q < self.width)

    def sites(self) -> tuple[np.ndarray, np.ndarray]:
        """Array coordinates (row, col) of every pixel, each ``(height, width)``."""
        p, q = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        return self.lattice.from_index(p + self.u0, q + self.v0)

    def rasterize(self, values: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Spots x genes matrix -> genes x height x width image (0 where no spot)."""
        return scatter(values, self.flat_index(row, col), self.shape)

    def mask(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Boolean ``(height, width)`` image that is True at the given sites."""
        m = np.zeros(self.height * self.width, dtype=bool)
        m[self.flat_index(row, col)] = True
        return m.reshape(self.height, self.width)


@dataclass(frozen=True)
class BrickRaster:
    """The published stEnTrans raster: pixel = (row - r0, col // 2 - b0).

    For a hex lattice odd rows sit half a pixel to the right in reality; down-sampling the
    image by ``[::2, ::2]`` keeps rows step 2 and array columns step 4, which turns the hex
    lattice into a rectangular one (METHOD.md defect 8). Kept only for the ``published`` preset.
    """

    lattice: Lattice
    r0: int
    b0: int
    height: int
    width: int

    @classmethod
    def covering(cls, lattice: Lattice, row: np.ndarray, col: np.ndarray, pad: int = 1) -> BrickRaster:
        return cls(lattice, *_even_bounds(np.asarray(row, np.int64), np.asarray(col, np.int64) // 2, pad))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def pixels(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        row = np.asarray(row, dtype=np.int64)
        return row - self.r0, np.asarray(col, dtype=np.int64) // 2 - self.b0

    def flat_index(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        p, q = self.pixels(row, col)
        return p * self.width + q


def scatter(values: np.ndarray, flat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per-site values ``(n_sites, n_channels)`` -> images ``(n_channels, *shape)``, 0 elsewhere.

    ``flat`` is each site's flat pixel index in a raster of ``shape`` (``flat_index``). The one
    way sites become images: training pairs, network inputs and display rasters all use it.
    """
    values = np.asarray(values)
    img = np.zeros((values.shape[1], shape[0] * shape[1]), dtype=values.dtype)
    img[:, flat] = values.T
    return img.reshape(values.shape[1], *shape)


def apply_symmetry(image: np.ndarray, op: tuple[bool, bool, bool]) -> np.ndarray:
    """Apply an index-raster symmetry ``(transpose, flip_u, flip_v)`` to the last two axes."""
    transpose, flip_u, flip_v = op
    if transpose:
        image = np.swapaxes(image, -1, -2)
    if flip_u:
        image = image[..., ::-1, :]
    if flip_v:
        image = image[..., :, ::-1]
    return image


def child_between(lattice: Lattice, known: np.ndarray) -> np.ndarray:
    """Which children lie midway between two known fine sites.

    A new half-pitch site is kept only where it is the midpoint of two known nearest lattice
    sites (both ends of an edge; for a square cell centre, either diagonal), so it lies inside
    the tissue, never in the half-pitch band just outside its edge.

    Parameters
    ----------
    lattice
        The lattice of the index raster.
    known
        Boolean ``(H, W)`` index raster of known (measured or imputed) sites.

    Returns
    -------
    Boolean array ``(4, H, W)``; entry ``[k, p, q]`` for child ``k`` of pixel ``(p, q)``.
    Child 0 (the site itself) is ``known``.
    """
    h, w = known.shape
    padded = np.pad(known, 2)
    out = np.zeros((4, h, w), dtype=bool)
    out[0] = known

    def shifted(du: int, dv: int) -> np.ndarray:
        return padded[2 + du : 2 + du + h, 2 + dv : 2 + dv + w]

    for k, offsets in enumerate(lattice.child_parents()):
        if k == 0:
            continue
        target = CHILD_OFFSETS[k]  # superfine index of the child relative to 2 * (p, q)
        for a in range(len(offsets)):
            for b in range(a + 1, len(offsets)):
                if np.array_equal(offsets[a] + offsets[b], target):  # (2a + 2b) / 2: their midpoint
                    out[k] |= shifted(*offsets[a]) & shifted(*offsets[b])
    return out
