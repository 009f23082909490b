"""Speed and peak memory of the whole job per preset, at several gene counts, side by side.

Usage::

    python benchmarks/bench_speed.py [--genes 500,2000,10000,18000] [--presets default,transformer,published]
                                     [--epochs 2] [--device cpu]

The slide is the synthetic full Visium capture area (4,992 spots, seeded). Each (preset, genes)
runs in a fresh child process, so its peak resident memory (``VmHWM``) is its own: read,
lattice, rasterise (in gene batches, as the model sees them), train on up to 2,000 genes (a fixed
``--epochs`` for the learning presets, early stopping off, so throughput compares), enhance every
gene and stream it into an ``.h5ad`` as ``stentrans enhance`` does (``genes/s``, written file
included). One markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN_GENES = 2000  # the presets' training-gene count; every gene is enhanced
GENE_BATCH = 256  # genes per batch, as in enhancement


def child(path: str, preset_name: str, epochs: int, device: str) -> dict:
    import numpy as np

    from napari_stentrans.core.io import lattice_of, read
    from napari_stentrans.core.presets import preset
    from napari_stentrans.core.slide import slide_from_adata
    from napari_stentrans.core.streaming import write_enhanced
    from napari_stentrans.core.training import train

    out: dict = {}
    start = time.perf_counter()
    adata = read(path)
    out["read_s"] = time.perf_counter() - start
    start = time.perf_counter()
    slide = slide_from_adata(adata)
    out["lattice_s"] = time.perf_counter() - start
    start = time.perf_counter()
    raster = slide.index_raster()
    for first in range(0, len(slide.genes), GENE_BATCH):
        values = slide.expression(np.arange(first, min(first + GENE_BATCH, len(slide.genes))), "log1p")
        raster.rasterize(values, slide.row[slide.usable], slide.col[slide.usable])
    out["rasterise_s"] = time.perf_counter() - start
    n_genes = adata.n_vars
    learns = preset_name != "default"
    config = preset(
        preset_name,
        lattice_of(adata).kind,
        epochs=epochs if learns else 0,
        n_train_genes=min(n_genes, TRAIN_GENES),
        patience=None,
        device=device,
    )
    start = time.perf_counter()
    model = train(adata, config)
    out["train_s"] = time.perf_counter() - start
    trained_genes = len(model.training_genes)
    out["train_genes_epochs_per_s"] = trained_genes * epochs / out["train_s"] if learns else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        written = write_enhanced(adata, Path(tmp) / "enhanced.h5ad", model, genes=n_genes, device=device)
        out["enhance_s"] = time.perf_counter() - start
        out["output_gb"] = written.path.stat().st_size / 1e9
    out["output_sites"], out["enhanced_genes"] = written.shape
    out["genes_per_s"] = out["enhanced_genes"] / out["enhance_s"]
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def peak_rss_gb() -> float:
    """This process's peak resident memory.

    ``VmHWM`` belongs to the process's own address space, which ``exec`` replaces; Linux
    carries ``ru_maxrss`` over from the forking parent, so a child of a parent holding a
    large slide would report the parent's peak (the 10,000-gene rows once read 1.7 GB that way).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", default="500,2000,10000,18000")
    parser.add_argument("--presets", default="default,transformer,published")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, preset_name, epochs, device = args.child
        print(json.dumps(child(path, preset_name, int(epochs), device)))
        return
    from napari_stentrans.core.files import write_h5ad
    from napari_stentrans.synthetic import synthetic_slide

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_genes in (int(g) for g in args.genes.split(",")):
            path = Path(tmp) / f"visium_{n_genes}.h5ad"
            write_h5ad(
                synthetic_slide("hex", n_genes=n_genes, seed=0, with_truth=False, full_array=True), path
            )
            for name in args.presets.split(","):
                cmd = [sys.executable, __file__, "--child", str(path), name, str(args.epochs), args.device]
                result = subprocess.run(cmd, capture_output=True, text=True, check=True)
                stats = json.loads(result.stdout.strip().splitlines()[-1])
                rows.append((n_genes, name, stats))
                print(f"done {n_genes} genes, {name}: {stats}", file=sys.stderr, flush=True)
    print(
        f"Synthetic full Visium slide (4,992 spots), device {args.device}, {args.epochs} epochs for the learning presets\n"
    )
    print(
        "| genes | preset | read s | lattice s | rasterise s | train s | train genes x epochs / s "
        "| enhance + write s | enhanced genes / s | output sites | output file GB | peak RSS GB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n_genes, name, s in rows:
        tput = "-" if s["train_genes_epochs_per_s"] is None else f"{s['train_genes_epochs_per_s']:.0f}"
        print(
            f"| {n_genes} | {name} | {s['read_s']:.2f} | {s['lattice_s']:.3f} | {s['rasterise_s']:.2f} "
            f"| {s['train_s']:.1f} | {tput} | {s['enhance_s']:.1f} | {s['genes_per_s']:.0f} "
            f"| {s['output_sites']} | {s['output_gb']:.2f} | {s['peak_rss_gb']:.2f} |"
        )


if __name__ == "__main__":
    main()
