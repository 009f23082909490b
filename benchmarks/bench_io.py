"""Reading a legacy ST counts table, against plain pandas ``read_csv`` of the same file.

Usage::

    python benchmarks/bench_io.py [--repeats 5] [--data ../shared/data]

Rows: the her2st B1 table (295 spots x 15,109 genes, tab-separated, gzipped, with its
``B1_selection.tsv`` beside it) when the shared data are present, and synthetic tables written
here (seeded): 1,000 spots x 15,000 genes as spots-as-rows and as spots-as-columns (genes as
rows, the other common layout), gzipped. For each file, in one process and on the same load:
``pd.read_csv(path, sep=..., index_col=0)`` alone (the floor: parsing the text) and
``napari_stentrans.read`` (parsing, orientation, numeric check, coordinates, lattice, count
checks), run alternately so both see the same load, after one warm-up each; median and fastest
of ``--repeats`` runs, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_stentrans.core.io import read


def timed_pair(baseline, ours, repeats: int) -> tuple[list[float], list[float]]:
    """Wall times of two functions run alternately (the same load for both), after one warm-up."""
    times: tuple[list[float], list[float]] = ([], [])
    baseline(), ours()
    for _ in range(repeats):
        for fn, out in ((baseline, times[0]), (ours, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def synthetic_table(folder: Path, n_spots: int, n_genes: int, spots_as_columns: bool) -> Path:
    """A gzipped TSV of Poisson counts on a square ST grid, spot ids ``{x}x{y}``."""
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n_spots)))
    ids = [f"{1 + i % side}x{1 + i // side}" for i in range(n_spots)]
    genes = [f"Gene{j}" for j in range(n_genes)]
    counts = rng.poisson(rng.gamma(0.3, 2.0, n_genes), size=(n_spots, n_genes)).astype(np.int32)
    table = pd.DataFrame(counts, index=ids, columns=genes)
    if spots_as_columns:
        table = table.T
    name = f"synthetic_{n_spots}x{n_genes}_{'genes_as_rows' if spots_as_columns else 'spots_as_rows'}.tsv.gz"
    path = folder / name
    table.to_csv(path, sep="\t")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("STENTRANS_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data")),
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        her2st = args.data / "st_her2st_andersson2021" / "B1_counts.tsv.gz"
        if her2st.is_file():
            files.append(her2st)
        else:
            print(f"({her2st} absent: synthetic tables only)")
        files += [
            synthetic_table(Path(tmp), 1000, 15000, spots_as_columns=False),
            synthetic_table(Path(tmp), 1000, 15000, spots_as_columns=True),
        ]
        print(
            f"{'file':52s} {'spots x genes':>14s} {'read_csv med':>13s} {'(min)':>7s} "
            f"{'st.read med':>12s} {'(min)':>7s} {'ratio':>6s}"
        )
        for path in files:
            baseline, ours = timed_pair(
                lambda p=path: pd.read_csv(p, sep="\t", index_col=0), lambda p=path: read(p), args.repeats
            )
            adata = read(path)
            ratio = np.median(ours) / np.median(baseline)
            print(
                f"{path.name:52s} {adata.n_obs:>6d} x {adata.n_vars:<6d} {np.median(baseline):13.3f} "
                f"{min(baseline):7.3f} {np.median(ours):12.3f} {min(ours):7.3f} {ratio:6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
