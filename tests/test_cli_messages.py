"""The CLI's words for a new user: progress in a log file, ``info``'s lines, and one-line errors
that name the file at fault (a mistyped ``--library``, a model of another lattice, a counts table
with no counts) and say what to do."""

from __future__ import annotations

import io
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from helpers import (
    block_sites,
    fit_network,
    make_slide,
    one_error_line,
    run_cli,
    tiny_config,
    write_spaceranger,
)
from napari_stentrans.cli import _ProgressBar, _show_warning, main
from napari_stentrans.core.estimators.base import TrainEvent

FAST = ["--epochs", "1", "--train-genes", "16", "--device", "cpu"]


def _events(n_epochs: int, n_steps: int):
    """A fit's events as the trainer yields them: prepared, steps and an epoch per epoch, finished."""

    def event(kind, epoch, step, loss, message="", elapsed=0.1):
        best = None if kind == "prepared" else 0.5
        return TrainEvent(
            kind, epoch, n_epochs, step, n_steps, loss, None, best, elapsed, None, "cpu", message
        )

    yield event("prepared", 0, 0, None, "100 spots, 16 training genes", 0.0)
    for epoch in range(1, n_epochs + 1):
        for step in range(1, n_steps + 1):
            yield event("step", epoch, step, 1.0 / epoch)
        yield event("epoch", epoch, n_steps, 1.0 / epoch)
    yield event("finished", n_epochs, n_steps, None, "best epoch 3", 1.5)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ----------------------------------------------------------------------------- 1. progress


def test_progress_into_a_log_file_is_a_few_plain_lines():
    log = io.StringIO()  # not a terminal: as with 2>log
    bar = _ProgressBar(disabled=False, stream=log)
    for event in _events(n_epochs=40, n_steps=25):  # 1,000 steps
        bar.update(event)
    bar.close()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert len(lines) <= 13, lines  # message, start, one per tenth, finished
    assert lines[0] == "stentrans: 100 spots, 16 training genes"
    assert lines[1] == "stentrans: training on cpu: 1000 steps"
    assert lines[2].startswith(
        "stentrans: training 100/1000 steps (10%), epoch 4, loss 0.2500, best val 0.5000 (the start)"
    )
    assert lines[-1] == "stentrans: training finished (best epoch 3, 1.5 s)"
    assert all(line.startswith("stentrans: ") for line in lines)


def test_progress_lines_show_the_last_epochs_own_validation_beside_the_best():
    """Every line showed 'best val 0.1724' while the epochs scored 0.1766 and 0.1763: a user could
    not see why nothing improved. Each line after an epoch now gives that epoch's own loss."""
    log = io.StringIO()
    bar = _ProgressBar(disabled=False, stream=log)

    def event(kind, epoch, step, loss=None, val=None, text=""):
        return TrainEvent(kind, epoch, 3, step, 10, loss, val, 0.1724, 0.1, None, "cpu", text)

    bar.update(event("prepared", 0, 0, text="100 spots"))
    for epoch, val in ((1, 0.1766), (2, 0.1763), (3, 0.1770)):
        for step in range(1, 11):
            bar.update(event("step", epoch, step, loss=0.3))
        bar.update(event("epoch", epoch, 10, loss=0.3, val=val))
    bar.update(event("finished", 3, 10, text="best epoch 0: no epoch beat the start on the held-out genes"))
    bar.close()
    lines = log.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("stentrans: training ") and "steps (" in line]
    first = [line for line in steps if ", epoch 1, " in line]
    # no epoch scored yet; and none beat the start, which the best is then said to be
    assert first and all("loss 0.3000, best val 0.1724 (the start), " in line for line in first)
    assert any("loss 0.3000, val 0.1766 (epoch 1), best val 0.1724 (the start), " in line for line in steps)
    assert any("val 0.1763 (epoch 2), best val 0.1724 (the start)" in line for line in steps)
    # an epoch that beats the start is named as the best
    bar = _ProgressBar(disabled=False, stream=io.StringIO())
    bar.update(event("prepared", 0, 0, text="100 spots"))
    bar.update(event("epoch", 1, 10, loss=0.3, val=0.1724))
    for step in range(1, 5):  # a line per tenth of the 30 steps
        bar.update(event("step", 2, step, loss=0.3))
    assert "val 0.1724 (epoch 1), best val 0.1724 (epoch 1), " in bar.stream.getvalue()
    assert lines[-1].startswith("stentrans: training finished (best epoch 0: no epoch beat the start on the ")
    # the last epoch is scored after the last step's line: its own line says its loss
    assert lines[-2] == "stentrans: epoch 3 of 3: val 0.1770, best val 0.1724 (the start)"


