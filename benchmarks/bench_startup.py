"""Start-up time of ``stentrans info`` on a small slide, beside the imports it cannot avoid.

Usage::

    python benchmarks/bench_startup.py [--repeats 7] [--python /path/to/other/env/bin/python]

Each command runs in a fresh interpreter, ``--repeats`` times; the table gives the median and the
fastest wall time. Rows: ``stentrans info`` on the bundled-size synthetic ST slide (492 spots x
300 genes); the same with ``import torch`` first (what every command paid before the engine
imported torch only for learned models); ``import anndata`` alone (the floor: reading any slide
needs it); ``import torch`` alone. ``--python`` times another environment's interpreter (e.g. one
with only the base dependencies: napari brings dask, which anndata imports when it is present).
Run it on an idle machine: the numbers are wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed_runs(python: str, code: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the environment to time")
    args = parser.parse_args()
    from napari_stentrans.core.files import write_h5ad
    from napari_stentrans.synthetic import synthetic_slide

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "st.h5ad"
        write_h5ad(synthetic_slide("square", n_genes=300, seed=0, with_truth=False), path)
        info = f"from napari_stentrans.cli import main; main(['info', {str(path)!r}])"
        rows = [
            ("stentrans info (no torch)", info),
            ("stentrans info with torch imported (before)", "import torch; " + info),
            ("import anndata (floor)", "import anndata"),
            ("import torch", "import torch"),
        ]
        has_torch = subprocess.run([args.python, "-c", "import torch"], capture_output=True).returncode == 0
        rows = [(label, code) for label, code in rows if has_torch or "torch" not in code]
        has_dask = subprocess.run([args.python, "-c", "import dask"], capture_output=True).returncode == 0
        results = [(label, timed_runs(args.python, code, args.repeats)) for label, code in rows]
    print(
        f"{args.python}: fresh interpreter per run, {args.repeats} runs (seconds); dask "
        f"{'installed (anndata imports it)' if has_dask else 'not installed'}\n"
    )
    print("| command | median s | fastest s |")
    print("|---|---:|---:|")
    for label, times in results:
        print(f"| {label} | {np.median(times):.2f} | {min(times):.2f} |")


if __name__ == "__main__":
    main()
