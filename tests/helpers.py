"""Test helpers: the shared real datasets and small hand-built slides."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_stentrans.synthetic import write_10x_h5

SHARED_DATA = Path(
    os.environ.get("STENTRANS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def shared_data_or_skip() -> Path:
    """The shared real datasets; skipped on a user's machine, required when ``CI`` is set."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but the shared datasets are missing at {SHARED_DATA}")
    pytest.skip(f"shared datasets not found at {SHARED_DATA} (set STENTRANS_SHARED_DATA)")


def make_slide(
    rows, cols, kind: str, n_genes: int = 24, seed: int = 0, spatial_scale: float = 10.0
) -> ad.AnnData:
    """A small slide on given lattice sites with smooth structure and Poisson counts."""
    from napari_stentrans.core.lattice import Lattice

    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    rng = np.random.default_rng(seed)
    lattice = Lattice(kind)
    xy = lattice.physical(rows, cols) / lattice.pitch_um
    fields = np.column_stack([np.sin(xy[:, 0] / 3), np.cos(xy[:, 1] / 4), xy[:, 0] / 10])
    rate = np.exp(1.0 + fields @ rng.normal(0, 1, size=(3, n_genes)))
    counts = rng.poisson(rate).astype(np.float32)
    counts[:, 0] += 1  # every spot has counts
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"array_row": rows, "array_col": cols}, index=[f"bc{i}" for i in range(len(rows))]),
        var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]),
    )
    adata.obsm["spatial"] = lattice.physical(rows, cols) / lattice.pitch_um * spatial_scale + 5.0
    adata.uns["stentrans_lattice"] = {"kind": kind, "pitch_um": float(lattice.pitch_um), "source": "test"}
    return adata


def write_block_slide(path: Path, kind: str, n_rows: int, n_cols: int, **kwargs) -> Path:
    """:func:`make_slide` on an ``n_rows x n_cols`` block of ``kind`` sites, written to ``path`` (.h5ad)."""
    r, c = block_sites(kind, n_rows, n_cols)
    make_slide(r, c, kind, **kwargs).write_h5ad(path)
    return path


def two_layer_slide(seed: int = 5) -> ad.AnnData:
    """The hex test slide (20 x 36) whose right half (``array_col >= 18``) expresses 10 of its 30
    genes five times higher: two layers that clustering can tell apart."""
    rows, cols = block_sites("hex", 20, 36)
    adata = make_slide(rows, cols, "hex", n_genes=30, seed=seed)
    counts = adata.X.toarray()
    counts[np.ix_(cols >= 18, np.arange(10))] *= 5
    adata.X = sp.csr_matrix(counts)
    return adata


def write_slide_with_bad_count(folder: Path, value: float) -> Path:
    """A small square slide as .h5ad whose spot 1, gene 1 holds ``value`` (NaN, -1, 0.5, ...)."""
    r, c = block_sites("square", 4, 4)
    adata = make_slide(r, c, "square")
    x = adata.X.toarray()
    x[1, 1] = value
    adata.X = sp.csr_matrix(x)
    adata.write_h5ad(folder / "bad.h5ad")
    return folder / "bad.h5ad"


def block_sites(kind: str, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """All sites of a lattice in a rectangle of array coordinates."""
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    r, c = r.ravel(), c.ravel()
    if kind != "square":
        keep = (r + c) % 2 == 0
        r, c = r[keep], c[keep]
    return r, c


# a fast configuration of the learned preset: few genes, a tiny network
TINY_OPTIONS = dict(
    epochs=2,
    n_train_genes=16,
    batch_size=8,
    depth=1,
    heads=2,
    patch_size=2,
    embed_dim=16,
    min_detection=0.0,
)


def tiny_config(kind: str = "square", **overrides):
    """A fast configuration of the learned (transformer) preset for tests."""
    from napari_stentrans.core.config import preset

    return preset("transformer", kind, **{**TINY_OPTIONS, **overrides})


def fit_cpu(adata, config, mask=None, stop=None):
    """Fit a configuration on the CPU (None when stopped)."""
    from napari_stentrans.core.fitting import fit

    return fit(adata, config, mask=mask, device="cpu", stop=stop)


def write_spaceranger(folder, adata, *, matrix: str, positions: str):
    """Write a minimal Space Ranger output of ``adata`` (hex lattice)."""
    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    counts = sp.csc_matrix(adata.X.T).astype(np.int32)
    barcodes = np.asarray(adata.obs_names)
    if matrix == "h5":
        ids = [f"ENSG{i:05d}" for i in range(adata.n_vars)]
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", adata.X, barcodes, adata.var_names, ids)
    else:
        mtx = folder / "filtered_feature_bc_matrix"
        mtx.mkdir()
        from scipy.io import mmwrite

        with gzip.open(mtx / "matrix.mtx.gz", "wb") as fh:
            mmwrite(fh, sp.coo_matrix(counts))
        pd.DataFrame(
            {0: [f"ENSG{i:05d}" for i in range(adata.n_vars)], 1: adata.var_names, 2: "Gene Expression"}
        ).to_csv(mtx / "features.tsv.gz", sep="\t", header=False, index=False)
        pd.Series(barcodes).to_csv(mtx / "barcodes.tsv.gz", sep="\t", header=False, index=False)
    table = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": adata.obs["array_row"].to_numpy(),
            "array_col": adata.obs["array_col"].to_numpy(),
            "pxl_row_in_fullres": adata.obsm["spatial"][:, 1],
            "pxl_col_in_fullres": adata.obsm["spatial"][:, 0],
        }
    )
    table = pd.concat(
        [
            table,
            pd.DataFrame(
                [
                    {
                        "barcode": "EMPTY-1",
                        "in_tissue": 1,
                        "array_row": 40,
                        "array_col": 40,
                        "pxl_row_in_fullres": 1.0,
                        "pxl_col_in_fullres": 1.0,
                    }
                ]
            ),
        ]
    )
    if positions == "v1":
        table.to_csv(spatial / "tissue_positions_list.csv", header=False, index=False)
    elif positions == "v2":
        table.to_csv(spatial / "tissue_positions.csv", index=False)
    else:
        table.to_parquet(spatial / "tissue_positions.parquet")
    (spatial / "scalefactors_json.json").write_text(
        json.dumps({"tissue_lowres_scalef": 0.5, "spot_diameter_fullres": 9.0})
    )
    from PIL import Image

    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(spatial / "tissue_lowres_image.png")