def test_a_classical_fit_says_it_trained_nothing_without_calling_it_training():
    """The default fits no network: its last line said 'training finished (nothing to train)'."""
    from napari_stentrans.core.config import preset
    from napari_stentrans.core.fitting import Trainer

    log = io.StringIO()
    bar = _ProgressBar(disabled=False, stream=log)
    r, c = block_sites("square", 10, 10)
    for event in Trainer(make_slide(r, c, "square"), preset("default", "square"), device="cpu").run():
        bar.update(event)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[-1].startswith("stentrans: fit finished (no network to train, ") and lines[-1].endswith(
        " s)"
    )
    assert not any("training" in line for line in lines), lines


def _stage_events():
    from napari_stentrans.core.estimators.base import stage_event

    what = "choosing rank and smoothers on 4 coset pairs"
    yield stage_event("normalising 16 genes at 100 spots", 0, 1, 0.0)
    yield stage_event("normalising 16 genes at 100 spots", 1, 1, 0.1)
    for done in range(5):
        yield stage_event(what, done, 4, 0.2 + done)


def test_stages_before_training_are_one_line_each_in_a_log_and_a_bar_on_a_terminal():
    log = io.StringIO()
    bar = _ProgressBar(disabled=False, stream=log)
    for event in [*_stage_events(), *_events(n_epochs=1, n_steps=2)]:
        bar.update(event)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[:3] == [
        "stentrans: normalising 16 genes at 100 spots...",  # the first: no "(from 0.0 s)"
        "stentrans: choosing rank and smoothers on 4 coset pairs... (from 0.2 s)",
        "stentrans: 100 spots, 16 training genes",
    ]
    screen = _Terminal()
    bar = _ProgressBar(disabled=False, stream=screen)
    for event in _stage_events():
        bar.update(event)
    assert bar.stage_bar is None  # closed at 4/4, its line printed
    bar.close()
    text = screen.getvalue()
    assert "choosing rank and smoothers on 4 coset pairs" in text and "3/4" in text  # the bar
    assert "stentrans: choosing rank and smoothers on 4 coset pairs: 4/4 (4.2 s)\n" in text


def test_a_warning_during_the_bar_is_printed_on_its_own_line(monkeypatch):
    from napari_stentrans.core.io.common import OptionalPartWarning

    screen = _Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    bar = _ProgressBar(disabled=False, stream=screen)
    events = _events(n_epochs=2, n_steps=5)
    for _ in range(4):
        bar.update(next(events))
    assert _ProgressBar.active is bar
    _show_warning(OptionalPartWarning("a part is missing"), OptionalPartWarning, "x.py", 1)
    for event in events:
        bar.update(event)
    bar.close()
    assert _ProgressBar.active is None
    text = screen.getvalue()
    # tqdm clears the bar (carriage return) before the line: it starts a line of its own
    assert (
        "\rstentrans: warning: a part is missing\n" in text
        or "\nstentrans: warning: a part is missing\n" in text
    )
    assert "\rstentrans: training finished (best epoch 3, 1.5 s)\n" in text or text.endswith(
        "\nstentrans: training finished (best epoch 3, 1.5 s)\n"
    )


def test_enhance_with_stderr_redirected_writes_no_bar(tmp_path, capsys):
    r, c = block_sites("square", 10, 10)
    make_slide(r, c, "square", n_genes=20).write_h5ad(tmp_path / "slide.h5ad")
    code, out, err = run_cli(
        [
            "enhance",
            tmp_path / "slide.h5ad",
            "-o",
            tmp_path / "out.h5ad",
            *FAST[2:],
            "--epochs",
            "3",
            "--train-genes",
            "16",
        ],
        capsys,
    )
    assert code == 0 and out.startswith("wrote ")
    assert "\r" not in err and "%|" not in err  # no tqdm animation in a captured stderr
    training = [line for line in err.splitlines() if line.startswith("stentrans: training")]
    assert training[0].startswith("stentrans: training on cpu: ") and "finished" in training[-1]
    # one line per stage (16 training genes are not the default's: two classical fits of four
    # stages each), one per step, the last epoch's loss: no flood
    assert len(err.splitlines()) <= 18


# ----------------------------------------------------------------------------- 2. info


def _slide_with_empty_spots(tmp_path, n_empty=3):
    r, c = block_sites("hex", 8, 16)
    adata = make_slide(r, c, "hex", n_genes=12)
    x = adata.X.toarray()
    x[:n_empty] = 0
    adata.X = sp.csr_matrix(x)
    adata.uns["spatial"] = {
        "libA": {
            "images": {"lowres": np.zeros((8, 8, 3), np.uint8)},
            "scalefactors": {"spot_diameter_fullres": 5.0, "tissue_lowres_scalef": 0.1},
        }
    }
    path = tmp_path / "slide.h5ad"
    adata.write_h5ad(path)
    return path, adata


