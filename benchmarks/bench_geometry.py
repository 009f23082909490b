"""Read + lattice + rasterise + training-pair time on a full Visium slide, against a loop baseline.

Usage: python benchmarks/bench_geometry.py [--genes 2000] [--repeats 3]

The slide is synthetic (all 4,992 Visium positions, seeded). The baseline re-implements the
published code's bookkeeping style (METHOD.md defect 5): a dense positions x positions pandas
distance table for neighbours and Python loops over spots to fill images. Both run here, in one
process, on the same data; the table reports the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_stentrans.core.config import preset
from napari_stentrans.core.estimators.classical import ClassicalEstimator
from napari_stentrans.core.files import write_h5ad
from napari_stentrans.core.io import read
from napari_stentrans.core.slide import Slide
from napari_stentrans.synthetic import synthetic_slide


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def ours(path: Path, n_genes: int, repeats: int) -> dict[str, float]:
    config = preset("transformer", "hex", n_train_genes=n_genes)
    batch = config.optim.batch_size
    t_read, adata = timed(lambda: read(path), repeats)
    t_lattice, slide = timed(lambda: Slide.from_adata(adata), repeats)
    genes = np.arange(min(n_genes, adata.n_vars))

    t_norm, values = timed(lambda: slide.expression(genes, "log1p"), repeats)

    def rasterise():
        raster = slide.index_raster()
        return raster.rasterize(values, slide.row[slide.usable], slide.col[slide.usable])

    t_raster, _ = timed(rasterise, repeats)
    # the classical fit: rank, smoothers and depth mixture on the 4 coset pairs, and the basis
    t_select, classical = timed(lambda: ClassicalEstimator(config).fit_model(slide, values=values), repeats)
    rng = np.random.default_rng(0)
    import torch

    from napari_stentrans.core.training import PairSampler

    def first_pair():  # a fresh sampler: its first pair includes fitting that coset's basis
        sampler = PairSampler(slide, values, config, classical)
        sampler.upsampling_pair(
            np.arange(batch),
            1,
            slide.lattice.symmetries[2],
            sampler.blob_drop(1, rng),
            torch.device("cpu"),
        )
        return sampler

    t_first, sampler = timed(first_pair, repeats)
    t_pair, _ = timed(
        lambda: sampler.upsampling_pair(
            np.arange(batch),
            1,
            slide.lattice.symmetries[2],
            sampler.blob_drop(1, rng),
            torch.device("cpu"),
        ),
        repeats,
    )
    return {
        "read": t_read,
        "lattice": t_lattice,
        "normalise (log1p, depth)": t_norm,
        "rasterise": t_raster,
        "training pair (first)": t_select + t_first,
        "  classical fit (choice on 4 coset pairs with depth, and the basis)": t_select,
        f"  sampler + first pair ({batch} genes, fits that coset's basis)": t_first,
        f"  a further pair ({batch} genes)": t_pair,
    }


def loop_baseline(path: Path, n_genes: int, repeats: int) -> dict[str, float]:
    """Published-style bookkeeping: dense distance table and loops over spots."""
    t_read, adata = timed(lambda: read(path), repeats)
    x = adata.X[:, :n_genes].toarray()

    def lattice():
        coords = pd.DataFrame(
            {"row": adata.obs["array_row"].to_numpy(), "col": adata.obs["array_col"].to_numpy()}
        )
        xy = np.column_stack([coords["col"] / 2.0, coords["row"] * np.sqrt(3) / 2])
        dist = pd.DataFrame(np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)))  # positions x positions
        neighbours = [list(dist.index[(dist[i] > 0) & (dist[i] < 1.01)]) for i in range(len(coords))]
        return coords, neighbours

    t_lattice, (coords, _) = timed(lattice, repeats)

    def rasterise():
        rows, cols = coords["row"].tolist(), coords["col"].tolist()
        img = np.zeros((x.shape[1], max(rows) + 1, max(cols) // 2 + 1), dtype=np.float32)
        for i in range(len(rows)):
            img[:, rows[i], cols[i] // 2] = x[i]
        return img

    t_raster, img = timed(rasterise, repeats)

    def pair():
        lr = np.zeros((img.shape[0], (img.shape[1] + 1) // 2, (img.shape[2] + 1) // 2), dtype=np.float32)
        for i, (r, c) in enumerate(zip(coords["row"].tolist(), coords["col"].tolist(), strict=True)):
            if r % 2 == 0 and c % 4 == 0:
                lr[:, r // 2, c // 4] = x[i]
        return lr

    t_pair, _ = timed(pair, repeats)
    return {"read": t_read, "lattice": t_lattice, "rasterise": t_raster, "training pair (first)": t_pair}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    adata = synthetic_slide("hex", n_genes=args.genes, seed=0, with_truth=False, full_array=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "full_visium.h5ad"
        write_h5ad(adata, path)
        ours_t = ours(path, args.genes, args.repeats)
        base_t = loop_baseline(path, args.genes, args.repeats)
    print(
        f"Full Visium slide: {adata.n_obs} spots x {args.genes} genes; median of {args.repeats} runs (seconds)\n"
    )
    print("| step | napari-stentrans | loop baseline (published style) |")
    print("|---|---:|---:|")
    for step, value in ours_t.items():
        base = base_t.get(step)
        print(f"| {step} | {value:.3f} | {'' if base is None else f'{base:.3f}'} |")
    core = ["read", "lattice", "rasterise", "training pair (first)"]
    ours_total = sum(ours_t[k] for k in core) + ours_t["normalise (log1p, depth)"]
    print(f"| **total** | **{ours_total:.3f}** | **{sum(base_t[k] for k in core):.3f}** |")


if __name__ == "__main__":
    main()