def build_cases(out: Path, *names: str) -> Path:
    """Build failing-input cases of ``shared/cases/make_cases.py`` (issue 15) under ``out``.

    The cases are cut from the shared slides, so this skips where they are absent (fails in CI).
    """
    import subprocess
    import sys

    data = shared_data_or_skip()
    script = data.parent / "cases" / "make_cases.py"
    if not script.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {script} is missing")
        pytest.skip(f"{script} not found")
    subprocess.run(
        [sys.executable, str(script), str(out), *names],
        check=True,
        capture_output=True,
        env={**os.environ, "STENTRANS_SHARED_DATA": str(data)},
    )
    return out


def spatialdata_or_skip():
    """The optional ``spatialdata`` package; skipped when absent, required when ``CI`` is set."""
    import importlib.util

    if importlib.util.find_spec("spatialdata") is not None:
        import spatialdata

        return spatialdata
    if os.environ.get("CI"):
        pytest.fail('CI is set but spatialdata is missing: pip install "napari-stentrans[spatialdata]"')
    pytest.skip("spatialdata not installed (the [spatialdata] extra)")


def with_image(adata: ad.AnnData, library: str = "lib") -> ad.AnnData:
    """``adata`` with a Visium-style ``uns["spatial"]``: a 20 x 30 lowres image at scale 0.5, 9 px spots."""
    rng = np.random.default_rng(1)
    adata.uns["spatial"] = {
        library: {
            "images": {"lowres": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)},
            "scalefactors": {"tissue_lowres_scalef": 0.5, "spot_diameter_fullres": 9.0},
        }
    }
    return adata


def fit_network(adata, config, mask=None):
    """A correction network trained on the CPU and kept whatever validation says.

    For tests of the network's own inference (the learned preset keeps a network only when it
    beats the default's estimate on held-out genes, which a tiny test network rarely does).
    """
    import torch

    from napari_stentrans.core.classical import TARGET_SUM
    from napari_stentrans.core.estimators.classical import ClassicalEstimator
    from napari_stentrans.core.estimators.learned import LearnedModel
    from napari_stentrans.core.slide import as_slide
    from napari_stentrans.core.training import train_network

    slide = as_slide(adata, mask)
    idx = slide.training_genes(config.data.n_train_genes, config.data.min_detection)
    values = slide.expression(idx, config.data.normalization, TARGET_SUM)
    classical = ClassicalEstimator(config).fit_model(slide, values=values)
    run = train_network(slide, values, config, classical, torch.device("cpu"))
    try:
        while True:
            next(run)
    except StopIteration as done:
        result = done.value
    return LearnedModel.trained_on(slide, config, classical, idx, result)


def run_cli(args, capsys) -> tuple[int, str, str]:
    """Run ``stentrans ARGS`` in-process: exit code, stdout, stderr."""
    from napari_stentrans.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The CLI's single ``stentrans: error: ...`` line (asserts there is exactly one line)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stentrans: error: "), err
    return lines[0]


def run_to_end(widget, qtbot) -> None:
    """Start the Train widget's run (napari tests) and wait until its layers are in the viewer."""
    assert widget.start() is not None
    # a fast run can finish before a waitSignal connects: wait on the widget's state instead
    qtbot.waitUntil(lambda: widget.idle, timeout=120_000)