def test_info_says_images_and_spots_without_counts_in_words(tmp_path, capsys):
    path, adata = _slide_with_empty_spots(tmp_path)
    code, out, _ = run_cli(["info", path], capsys)
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert code == 0
    assert lines["images"].strip() == "lowres (libA)"
    assert lines["spots"].strip().startswith(f"{adata.n_obs} (3 without counts, imputed); array_row")
    assert "{" not in out and "[" not in out  # no Python dict or list
    assert "coords" not in lines  # array_row/array_col given: nothing rebuilt


def test_info_names_near_empty_spots_so_the_imputed_count_adds_up(tmp_path, capsys):
    path, adata = _slide_with_empty_spots(tmp_path)
    x = adata.X.toarray() * 1000.0  # a median depth in the thousands, as on a real slide
    x[3] = 0
    x[3, 0] = 1  # one count: far below 0.5 % of the median depth, not used as input
    adata.X = sp.csr_matrix(x)
    adata.write_h5ad(path)
    code, out, _ = run_cli(["info", path], capsys)
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert code == 0
    assert (
        lines["spots"]
        .strip()
        .startswith(
            f"{adata.n_obs} (3 without counts, imputed; 1 with fewer than 0.5% of the median depth, imputed);"
        )
    )
    # the same words as the spots line: 3 + 1 make the 4
    assert ", 4 imputed (3 spots without counts, 1 near-empty spot), " in lines["2x output"]
    # a site enclosed by measured spots without a spot of its own is imputed too, and named
    r, c = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    inner = np.argmin((r - np.median(r)) ** 2 + (c - np.median(c)) ** 2)
    holed = adata[np.arange(adata.n_obs) != inner].copy()
    holed.write_h5ad(tmp_path / "holed.h5ad")
    code, out, _ = run_cli(["info", tmp_path / "holed.h5ad"], capsys)
    lines = dict(line.split(":", 1) for line in out.splitlines())
    # ... and why: an .h5ad has no tissue mask, so a tear or lumen would be filled too
    assert (
        ", 5 imputed (3 spots without counts, 1 near-empty spot, 1 enclosed by measured spots: this "
        "input has no tissue mask, so a tear, fold or lumen enclosed by tissue is imputed too; "
        "--no-fill-holes leaves such sites empty), " in (lines["2x output"])
    )
    # enhance says it once, and not when the holes are left empty
    out_path = tmp_path / "x2.h5ad"
    code, out, _ = run_cli(["enhance", tmp_path / "holed.h5ad", "-o", out_path, "--genes", "2"], capsys)
    assert code == 0
    assert "note: 1 site enclosed by measured spots imputed: this input has no tissue mask" in out
    code, out, _ = run_cli(
        ["enhance", tmp_path / "holed.h5ad", "-o", tmp_path / "x2b.h5ad", "--genes", "2", "--no-fill-holes"],
        capsys,
    )
    assert code == 0 and "4 imputed" in out and "enclosed by measured spots" not in out


def test_info_without_images_says_none_and_when_the_lattice_was_rebuilt(tmp_path, capsys):
    r, c = block_sites("square", 6, 6)
    adata = make_slide(r, c, "square", n_genes=8)
    adata.obsm["spatial"] = np.column_stack([c, r]).astype(float) * 30.0
    adata.obs = adata.obs.drop(columns=["array_row", "array_col"])
    adata.uns["spatial"] = {"X": {"images": {}, "scalefactors": {"spot_diameter_fullres": 5.0}}}
    adata.write_h5ad(tmp_path / "positions_only.h5ad")
    code, out, _ = run_cli(["info", tmp_path / "positions_only.h5ad"], capsys)
    assert code == 0
    assert "images:    none\n" in out
    assert "coords:    rebuilt from obsm['spatial'] (obs has no array_row/array_col)\n" in out


def test_info_names_the_coordinates_file_of_a_counts_table(tmp_path, capsys):
    r, c = block_sites("square", 6, 6)
    adata = make_slide(r, c, "square", n_genes=8)
    table = adata.to_df().astype(int)
    table.index = [f"s{i}" for i in range(adata.n_obs)]
    table.to_csv(tmp_path / "counts.csv")
    import pandas as pd

    pd.DataFrame({"spot": table.index, "x": c, "y": r}).to_csv(tmp_path / "coords.csv", index=False)
    code, out, _ = run_cli(["info", tmp_path / "counts.csv"], capsys)
    assert code == 0 and f"coords:    from {tmp_path / 'coords.csv'}\n" in out
    table.index = [f"{x}x{y}" for x, y in zip(c, r, strict=True)]
    (tmp_path / "ids").mkdir()
    table.to_csv(tmp_path / "ids" / "counts.csv")
    code, out, _ = run_cli(["info", tmp_path / "ids" / "counts.csv"], capsys)
    assert code == 0 and "coords:    from the spot ids ('{x}x{y}'); no coordinates file\n" in out


