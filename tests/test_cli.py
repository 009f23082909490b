"""The ``stentrans`` CLI: each class of bad input exits non-zero, names the file, writes nothing."""

from __future__ import annotations

import re
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bad_inputs import CASES
from helpers import block_sites, make_slide, run_cli

FAST = ["--epochs", "1", "--train-genes", "16", "--quiet", "--device", "cpu"]


@pytest.fixture
def slide_file(tmp_path):
    r, c = block_sites("square", 10, 10)
    path = tmp_path / "slide.h5ad"
    make_slide(r, c, "square", n_genes=20).write_h5ad(path)
    return path


def _files(folder):
    return sorted(p.name for p in folder.rglob("*"))


def test_enhance_writes_output_model_and_plot(slide_file, tmp_path, capsys):
    code, out, _ = run_cli(
        [
            "enhance",
            slide_file,
            "-o",
            tmp_path / "out.h5ad",
            "--save-model",
            tmp_path / "m.safetensors",
            "--plot",
            tmp_path / "p.png",
            "--genes",
            "5",
            *FAST,
        ],
        capsys,
    )
    assert code == 0 and "wrote" in out
    result = ad.read_h5ad(tmp_path / "out.h5ad")
    assert result.n_vars == 5 and set(result.obs["kind"].unique()) == {"measured", "new"}
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    # the saved model applies to the slide again without training
    code, _, _ = run_cli(
        [
            "enhance",
            slide_file,
            "-o",
            tmp_path / "again.h5ad",
            "--model",
            tmp_path / "m.safetensors",
            "--genes",
            "G1,G2",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0 and list(ad.read_h5ad(tmp_path / "again.h5ad").var_names) == ["G1", "G2"]
    assert not [p for p in _files(tmp_path) if p.endswith(".tmp")]


def test_info_describes_the_slide(slide_file, capsys):
    code, out, _ = run_cli(["info", slide_file], capsys)
    assert code == 0
    assert "lattice:   square (pitch 200 um)" in out and "100 measured" in out


def test_the_output_names_its_input_by_an_absolute_path(slide_file, tmp_path, capsys, monkeypatch):
    """`enhance ../data/A1.tsv.gz` recorded the relative path: read from another folder, it named
    another file."""
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(["enhance", "slide.h5ad", "-o", "out.h5ad", "--genes", "3"], capsys)
    assert code == 0
    assert ad.read_h5ad(tmp_path / "out.h5ad").uns["stentrans"]["source"] == str(slide_file)
    code, out, _ = run_cli(["info", "out.h5ad"], capsys)
    assert f"from {slide_file};" in out


def test_info_of_an_output_repeats_its_pattern_check(slide_file, tmp_path, capsys):
    """A new user: `info` of an enhanced file said nothing of the pattern check `enhance` printed."""
    code, out, err = run_cli(["enhance", slide_file, "-o", tmp_path / "out.h5ad"], capsys)
    assert code == 0
    printed = next(x for x in out.splitlines() if x.startswith("patterns: "))
    patterns = ad.read_h5ad(tmp_path / "out.h5ad").uns["stentrans"]["patterns"]
    code, info, _ = run_cli(["info", tmp_path / "out.h5ad"], capsys)
    assert code == 0 and "patterns:  " + printed.removeprefix("patterns: ") in info.splitlines()
    assert "without its Poisson noise" in printed
    # 3.8 patterns against 4.6 in the measured genes without their noise: not warned (the fixed
    # bar of 5 warned, though the measured signal itself follows fewer)
    assert (
        patterns["effective_rank"] < 5
        and patterns["effective_rank"] >= 0.5 * patterns["measured_signal_effective_rank"]
    )
    assert "warning" not in patterns and "warning" not in err and "warning:" not in info
    # a rank-1 estimate of the same slide is warned, in the same words in info
    from dataclasses import replace

    import napari_stentrans as st
    from napari_stentrans.core.classical import ClassicalParams

    slide = ad.read_h5ad(slide_file)
    replace(st.fit(slide), params=ClassicalParams(1, None, None), _bases={}).save(
        tmp_path / "one.safetensors"
    )
    code, _, err = run_cli(
        ["enhance", slide_file, "--model", tmp_path / "one.safetensors", "-o", tmp_path / "one.h5ad"], capsys
    )
    warning = ad.read_h5ad(tmp_path / "one.h5ad").uns["stentrans"]["patterns"]["warning"]
    assert code == 0 and err.count("stentrans: warning: the enhanced genes") == 1  # said once
    assert f"stentrans: warning: {warning}" in err.splitlines()
    code, info, _ = run_cli(["info", tmp_path / "one.h5ad"], capsys)
    assert code == 0 and f"warning:   {warning}" in info.splitlines()


def test_info_describes_a_saved_model(slide_file, tmp_path, capsys):
    """A new user had no way to see what a model file holds: `info` refused `.safetensors`."""
    import napari_stentrans as st
    from helpers import fit_network, tiny_config

    adata = ad.read_h5ad(slide_file)
    st.fit(adata).save(tmp_path / "default.safetensors")
    code, out, _ = run_cli(["info", tmp_path / "default.safetensors"], capsys)
    assert code == 0
    assert "model:     preset default: the default's classical estimate; square lattice" in out
    assert "its low-rank basis was fitted on the 20 most variable genes" in out
    assert re.search(r"classical: rank \d+, scores .* \(kept on the slide it was fitted on", out)
    assert "training:" not in out and "note:" not in out
    trained = fit_network(adata, tiny_config("square", epochs=2, restore_best=False))
    trained.save(tmp_path / "network.safetensors")
    code, out, _ = run_cli(["info", tmp_path / "network.safetensors"], capsys)
    assert code == 0
    assert "preset transformer: a network correcting the default's estimate" in out
    val = trained.history["val_loss"]
    best = trained.validation["best_epoch"]
    assert (
        f"training:  2 epoch(s); held-out loss {val[0]:.4f} at the start, best {val[best]:.4f} at epoch {best}"
        in out
    )


def test_info_names_spatially_variable_genes_that_enhance_takes(tmp_path, capsys):
    """A new user found no gene names in `info` to give `--genes`: it names the most spatially
    variable ones, by symbol where the var names are ids, and `enhance --genes` takes them."""
    from napari_stentrans.core.display import spatially_variable_genes

    slide = make_slide(*block_sites("hex", 12, 24), "hex", n_genes=12)
    symbols = slide.var_names.to_numpy()
    slide.var["gene_symbols"] = symbols
    slide.var_names = [f"ENSG{i:011d}" for i in range(slide.n_vars)]
    slide.write_h5ad(tmp_path / "ids.h5ad")
    code, out, _ = run_cli(["info", tmp_path / "ids.h5ad"], capsys)
    line = next(x for x in out.splitlines() if x.startswith("variable:  "))
    named = line.removeprefix("variable:  ").split(" (the ")[0].split(", ")
    expected = [symbols[slide.var_names.get_loc(g)] for g in spatially_variable_genes(slide, 8)]
    assert code == 0 and named == expected and len(named) == 8
    code, _, _ = run_cli(
        [
            "enhance",
            tmp_path / "ids.h5ad",
            "-o",
            tmp_path / "o.h5ad",
            "--genes",
            ",".join(named[:2]),
            "--quiet",
        ],
        capsys,
    )
    written = ad.read_h5ad(tmp_path / "o.h5ad")
    assert code == 0 and list(written.var["gene_symbols"]) == named[:2]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_non_zero_with_one_line_naming_the_file(case, tmp_path, capsys):
    make, pattern = CASES[case]
    path = make(tmp_path)
    before = _files(tmp_path)
    code, out, err = run_cli(["enhance", path, "-o", tmp_path / "out.h5ad", *FAST], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stentrans: error: "), err
    assert re.search(pattern, lines[0]) and path.name in lines[0], lines[0]
    assert _files(tmp_path) == before


def test_output_equal_to_input_is_refused(slide_file, capsys):
    original = slide_file.read_bytes()
    code, _, err = run_cli(["enhance", slide_file, "-o", slide_file, "--overwrite", *FAST], capsys)
    assert code == 2 and "would overwrite or go inside the input" in err
    assert slide_file.read_bytes() == original


def test_existing_output_needs_overwrite(slide_file, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"previous")
    code, _, err = run_cli(["enhance", slide_file, "-o", out, *FAST], capsys)
    assert code == 2 and "out.h5ad: output exists; pass --overwrite" in err
    assert out.read_bytes() == b"previous"
    code, _, _ = run_cli(["enhance", slide_file, "-o", out, "--overwrite", *FAST], capsys)
    assert code == 0 and ad.read_h5ad(out).n_obs > 100


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mask", "missing.csv"], "missing.csv: mask file not found"),
        (["--model", "missing.safetensors"], "missing.safetensors: model file not found"),
        (["--save-model", "m.pt"], "m.pt: output must be a .safetensors file"),
        (["--epochs", "-3"], "epochs: -3 is not allowed"),
        (["--train-genes", "0"], "n_train_genes: 0 is not allowed"),
        (["--device", "tpu"], "device: 'tpu' is not allowed"),
        (["--keep-classical"], "--keep-classical applies to a model given with --model"),
        (["--genes", "NOPE"], "not in the slide"),
        (["-o", "no_such_dir/out.h5ad"], "does not exist"),
        (["-o", "out.csv"], "must be a .h5ad or .zarr file"),
    ],
)
def test_other_bad_arguments(slide_file, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    out_args = [] if "-o" in args else ["-o", "out.h5ad"]
    code, _, err = run_cli(["enhance", slide_file, *out_args, *args, "--quiet"], capsys)
    assert code == 2 and message in err
    assert _files(tmp_path) == before


def test_mask_file_marks_sites_as_imputed(slide_file, tmp_path, capsys):
    pd.DataFrame({"array_row": [4, 4], "array_col": [4, 5]}).to_csv(tmp_path / "lost.csv", index=False)
    code, _, _ = run_cli(
        ["enhance", slide_file, "-o", tmp_path / "o.h5ad", "--mask", tmp_path / "lost.csv", *FAST], capsys
    )
    assert code == 0
    obs = ad.read_h5ad(tmp_path / "o.h5ad").obs
    imputed = obs[obs["kind"] == "imputed"]
    assert sorted(zip(imputed["array_row"], imputed["array_col"], strict=True)) == [(8, 8), (8, 10)]


def test_console_script_is_installed_and_reports_usage():
    proc = subprocess.run(
        [sys.executable, "-m", "napari_stentrans.cli", "enhance"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "required" in proc.stderr


REAL_SLIDES = [  # measured spots, near-empty spots (imputed)
    ("visium_mouse_muscle_mckellar2021/Vis7B_5dpi", "hex", 1011, 0),
    ("st_melanoma_thrane2018_mel1_rep2/mel1_rep2.h5ad", "square", 292, 1),
]


@pytest.mark.parametrize(
    ("relpath", "kind", "n_spots", "n_empty"), REAL_SLIDES, ids=[s[0].split("/")[0] for s in REAL_SLIDES]
)
def test_enhance_real_slides_from_the_command_line(relpath, kind, n_spots, n_empty, tmp_path, capsys):
    from helpers import shared_data_or_skip
    from napari_stentrans.core.io import read
    from napari_stentrans.core.lattice import Lattice

    path = shared_data_or_skip() / relpath
    out = tmp_path / "out.h5ad"
    code, _, err = run_cli(
        [
            "enhance",
            path,
            "-o",
            out,
            "--epochs",
            "1",
            "--train-genes",
            "200",
            "--genes",
            "40",
            "--quiet",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    result, source = ad.read_h5ad(out), read(path)
    measured = result.obs[result.obs["kind"] == "measured"]
    # a near-empty spot (melanoma: 6 counts against a median of 4,782) is imputed under its barcode
    near_empty = result.obs[(result.obs["kind"] == "imputed") & result.obs["barcode"].notna()]
    assert len(measured) == n_spots and len(near_empty) == n_empty
    assert set(measured["barcode"]) | set(near_empty["barcode"]) == set(source.obs_names)
    src = source.obs.loc[measured["barcode"]]
    np.testing.assert_array_equal(measured["array_row"], 2 * src["array_row"])
    np.testing.assert_array_equal(measured["array_col"], 2 * src["array_col"])
    new = result.obs[result.obs["kind"] == "new"]
    assert len(new) > 2 * n_spots
    lattice = Lattice(kind)
    assert lattice.contains(result.obs["array_row"], result.obs["array_col"]).all()
    # every new site is half a pitch (or a square cell's half diagonal) from a measured spot
    from scipy.spatial import cKDTree

    d, _ = cKDTree(lattice.physical(src["array_row"], src["array_col"])).query(
        lattice.physical(new["array_row"], new["array_col"], scale=2.0)
    )
    assert d.max() <= lattice.pitch_um * np.sqrt(0.5) + 1e-6
    rows = source.obs_names.get_indexer(measured["barcode"])
    np.testing.assert_allclose(
        result.obsm["spatial"][(result.obs["kind"] == "measured").to_numpy()],
        source.obsm["spatial"][rows],
        atol=2.0,
    )  # pixels; affine fit of the array


def test_preset_choices_are_the_engines_presets():
    from napari_stentrans.cli import _build_parser
    from napari_stentrans.core.config import PRESETS

    enhance_parser = _build_parser()._subparsers._group_actions[0].choices["enhance"]
    (action,) = [a for a in enhance_parser._actions if a.dest == "preset"]
    assert tuple(action.choices) == PRESETS and action.default == "default"


@pytest.mark.parametrize("error", ["ValueError('a bug')", "ZeroDivisionError('a bug')"])
def test_a_bug_inside_the_engine_exits_1_with_its_traceback(slide_file, tmp_path, error):
    """Only the engine's own errors become one-line messages; anything else is a bug and shows."""
    code = (
        "import sys\n"
        "from napari_stentrans.core.estimators import classical\n"
        "def broken(*args, **kwargs):\n"
        f"    raise {error}\n"
        "classical.choose_params_steps = broken\n"
        "from napari_stentrans.cli import main\n"
        f"sys.exit(main(['enhance', {str(slide_file)!r}, '-o', {str(tmp_path / 'out.h5ad')!r}, '--quiet']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "a bug" in proc.stderr and "stentrans: error" not in proc.stderr
    assert not (tmp_path / "out.h5ad").exists()


def test_config_errors_exit_2_before_the_slide_is_read(tmp_path, capsys):
    missing = tmp_path / "not_there.h5ad"  # reading it would fail: the option fails first
    code, _, err = run_cli(["enhance", missing, "-o", tmp_path / "o.h5ad", "--epochs", "-3"], capsys)
    assert code == 2 and err.strip() == (
        "stentrans: error: epochs: -3 is not allowed; expected an integer from 0 to 100000"
    )


def test_a_saved_model_on_another_slide_says_where_its_classical_choice_came_from(
    slide_file, tmp_path, capsys
):
    r, c = block_sites("square", 9, 12)
    other = tmp_path / "other.h5ad"
    make_slide(r, c, "square", n_genes=20, seed=11).write_h5ad(other)
    model = tmp_path / "m.safetensors"
    code, out, _ = run_cli(
        ["enhance", slide_file, "-o", tmp_path / "a.h5ad", "--save-model", model, "--quiet"], capsys
    )
    assert code == 0 and "classical estimate chosen on this slide: rank" in out
    code, out, _ = run_cli(["enhance", other, "-o", tmp_path / "b.h5ad", "--model", model, "--quiet"], capsys)
    assert code == 0 and "classical estimate re-chosen on this slide: rank" in out
    code, out, _ = run_cli(
        ["enhance", other, "-o", tmp_path / "c.h5ad", "--model", model, "--keep-classical", "--quiet"], capsys
    )
    assert code == 0 and "classical estimate kept from the slide the model was fitted on" in out
    kept = ad.read_h5ad(tmp_path / "c.h5ad").uns["stentrans"]
    assert kept["classical_choice"] == "kept from the slide the model was fitted on"
    assert kept["classical"] == ad.read_h5ad(tmp_path / "a.h5ad").uns["stentrans"]["classical"]


def test_mask_files_barcode_only_and_off_lattice_sites(slide_file, tmp_path, capsys):
    barcodes = tmp_path / "lost_barcodes.csv"
    barcodes.write_text("barcode\nbc44\nbc45\n")  # one column: no separator to sniff
    code, _, err = run_cli(
        ["enhance", slide_file, "-o", tmp_path / "o.h5ad", "--mask", barcodes, *FAST], capsys
    )
    assert code == 0, err
    obs = ad.read_h5ad(tmp_path / "o.h5ad").obs
    assert sorted(obs.loc[obs["kind"] == "imputed", "barcode"]) == ["bc44", "bc45"]
    hex_slide = tmp_path / "hex.h5ad"
    r, c = block_sites("hex", 8, 12)
    make_slide(r, c, "hex").write_h5ad(hex_slide)
    off = tmp_path / "off_lattice.csv"
    off.write_text("array_row,array_col\n3,4\n")  # row + col odd: no Visium site
    code, _, err = run_cli(
        ["enhance", hex_slide, "-o", tmp_path / "p.h5ad", "--mask", off, "--quiet"], capsys
    )
    assert code == 2 and err.startswith(f"stentrans: error: {off}: 1 site(s) are not on the hex lattice")
    assert not (tmp_path / "p.h5ad").exists()


def test_unknown_genes_are_refused_before_any_training(slide_file, tmp_path, capsys):
    code, _, err = run_cli(
        ["enhance", slide_file, "-o", tmp_path / "o.h5ad", "--preset", "transformer", "--genes", "NOPE,G1"],
        capsys,
    )
    assert code == 2 and "1 requested gene(s) not in the slide, e.g. 'NOPE'" in err
    assert "training" not in err and "spots" not in err  # no progress line: nothing was fitted


def test_evaluate_refuses_unknown_methods_before_printing(slide_file, capsys):
    code, out, err = run_cli(["evaluate", slide_file, "--methods", "linear,bogus"], capsys)
    assert code == 2 and out == "" and "--methods: unknown method(s) ['bogus']" in err


def test_evaluate_shows_the_training_of_learned_methods_on_stderr_unless_quiet(slide_file, capsys):
    """A learned method trained for minutes with nothing on screen, and `--quiet` was refused."""
    args = ["evaluate", slide_file, "--methods", "linear,transformer", "--epochs", "2", "--device", "cpu"]
    code, out, err = run_cli(args, capsys)
    assert code == 0
    lines = err.splitlines()
    assert all(line.startswith("stentrans: ") for line in lines)
    prepared = [line for line in lines if line.startswith("stentrans: transformer: ")]
    assert len(prepared) == 1 and "most variable genes" in prepared[0]
    assert re.search(r"training on cpu: \d+ steps", err)
    assert lines[-1].startswith("stentrans: training finished (best epoch ")
    assert "linear" not in err  # interpolation trains nothing: no lines of its own
    code_q, out_q, err_q = run_cli([*args, "--quiet"], capsys)
    assert code_q == 0 and err_q == ""
    # the table on stdout is the same (the seconds column aside)
    assert [row.split()[:-1] for row in out.splitlines()[:3]] == [
        row.split()[:-1] for row in out_q.splitlines()[:3]
    ]


def test_evaluate_of_every_method_says_first_which_ones_train(slide_file, capsys, monkeypatch):
    """A new user waited minutes per learned method (--genes 50 does not shorten training) with no
    word of why; `--methods` of the quick ones, or --quiet, leave the note out."""
    import napari_stentrans.core.evaluate as evaluate_module
    from napari_stentrans.core.errors import InputError

    def stop(*_args, **_kwargs):
        raise InputError("stopped before scoring")

    monkeypatch.setattr(evaluate_module, "evaluate", stop)
    code, out, err = run_cli(["evaluate", slide_file, "--genes", "50"], capsys)
    note, error = err.splitlines()
    assert code == 2 and out == "" and error == "stentrans: error: stopped before scoring"
    assert note.startswith("stentrans: note: every method is scored; transformer, published, residual_cnn ")
    assert "--methods default,nearest,linear,cubic,lowrank,lowrank_linear,lowrank_kernel " in note
    for quiet in (["--methods", "default,linear"], ["--quiet"]):
        code, _, err = run_cli(["evaluate", slide_file, *quiet], capsys)
        assert code == 2 and "note" not in err


def test_evaluate_passes_each_fit_event_with_its_method_name():
    from napari_stentrans.core.evaluate import evaluate

    adata = make_slide(*block_sites("square", 12, 12), "square", n_genes=20)
    seen: list[tuple[str, str]] = []
    evaluate(
        adata,
        methods=("linear", "residual_cnn"),
        device="cpu",
        progress=lambda name, event: seen.append((name, event.kind)),
    )
    by_method = {name: [kind for n, kind in seen if n == name] for name in ("linear", "residual_cnn")}
    assert by_method["linear"] == ["prepared", "finished"]
    assert by_method["residual_cnn"] == ["stage", "stage", "finished"]


@pytest.mark.parametrize("command", ["enhance", "evaluate"])
def test_an_unavailable_device_is_refused_even_when_the_preset_runs_no_network(
    command, slide_file, tmp_path, capsys
):
    """``--device cuda`` without CUDA stops with one line (exit 2) before any reading, writing nothing."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the device is available")
    before = _files(tmp_path)
    args = {"enhance": ["-o", tmp_path / "out.h5ad"], "evaluate": ["--json", tmp_path / "r.json"]}
    code, _, err = run_cli([command, slide_file, *args[command], "--device", "cuda"], capsys)
    assert code == 2
    assert "device 'cuda' requested but CUDA is not available" in err and err.count("\n") == 1
    assert _files(tmp_path) == before


def test_plot_titles_name_genes_by_symbol_and_count_spots_as_enhance_does():
    """`--plot` titled panels by Ensembl id on one line that ran into the next panel's title,
    and counted near-empty spots as measured where `enhance` says they are imputed."""
    from napari_stentrans.core.plotting import side_by_side_titles

    slide = make_slide(*block_sites("hex", 12, 24), "hex", n_genes=12)
    ids = [f"ENSG{i:011d}" for i in range(slide.n_vars)]
    slide.var["gene_symbols"] = slide.var_names.to_numpy()
    slide.var_names = ids
    slide.X = 100 * np.asarray(slide.X.todense() if hasattr(slide.X, "todense") else slide.X, np.float32)
    slide.X[:2] = 0  # two spots without counts
    slide.X[2] = 0
    slide.X[2, 0] = 1  # one near-empty spot (1 count against thousands)
    enhanced = ad.AnnData(
        np.zeros((4 * slide.n_obs, 2), np.float32), uns={"stentrans": {"preset": "default"}}
    )
    titles = side_by_side_titles(slide, enhanced, ids[:2])
    symbol = slide.var["gene_symbols"].iloc[0]
    assert titles[0] == (
        f"{symbol}\nmeasured ({slide.n_obs - 3:,} spots)",
        f"{symbol}\n2x, default ({4 * slide.n_obs:,} sites, 3 imputed)",
    )
    plain = make_slide(
        *block_sites("hex", 12, 24), "hex", n_genes=12
    )  # var names are the symbols; every spot counted
    assert side_by_side_titles(plain, enhanced, [plain.var_names[1]])[0][0] == (
        f"{plain.var_names[1]}\nmeasured ({plain.n_obs:,} spots)"
    )
    # an output's kinds win: spots masked as lost are imputed too (the input's depth cannot say)
    enhanced.obs["kind"] = ["measured"] * (slide.n_obs - 8) + ["imputed"] * 8 + ["new"] * (3 * slide.n_obs)
    assert side_by_side_titles(slide, enhanced, ids[:1])[0] == (
        f"{symbol}\nmeasured ({slide.n_obs - 8:,} spots)",
        f"{symbol}\n2x, default ({4 * slide.n_obs:,} sites, 8 imputed)",
    )
    enhanced.obs["kind"] = ["measured"] * (slide.n_obs - 1) + ["imputed"] + ["new"] * (3 * slide.n_obs)
    assert (
        side_by_side_titles(slide, enhanced, ids[:1])[0][0]
        == f"{symbol}\nmeasured ({slide.n_obs - 1:,} spots)"
    )
