"""Contiguous regions of sites: the blobs hidden, dropped or held out by every protocol and pair.

Two shapes serve every use: random disks covering a share of the sites (validation regions,
dropped input blobs, hole-filling targets, the ``lost`` evaluation protocol) and compact regions
of given sizes around random centres (hole-filling pairs shaped like a slide's own gaps).
Positions are in units of the lattice pitch.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def random_disks(
    positions: np.ndarray,
    rng: np.random.Generator,
    target: float,
    radius: float | tuple[float, float],
    *,
    max_disks: int | None = None,
    trim: bool = False,
) -> np.ndarray:
    """Sites covered by random disks, added until at least ``target`` sites are covered.

    Parameters
    ----------
    positions
        ``(n, 2)`` site positions.
    rng
        Source of the disk centres (a random site each) and, for a range, of the radii.
    target
        Number of sites to cover.
    radius
        A fixed radius, or a ``(low, high)`` range each disk draws its radius from.
    max_disks
        Stop after this many disks even if ``target`` is not reached.
    trim
        Keep only the sites of the last disk nearest its centre, so exactly ``target`` sites
        (rounded up) are covered.

    Returns
    -------
    Boolean ``(n,)`` mask of the covered sites.
    """
    n = len(positions)
    covered = np.zeros(n, dtype=bool)
    disks = 0
    while covered.sum() < target and (max_disks is None or disks < max_disks):
        centre = positions[rng.integers(n)]
        r = radius if np.isscalar(radius) else rng.uniform(*radius)
        distance = np.linalg.norm(positions - centre, axis=1)
        new = np.flatnonzero((distance <= r) & ~covered)
        room = int(np.ceil(target - covered.sum()))
        if trim and len(new) > room:
            new = new[np.argsort(np.linalg.norm(positions[new] - centre, axis=1))[:room]]
        covered[new] = True
        disks += 1
    return covered


def nearest_regions(
    positions: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, max_fraction: float = 0.3
) -> np.ndarray:
    """Compact regions: for each size ``s``, the ``s`` uncovered sites nearest a random centre.

    Used to build hole-filling pairs whose holes have the areas of a slide's own gaps. At most
    ``max_fraction`` of the sites are covered.

    Parameters
    ----------
    positions
        ``(n, 2)`` site positions.
    sizes
        Sites per region, largest first.

    Returns
    -------
    Boolean ``(n,)`` mask of the covered sites.
    """
    n = len(positions)
    budget = int(max_fraction * n)
    tree = cKDTree(positions)
    covered = np.zeros(n, dtype=bool)
    for size in np.asarray(sizes, dtype=int):
        size = min(int(size), budget - int(covered.sum()))
        if size <= 0:
            break
        _, near = tree.query(positions[rng.integers(n)], k=min(n, size + int(covered.sum())))
        near = np.atleast_1d(near)
        covered[near[~covered[near]][:size]] = True
    return covered


__all__ = ["random_disks", "nearest_regions"]