def test_info_of_an_enhanced_file_counts_the_model_training_genes(tmp_path, capsys, monkeypatch):
    r, c = block_sites("square", 10, 10)
    make_slide(r, c, "square", n_genes=30).write_h5ad(tmp_path / "slide.h5ad")
    out_path = tmp_path / "out.h5ad"
    code, _, _ = run_cli(
        ["enhance", tmp_path / "slide.h5ad", "-o", out_path, "--genes", "G0,G1,G2", "--quiet", *FAST], capsys
    )
    assert code == 0
    result = ad.read_h5ad(out_path)
    n_training = int(result.uns["stentrans"]["n_training_genes"])
    among = int(result.var["training_gene"].sum())
    # 16 training genes when the gate keeps the network, the default's 30 when it falls back to it
    assert n_training in (16, 30) and result.n_vars == 3
    code, out, _ = run_cli(["info", out_path], capsys)
    assert code == 0
    # a refused network leaves the default's classical estimate: nothing of it was trained
    kept = result.uns["stentrans"]["model"]["estimator"] != "classical"
    what = "its network was trained on" if kept else "its low-rank basis was fitted on"
    held = " (less those held out to validate it)" if kept else ""
    which = "all 3 of these among them" if among == 3 else f"{among or 'none'} of these 3 among them"
    assert f"genes:     3 enhanced; {what} the {n_training} most variable genes{held}, {which}\n" in out
    network = fit_network(ad.read_h5ad(tmp_path / "slide.h5ad"), tiny_config())  # kept whatever the gate says
    network.write(ad.read_h5ad(tmp_path / "slide.h5ad"), tmp_path / "n.h5ad", genes=["G0"], device="cpu")
    code, out, _ = run_cli(["info", tmp_path / "n.h5ad"], capsys)
    assert code == 0 and (
        "genes:     1 enhanced; its network was trained on the 16 most variable genes (less those held "
        "out to validate it), " in out
    )
    one = ad.read_h5ad(tmp_path / "n.h5ad").var["training_gene"].iloc[0]
    assert out.split("validate it), ")[1].startswith(
        "this gene among them\n" if one else "this gene not among them\n"
    )
    run_cli(
        ["enhance", tmp_path / "slide.h5ad", "-o", tmp_path / "d.h5ad", "--genes", "G0,G1", "--quiet"], capsys
    )
    code, out, _ = run_cli(["info", tmp_path / "d.h5ad"], capsys)
    assert code == 0 and "genes:     2 enhanced; its low-rank basis was fitted on the " in out
    # an output is described from its sites, genes and provenance: its values stay on disk
    import napari_stentrans.cli as cli

    def whole_read(_args):
        raise AssertionError("info read the whole enhanced file")

    monkeypatch.setattr(cli, "_read_input", whole_read)
    code, described, _ = run_cli(["info", tmp_path / "d.h5ad"], capsys)
    from napari_stentrans.core.io import read

    whole = cli._describe_enhanced(tmp_path / "d.h5ad", read(tmp_path / "d.h5ad"))  # as the whole file says
    assert code == 0 and described == out == whole + "\n"
    assert "images:    none\n" in out
    assert (
        "counts:    each gene scaled to its measured counts within about 1 input spot pitch of every site"
        in out
    )
    del result.uns["stentrans"]["n_training_genes"]  # as in files of older versions
    del result.uns["stentrans"]["count_level"]
    result.write_h5ad(tmp_path / "older.h5ad")
    code, out, _ = run_cli(["info", tmp_path / "older.h5ad"], capsys)
    assert code == 0 and f"genes:     3 enhanced ({among} of them training genes of the model)\n" in out
    assert "counts:    not calibrated (written before count calibration)\n" in out


# ----------------------------------------------------------------------------- 3. --library


@pytest.fixture
def spaceranger_folder(tmp_path):
    r, c = block_sites("hex", 6, 12)
    adata = make_slide(r, c, "hex", n_genes=10)
    adata.obs_names = [f"AAAC{i:04d}-1" for i in range(adata.n_obs)]
    folder = tmp_path / "Vis5A"
    write_spaceranger(folder, adata, matrix="h5", positions="csv")
    return folder


def test_a_mistyped_library_on_a_space_ranger_folder_is_refused(spaceranger_folder, tmp_path, capsys):
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for command in (
        ["info", spaceranger_folder, "--library", "nope"],
        ["enhance", spaceranger_folder, "--library", "nope", "-o", tmp_path / "out.h5ad", "--quiet", *FAST],
    ):
        code, out, err = run_cli(command, capsys)
        line = one_error_line(err)
        assert code == 2 and out == ""
        assert line == (
            f"stentrans: error: {spaceranger_folder}: this folder holds one library, Vis5A; --library "
            "names the library of a multi-library .h5ad: leave it out here (--library 'nope' does not match)"
        )
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    # its own name is accepted, and the Python API still files the library under the name given
    code, out, _ = run_cli(["info", spaceranger_folder, "--library", "Vis5A"], capsys)
    assert code == 0 and "path:" in out
    from napari_stentrans.core.io import read

    assert list(read(spaceranger_folder, library="renamed").uns["spatial"]) == ["renamed"]


