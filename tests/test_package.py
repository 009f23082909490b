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
    # dir() (and so tab completion) lists the lazy API without importing it
    code = "import sys, napari_stentrans as st; d = dir(st); print('fit' in d, 'read' in d, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "False"]


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Top-level package names a module imports (at module level only, if asked)."""
    import ast

    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


CORE = ROOT / "src" / "napari_stentrans" / "core"


def test_core_engine_never_imports_napari_or_qt():
    modules = list(CORE.rglob("*.py"))
    assert len(modules) > 20
    for path in modules:
        banned = _imports(path) & {
            "napari",
            "qtpy",
            "PyQt5",
            "PyQt6",
            "PySide2",
            "PySide6",
            "magicgui",
            "superqt",
        }
        assert not banned, f"{path.relative_to(CORE)} imports {banned}"


def test_only_the_learned_models_import_torch_at_module_level():
    learned = {"model.py", "training.py", "device.py", "estimators/learned.py", "estimators/cnn.py"}
    importers = {
        str(p.relative_to(CORE)) for p in CORE.rglob("*.py") if "torch" in _imports(p, top_level_only=True)
    }
    assert importers == learned


def test_cli_help_and_info_never_import_torch(tmp_path):
    from helpers import block_sites, make_slide

    r, c = block_sites("hex", 6, 10)
    make_slide(r, c, "hex").write_h5ad(tmp_path / "s.h5ad")
    code = (
        "import sys\n"
        "from napari_stentrans.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        f"assert main(['info', {str(tmp_path / 's.h5ad')!r}]) == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "lattice:   hex" in out and out.split()[-1] == "False"


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


def test_the_warnings_a_user_may_filter_are_in_the_public_api():
    import napari_stentrans as st

    names = (
        "OptionalPartWarning",
        "DuplicateGeneNamesWarning",
        "CountsFromRawWarning",
        "LeftOutFeaturesWarning",
        "ImputedSitesWarning",
    )
    for name in names:
        assert name in dir(st) and issubclass(getattr(st, name), UserWarning)
    from napari_stentrans.core.io import LeftOutFeaturesWarning

    assert st.LeftOutFeaturesWarning is LeftOutFeaturesWarning  # the class the reader raises
