"""Packaging: the shipped npe2 manifest is the top-level one; the API imports lightly."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_ships_the_top_level_manifest():
    shipped = resources.files("napari_stentrans").joinpath("napari.yaml").read_text()
    assert shipped == (ROOT / "napari.yaml").read_text()
    assert "name: napari-stentrans" in shipped


def test_importing_the_package_loads_neither_torch_nor_napari():
    code = "import sys, napari_stentrans; print('torch' in sys.modules, 'napari' in sys.modules, 'qtpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


def test_core_engine_never_imports_napari_or_qt():
    for path in (ROOT / "src" / "napari_stentrans" / "core").glob("*.py"):
        text = path.read_text()
        for banned in ("import napari", "from napari ", "qtpy", "PyQt", "magicgui"):
            assert banned not in text, f"{path.name} imports {banned}"


def test_synthetic_sample_is_seeded_and_carries_2x_truth():
    from napari_stentrans.synthetic import synthetic_slide

    a = synthetic_slide("hex", n_genes=40, seed=1)
    b = synthetic_slide("hex", n_genes=40, seed=1)
    assert (a.X != b.X).nnz == 0
    assert a.obs["array_row"].between(0, 77).all() and a.obs["array_col"].between(0, 127).all()
    assert ((a.obs["array_row"] + a.obs["array_col"]) % 2 == 0).all()
    truth = a.uns["stentrans_truth"]
    assert truth["expression"].shape == (len(truth["array_row"]), 40)
    assert len(truth["array_row"]) > 3 * a.n_obs  # the half-pitch lattice is about 4x denser
    # the measured spots are part of the truth lattice at (2r, 2c)
    truth_keys = set(zip(truth["array_row"].tolist(), truth["array_col"].tolist(), strict=True))
    assert all(
        (2 * r, 2 * c) in truth_keys for r, c in zip(a.obs["array_row"], a.obs["array_col"], strict=True)
    )
    # smooth domains: neighbouring truth values correlate strongly
    x = np.log1p(truth["expression"][:, :10])
    assert np.corrcoef(x[:-1].ravel(), x[1:].ravel())[0, 1] > 0.8
    st = synthetic_slide("square", n_genes=10, seed=0)
    assert st.uns["stentrans_lattice"]["kind"] == "square" and 300 < st.n_obs < 1155