# ----------------------------------------------------------------------------- 4. model lattice


def test_a_model_of_another_lattice_is_refused_naming_the_model_file(tmp_path, capsys):
    r, c = block_sites("hex", 8, 16)
    make_slide(r, c, "hex", n_genes=20).write_h5ad(tmp_path / "visium.h5ad")
    model = tmp_path / "m1.safetensors"
    code, _, _ = run_cli(
        [
            "enhance",
            tmp_path / "visium.h5ad",
            "-o",
            tmp_path / "a.h5ad",
            "--save-model",
            model,
            "--quiet",
            *FAST,
        ],
        capsys,
    )
    assert code == 0
    r, c = block_sites("square", 8, 8)
    make_slide(r, c, "square", n_genes=20).write_h5ad(tmp_path / "st.h5ad")
    code, _, err = run_cli(
        ["enhance", tmp_path / "st.h5ad", "-o", tmp_path / "b.h5ad", "--model", model], capsys
    )
    line = one_error_line(err)
    assert code == 2 and not (tmp_path / "b.h5ad").exists()
    assert line.startswith(
        f"stentrans: error: {model}: this model was fitted on a hex lattice (Visium) but "
        f"{tmp_path / 'st.h5ad'} is on a square lattice (legacy ST, 1k)"
    )
    assert "enhance without --model" in line


# ----------------------------------------------------------------------------- 6. small ones


def test_evaluate_help_explains_seed_and_device(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED random seed" in text
    assert "--device DEVICE auto (default), cpu, cuda" in text
    assert (
        "(signal) the same against the truth's correlations without Poisson noise (count splitting)" in text
    )


@pytest.mark.parametrize("content", ["hello\n", "gene\n", "spot,G1\n"])
def test_a_table_without_numbers_says_it_has_no_counts(tmp_path, capsys, content):
    path = tmp_path / "word.txt"
    path.write_text(content)
    code, _, err = run_cli(["info", path], capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"stentrans: error: {path}: no counts: ")
    assert "(0 x 0)" not in line and "empty counts table" not in line


def test_the_parquet_advice_names_pyarrow_not_an_extra():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert '".[parquet]"' not in readme and "pip install pyarrow" in readme


def test_warnings_still_print_as_one_line_without_a_bar(capsys):
    from napari_stentrans.core.io.common import OptionalPartWarning

    with warnings.catch_warnings():
        _show_warning(OptionalPartWarning("x"), OptionalPartWarning, "f.py", 1)
    assert capsys.readouterr().err == "stentrans: warning: x\n"


def test_enhance_says_when_the_patterns_were_not_judged(tmp_path, capsys):
    """With 3 genes there is no verdict on shared patterns: the CLI says so instead of staying silent."""
    r, c = block_sites("square", 8, 8)
    make_slide(r, c, "square").write_h5ad(tmp_path / "s.h5ad")
    code, out, err = run_cli(
        ["enhance", tmp_path / "s.h5ad", "-o", tmp_path / "o.h5ad", "--genes", "3", "--quiet"], capsys
    )
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("patterns: "))  # one line, numbers first
    assert line.startswith("patterns: effective rank ") and line.endswith(
        "variable genes; not judged: only 3 genes (at least 5 are needed to judge patterns)"
    )
    patterns = ad.read_h5ad(tmp_path / "o.h5ad").uns["stentrans"]["patterns"]
    rank = f"(measured {patterns['measured_effective_rank']:.1f}, "
    assert f"{rank}or {patterns['measured_signal_effective_rank']:.1f} without its Poisson noise)" in line
    assert sum(x.startswith("patterns") for x in out.splitlines()) == 1
    assert "patterns" not in err
    assert (
        ad.read_h5ad(tmp_path / "o.h5ad")
        .uns["stentrans"]["patterns"]["not_judged"]
        .startswith("only 3 genes")
    )
    # with 2 genes it said "only 2 genes or 64 measured spots": which limit applied was unclear
    code, out, _ = run_cli(
        ["enhance", tmp_path / "s.h5ad", "-o", tmp_path / "two.h5ad", "--genes", "2", "--quiet"], capsys
    )
    line = next(x for x in out.splitlines() if x.startswith("patterns: "))
    assert (
        code == 0 and line == "patterns: not judged: only 2 genes (at least 5 are needed to judge patterns)"
    )


