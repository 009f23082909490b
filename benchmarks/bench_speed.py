"""Speed and peak memory of the whole job per preset, at several gene counts, side by side.

Usage::

    python benchmarks/bench_speed.py [--genes 500,2000,10000,18000] [--presets default,transformer,published]
                                     [--epochs 2] [--device cpu] [--load idle,loaded] [--blas bounded,unbounded]
                                     [--keep-network]

The slide is the synthetic full Visium capture area (4,992 spots, seeded). Each (preset, genes,
load) runs in a fresh child process, so its peak resident memory (``VmHWM``) is its own: read,
prepare the slide (lattice, depth), rasterise (in gene batches, as the model sees them), fit
(the classical choice; for the learning presets training on up to 2,000 genes for a fixed
``--epochs``, early stopping off, so throughput compares), enhance every gene and stream it into
an ``.h5ad`` as ``stentrans enhance`` does (``genes/s``, written file included).

``--load loaded`` runs one competing CPU-bound process beside the child (a shared machine).
``--keep-network`` keeps the trained network whatever validation says (the gate of
:func:`napari_stentrans.core.estimators.learned.gate` is switched off in the child), so the
learning presets' enhancement runs the network and its cost is measured; without it, a network
refused by the gate enhances at the default's cost. On CUDA the peak GPU memory
(``torch.cuda.max_memory_allocated``) is reported too.
``transformer_lowrank_base`` (a preset name here only) is the baseline for the transformer: its
network trained on the low-rank estimate alone (``gene_residuals="none"``, the preset's base
before 2026-12-02), whose training pairs build no gene residuals.
``--blas unbounded`` is the baseline for the default preset: the classical choice without its
one-thread BLAS limit (the behaviour before it), run in the same way beside the bounded one. One
markdown table is printed.
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


def child(path: str, preset_name: str, epochs: int, device: str, blas: str, keep: bool = False) -> dict:
    import contextlib

    import numpy as np

    from napari_stentrans.core.config import preset
    from napari_stentrans.core.estimators import classical
    from napari_stentrans.core.fitting import fit
    from napari_stentrans.core.io import read
    from napari_stentrans.core.slide import Slide

    if blas == "unbounded":  # the baseline: BLAS with its default threads during the choice
        classical.threadpool_limits = lambda **_: contextlib.nullcontext()
    if keep:
        from napari_stentrans.core.estimators import learned

        learned.gate = lambda result, config: True
    out: dict = {}
    start = time.perf_counter()
    adata = read(path)
    out["read_s"] = time.perf_counter() - start
    start = time.perf_counter()
    slide = Slide.from_adata(adata)
    out["lattice_s"] = time.perf_counter() - start
    start = time.perf_counter()
    raster = slide.index_raster()
    for first in range(0, len(slide.genes), GENE_BATCH):
        values = slide.expression(np.arange(first, min(first + GENE_BATCH, len(slide.genes))), "log1p")
        raster.rasterize(values, slide.row[slide.usable], slide.col[slide.usable])
    out["rasterise_s"] = time.perf_counter() - start
    n_genes = adata.n_vars
    learns = preset_name != "default"
    base = {"gene_residuals": "none"} if preset_name == "transformer_lowrank_base" else {}
    config = preset(
        "transformer" if base else preset_name,
        slide.lattice.kind,
        **base,
        epochs=epochs if learns else 0,
        n_train_genes=min(n_genes, TRAIN_GENES),
        patience=None,
        restore_best=False,  # so a learned model's network runs at inference
    )
    start = time.perf_counter()
    model = fit(slide, config, device=device)
    out["train_s"] = time.perf_counter() - start
    trained_genes = len(model.training_genes)
    out["train_genes_epochs_per_s"] = trained_genes * epochs / out["train_s"] if learns else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        written = model.write(slide, Path(tmp) / "enhanced.h5ad", genes=n_genes, device=device)
        out["enhance_s"] = time.perf_counter() - start
        out["output_gb"] = written.path.stat().st_size / 1e9
    out["output_sites"], out["enhanced_genes"] = written.shape
    out["genes_per_s"] = out["enhanced_genes"] / out["enhance_s"]
    out["peak_rss_gb"] = peak_rss_gb()
    out["uses_network"] = bool(model.uses_network)
    if device.startswith("cuda"):
        import torch

        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
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
    parser.add_argument(
        "--load", default="idle", help="idle, loaded (one competing CPU-bound process), or both"
    )
    parser.add_argument(
        "--blas", default="bounded", help="bounded, unbounded (baseline, default preset only), or both"
    )
    parser.add_argument("--keep-network", action="store_true", help="skip the gate: the network always runs")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, preset_name, epochs, device, blas, keep = args.child
        print(json.dumps(child(path, preset_name, int(epochs), device, blas, keep == "keep")))
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
                for load in args.load.split(","):
                    for blas in args.blas.split(","):
                        if blas == "unbounded" and name != "default":
                            continue
                        stats = run_child(
                            path, name, args.epochs, args.device, blas, load == "loaded", args.keep_network
                        )
                        rows.append((n_genes, name, load, blas, stats))
                        print(
                            f"done {n_genes} genes, {name}, {load}, {blas}: {stats}",
                            file=sys.stderr,
                            flush=True,
                        )
    gpu = args.device.startswith("cuda")
    print(
        f"Synthetic full Visium slide (4,992 spots), device {args.device}, {args.epochs} epochs for the learning presets\n"
    )
    print(
        "| genes | preset | machine | BLAS in the choice | read s | prepare s | rasterise s | fit s "
        "| train genes x epochs / s | network enhances | enhance + write s | enhanced genes / s | output sites "
        "| output file GB | peak RSS GB |" + (" peak GPU GB |" if gpu else "")
    )
    print(
        "|---:|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "")
    )
    for n_genes, name, load, blas, s in rows:
        tput = "-" if s["train_genes_epochs_per_s"] is None else f"{s['train_genes_epochs_per_s']:.0f}"
        threads = "1 thread" if blas == "bounded" else "default threads"
        print(
            f"| {n_genes} | {name} | {load} | {threads} | {s['read_s']:.2f} | {s['lattice_s']:.3f} "
            f"| {s['rasterise_s']:.2f} | {s['train_s']:.1f} | {tput} | {'yes' if s['uses_network'] else 'no'} "
            f"| {s['enhance_s']:.1f} | {s['genes_per_s']:.0f} | {s['output_sites']} | {s['output_gb']:.2f} "
            f"| {s['peak_rss_gb']:.2f} |" + (f" {s['peak_gpu_gb']:.2f} |" if gpu else "")
        )


def run_child(
    path: Path, name: str, epochs: int, device: str, blas: str, loaded: bool, keep: bool = False
) -> dict:
    """One measurement in a fresh process, with a competing CPU-bound process when ``loaded``."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        cmd = [sys.executable, __file__, "--child", str(path), name, str(epochs), device, blas]
        cmd.append("keep" if keep else "gate")
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
