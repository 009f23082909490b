"""Cost of the symmetric lattice ties: the smoothers against their tie-cutting versions.

Usage: python benchmarks/bench_smoothers.py [--repeats 3]

The sources are all 4,992 spots of a Visium capture area, the targets its 2x half-pitch lattice
(39,936 sites), positions in pitch units. Each row times building one smoothing matrix, median of
``--repeats``, both versions in one process on the same data:

* kernels (0.7 and 2 pitches): ``classical.kernel_weights`` keeps every spot of the farthest ring
  it reaches; the baseline keeps exactly the ``33 h^2 + 7`` nearest (the k-d tree cuts a ring by
  input order), as before 2026-12-01;
* linear interpolation: ``classical.linear_weights`` averages two triangulations (each square of
  spots split along both diagonals); the baseline is one Delaunay triangulation.

``nnz`` is the number of weights kept. One markdown table is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
from scipy.spatial import Delaunay, cKDTree

from napari_stentrans.core.classical import (
    _neighbours_for,
    barycentric_weights,
    kernel_weights,
    linear_weights,
)
from napari_stentrans.core.lattice import Lattice


def cut_kernel(source: np.ndarray, target: np.ndarray, bandwidth: float) -> sp.csr_matrix:
    """The baseline kernel: exactly the k nearest sources, ties cut by the k-d tree."""
    k = int(min(len(source), max(7, _neighbours_for(bandwidth))))
    dist, idx = cKDTree(source).query(target, k=k)
    d2 = dist**2
    w = np.exp(-(d2 - d2[:, :1]) / (2.0 * bandwidth * bandwidth))
    w /= w.sum(axis=1, keepdims=True)
    return sp.csr_matrix(
        (w.ravel(), idx.ravel(), np.arange(0, w.size + 1, k)), shape=(len(target), len(source))
    )


def one_triangulation(source: np.ndarray, target: np.ndarray) -> sp.csr_matrix:
    """The baseline linear interpolation: one Delaunay triangulation (targets inside the hull)."""
    return barycentric_weights(Delaunay(source), target)[0]


def timed(build, repeats: int) -> tuple[float, int]:
    times, nnz = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        nnz = build().nnz
        times.append(time.perf_counter() - start)
    return float(np.median(times)), nnz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lattice = Lattice("hex")
    r, c = np.meshgrid(np.arange(78), np.arange(128), indexing="ij")
    on = (r + c) % 2 == 0
    source = lattice.physical(r[on], c[on]) / lattice.pitch_um
    tr, tc = np.meshgrid(np.arange(0, 78, 0.5), np.arange(0, 128, 0.5), indexing="ij")
    target = np.column_stack([tc.ravel() * 0.5, tr.ravel() * np.sqrt(3) / 2])
    rows = [
        (
            "Gaussian kernel, 0.7 pitch",
            lambda: kernel_weights(source, target, 0.7),
            lambda: cut_kernel(source, target, 0.7),
        ),
        (
            "Gaussian kernel, 2 pitches",
            lambda: kernel_weights(source, target, 2.0),
            lambda: cut_kernel(source, target, 2.0),
        ),
        (
            "linear interpolation",
            lambda: linear_weights(source, target),
            lambda: one_triangulation(source, target),
        ),
    ]
    print(f"{len(source):,} Visium spots -> {len(target):,} half-pitch sites, median of {args.repeats}\n")
    print("| smoother | symmetric ties (s) | ties cut (s) | nnz symmetric | nnz cut |")
    print("|---|---:|---:|---:|---:|")
    for name, ours, baseline in rows:
        (t_ours, n_ours), (t_base, n_base) = timed(ours, args.repeats), timed(baseline, args.repeats)
        print(f"| {name} | {t_ours:.3f} | {t_base:.3f} | {n_ours:,} | {n_base:,} |")


if __name__ == "__main__":
    main()