def test_library_on_a_visium_hd_top_folder_still_names_its_bin_folders(tmp_path, capsys):
    """A Visium HD outs/ folder has no count matrix: the message must point at its bins, whatever --library says."""
    from napari_stentrans.synthetic import write_visium_hd

    write_visium_hd(tmp_path / "outs", n_genes=10)
    code, _, err = run_cli(["info", tmp_path / "outs", "--library", "anything"], capsys)
    assert code == 2
    assert "a Visium HD output" in one_error_line(err) and "binned_outputs/square_016um" in err


# ----------------------------------------------------------------------------- new-user trial


def _cli_process(args, stdout):
    """``python -m napari_stentrans.cli ARGS`` with this checkout's source, stderr captured."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    command = [sys.executable, "-m", "napari_stentrans.cli", *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.PIPE)


def test_a_refused_networks_note_comes_before_the_classical_estimate_it_explains(
    tmp_path, capsys, monkeypatch
):
    """A user read `classical estimate chosen on this slide: ...` after a `--preset transformer`
    run before the `note:` that said why the output is the classical estimate."""
    from napari_stentrans.core.estimators.learned import NOT_KEPT, NOTHING_LEARNED
    from napari_stentrans.core.training import TrainResult

    monkeypatch.setattr(TrainResult, "beats_baseline", lambda self, restore_best=True: False)  # refused
    r, c = block_sites("square", 10, 10)
    make_slide(r, c, "square", n_genes=20).write_h5ad(tmp_path / "slide.h5ad")
    command = ["enhance", tmp_path / "slide.h5ad", "-o", tmp_path / "out.h5ad", "--preset", "transformer"]
    code, out, _ = run_cli([*command, *FAST, "--quiet"], capsys)
    lines = out.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("note: "))
    classical = next(i for i, line in enumerate(lines) if line.startswith("classical estimate chosen"))
    assert code == 0 and lines[note] in (f"note: {NOT_KEPT}", f"note: {NOTHING_LEARNED}")
    assert lines[note - 1].startswith("wrote ") and note < classical


def test_info_of_a_refused_networks_output_says_why_it_is_the_default(tmp_path, capsys):
    """A learned preset whose network was not kept wrote the default's estimate: ``info`` says
    so beside the preset's name, not only the file's metadata."""
    from helpers import fit_cpu, tiny_config
    from napari_stentrans.core.estimators.learned import NOTHING_LEARNED

    r, c = block_sites("square", 10, 10)
    adata = make_slide(r, c, "square", n_genes=20)
    fallback = fit_cpu(adata, tiny_config(lr=1e-12, weight_decay=0.0))  # cannot move: best epoch 0
    fallback.enhance(adata).write_h5ad(tmp_path / "out.h5ad")
    code, out, _ = run_cli(["info", tmp_path / "out.h5ad"], capsys)
    assert code == 0 and "(preset transformer)" in out
    assert f"note:      {NOTHING_LEARNED}\n" in out
    fit_cpu(adata, "default").enhance(adata).write_h5ad(tmp_path / "default.h5ad")
    code, out, _ = run_cli(["info", tmp_path / "default.h5ad"], capsys)
    assert code == 0 and "note:" not in out


def test_info_into_a_reader_that_left_ends_quietly(tmp_path):
    """``stentrans info SLIDE | head -1``: the reader leaves; no traceback, exit 141 (as SIGPIPE)."""
    import os

    r, c = block_sites("square", 6, 6)
    make_slide(r, c, "square").write_h5ad(tmp_path / "s.h5ad")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before the first line: the write must fail (EPIPE)
    try:
        proc = _cli_process(["info", tmp_path / "s.h5ad"], write_end)
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert err == b""


def test_info_read_one_line_through_a_real_pipe_then_closed(tmp_path):
    """The ``head -1`` pattern itself: read one line, close; the first line is the path, and
    whether the rest was still being written or not, no traceback."""
    import subprocess

    r, c = block_sites("square", 6, 6)
    make_slide(r, c, "square").write_h5ad(tmp_path / "s.h5ad")
    proc = _cli_process(["info", tmp_path / "s.h5ad"], subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert first == f"path:      {tmp_path / 's.h5ad'}\n".encode()
    assert proc.returncode in (0, 141) and b"Traceback" not in err and b"BrokenPipe" not in err


def _slide_with_symbols(n_genes: int = 24) -> ad.AnnData:
    r, c = block_sites("square", 8, 8)
    adata = make_slide(r, c, "square", n_genes=n_genes)
    adata.var_names = ["MBP", "PCP4", "GFAP", *(f"GENE{g}" for g in range(3, n_genes))]
    return adata


@pytest.mark.parametrize("from_file", [False, True])
def test_unknown_genes_name_the_option_and_the_name_meant(tmp_path, capsys, from_file):
    """``--genes mbp,PCP44``: the error names --genes (or its @FILE) and suggests MBP (same name in
    another case) and PCP4 (closest spelling); a name like no gene gets no suggestion."""
    _slide_with_symbols().write_h5ad(tmp_path / "s.h5ad")
    spec = "mbp,PCP44,XYZZY"
    if from_file:
        (tmp_path / "genes.txt").write_text(spec.replace(",", "\n"))
        spec = f"@{tmp_path / 'genes.txt'}"
    out = tmp_path / "o.h5ad"
    code, _, err = run_cli(["enhance", tmp_path / "s.h5ad", "-o", out, "--genes", spec, "--quiet"], capsys)
    assert code == 2 and not out.exists()
    assert one_error_line(err) == (
        f"stentrans: error: --genes{' ' + spec if from_file else ''}: 3 requested gene(s) not in the "
        "slide, e.g. 'mbp' (did you mean 'MBP'? gene names are case-sensitive), 'PCP44' (did you mean "
        "'PCP4'?), 'XYZZY'"
    )


def test_unknown_genes_suggest_the_name_meant_in_python_too():
    from napari_stentrans import enhance
    from napari_stentrans.core.errors import InputError

    with pytest.raises(InputError, match=r"e\.g\. 'gfap' \(did you mean 'GFAP'\? gene names are case"):
        enhance(_slide_with_symbols(), genes=["gfap"])


def test_every_reference_error_starts_with_the_option_and_its_path(tmp_path, capsys):
    """Missing, unreadable, another lattice, the slide itself: ``--reference PATH: ...``, one
    line, exit 2, nothing written."""
    slide = tmp_path / "slide.h5ad"
    make_slide(*block_sites("hex", 10, 16), "hex").write_h5ad(slide)
    square, garbage = tmp_path / "square.h5ad", tmp_path / "garbage.h5ad"
    make_slide(*block_sites("square", 8, 8), "square").write_h5ad(square)
    garbage.write_text("not a slide\n")
    cases = {
        tmp_path / "missing.h5ad": "no such file or folder",
        garbage: "cannot be read",
        square: "on a square lattice but the slide is hex: give reference slides of the same technology",
        slide: "the slide being enhanced itself (same fingerprint ",
    }
    out = tmp_path / "o.h5ad"
    for reference, problem in cases.items():
        args = ["enhance", slide, "-o", out, "--reference", reference, "--quiet"]
        code, stdout, err = run_cli(args, capsys)
        assert code == 2 and stdout == ""
        assert one_error_line(err).startswith(f"stentrans: error: --reference {reference}: {problem}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.h5ad", "slide.h5ad", "square.h5ad"]


def test_reference_errors_in_python_name_the_reference_once():
    from napari_stentrans import enhance
    from napari_stentrans.core.errors import InputError

    square = make_slide(*block_sites("square", 8, 8), "square")
    with pytest.raises(InputError, match=r"^reference 1: on a square lattice but the slide is hex"):
        enhance(make_slide(*block_sites("hex", 10, 16), "hex"), reference=[square])


def test_evaluate_refuses_a_near_copy_reference_before_printing_anything(tmp_path, capsys):
    """The table header came out on stdout before the (correct) refusal: nothing on stdout now."""
    adata = make_slide(*block_sites("square", 16, 18), "square", n_genes=60)
    adata.write_h5ad(tmp_path / "s.h5ad")
    near_copy = adata.copy()
    near_copy.obs_names = [f"x{i}" for i in range(adata.n_obs)]  # same spots under other barcodes
    near_copy = near_copy[: adata.n_obs - 3].copy()
    near_copy.write_h5ad(tmp_path / "near.h5ad")
    report = tmp_path / "r.json"
    code, stdout, err = run_cli(
        ["evaluate", tmp_path / "s.h5ad", "--methods", "default", "--reference", tmp_path / "near.h5ad"]
        + ["--json", report],
        capsys,
    )
    assert code == 2 and stdout == ""
    assert one_error_line(err).startswith(
        f"stentrans: error: --reference {tmp_path / 'near.h5ad'}: holds {adata.n_obs - 3} of the evaluated "
        "slide's spots"
    )
    assert not report.exists()


def test_the_default_describes_its_classical_choice_once(tmp_path, capsys):
    """`stentrans enhance` printed the whole classical choice twice: on the progress line
    (stderr) and on the summary (stdout); the progress line now names only the rank."""
    r, c = block_sites("square", 10, 10)
    make_slide(r, c, "square", n_genes=20).write_h5ad(tmp_path / "slide.h5ad")
    code, out, err = run_cli(["enhance", tmp_path / "slide.h5ad", "-o", tmp_path / "out.h5ad"], capsys)
    summary = ad.read_h5ad(tmp_path / "out.h5ad").uns["stentrans"]["classical_summary"]
    rank = ad.read_h5ad(tmp_path / "out.h5ad").uns["stentrans"]["classical"]["rank"]
    assert code == 0 and (out + err).count(summary) == 1
    assert f"classical estimate chosen on this slide: {summary}\n" in out
    assert f"genes; classical estimate chosen (rank {rank})\n" in err
    # the write has its own progress line (a large slide's took seconds of silence after the fit)
    n_sites, n_genes = ad.read_h5ad(tmp_path / "out.h5ad").shape
    assert f"stentrans: writing {n_genes} genes at {n_sites} sites...\n" in err
    command = ["enhance", tmp_path / "slide.h5ad", "-o", tmp_path / "quiet.h5ad", "--quiet"]
    code, _, err = run_cli(command, capsys)
    assert code == 0 and "writing" not in err


def test_info_says_how_many_of_an_outputs_genes_the_model_trained_on_in_words():
    """`info` said "4 of them among these 4" and "0 of them among these 1"."""
    from napari_stentrans.cli import _among

    assert _among(1, 1) == "this gene among them" and _among(0, 1) == "this gene not among them"
    assert _among(4, 4) == "all 4 of these among them" and _among(0, 5) == "none of these 5 among them"
    assert _among(2000, 7595) == "2000 of these 7595 among them"


def test_a_terminal_without_a_size_gets_plain_lines(monkeypatch):
    """tqdm draws nothing on a pseudo-terminal of 0 rows (`script -qc` without a size, some job
    runners): training looked frozen there; plain lines are written instead."""
    import os

    class Sized(_Terminal):
        def fileno(self) -> int:
            return 99

    sizes = {}
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size(sizes[fd]))
    for size, drawn in (((0, 0), False), ((120, 0), False), ((120, 40), True)):
        sizes[99] = size
        screen = Sized()
        bar = _ProgressBar(disabled=False, stream=screen)
        for event in _events(n_epochs=40, n_steps=25):
            bar.update(event)
        bar.close()
        assert ("\r" in screen.getvalue()) == drawn  # a bar redraws in place
        if not drawn:  # a few plain lines, as into a log file
            assert 10 <= len(screen.getvalue().splitlines()) <= 14


def test_a_spatialdata_output_says_when_the_store_is_written(tmp_path, capsys):
    """Writing the .zarr store after the .h5ad took seconds of silence after the write's bar."""
    from napari_stentrans.core.io import read

    r, c = block_sites("square", 10, 10)
    make_slide(r, c, "square", n_genes=20).write_h5ad(tmp_path / "slide.h5ad")
    code, out, err = run_cli(["enhance", tmp_path / "slide.h5ad", "-o", tmp_path / "out.zarr"], capsys)
    lines = err.splitlines()
    store = lines.index("stentrans: writing the SpatialData store out.zarr...")
    assert code == 0 and lines[store - 1].startswith("stentrans: writing 20 genes at ")
    assert out.startswith(f"wrote {tmp_path / 'out.zarr'}: ") and read(tmp_path / "out.zarr").n_vars == 20


def test_a_model_file_without_a_network_says_its_note_is_of_the_slide_it_was_fitted_on(
    tmp_path, capsys, monkeypatch
):
    """`enhance --model` of a transformer file whose network was refused on its own slide printed
    "note: training did not improve the held-out loss of this slide" for another slide."""
    from napari_stentrans.core.estimators.learned import NOT_KEPT, NOTHING_LEARNED
    from napari_stentrans.core.training import TrainResult

    monkeypatch.setattr(TrainResult, "beats_baseline", lambda self, restore_best=True: False)  # refused
    r, c = block_sites("square", 10, 10)
    make_slide(r, c, "square", n_genes=20).write_h5ad(tmp_path / "a.h5ad")
    make_slide(r, c, "square", n_genes=20, seed=5).write_h5ad(tmp_path / "b.h5ad")
    command = ["enhance", tmp_path / "a.h5ad", "-o", tmp_path / "a2.h5ad", "--preset", "transformer"]
    code, _, _ = run_cli([*command, *FAST, "--quiet", "--save-model", tmp_path / "m.safetensors"], capsys)
    assert code == 0
    command = [
        "enhance",
        tmp_path / "b.h5ad",
        "-o",
        tmp_path / "b2.h5ad",
        "--model",
        tmp_path / "m.safetensors",
    ]
    code, out, _ = run_cli([*command, "--quiet"], capsys)
    note = next(line for line in out.splitlines() if line.startswith("note: "))
    expected = [text.replace("this slide", "that slide") for text in (NOT_KEPT, NOTHING_LEARNED)]
    prefix = "note: m.safetensors holds no network; when it was fitted on its own slide, "
    assert code == 0 and note in [prefix + text for text in expected]
