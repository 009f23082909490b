"""Learning across slides: pretraining on several slides, judging and fine-tuning on another, DDP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import block_sites, make_slide, tiny_config
from napari_stentrans import NetworkNotKeptWarning
from napari_stentrans.cli import main
from napari_stentrans.core.checkpoint import load_model
from napari_stentrans.core.errors import InputError
from napari_stentrans.core.estimators.base import run_fit
from napari_stentrans.core.estimators.classical import ClassicalModel
from napari_stentrans.core.estimators.learned import LearnedModel
from napari_stentrans.core.pretrain import NOT_IMPROVED, finetune, pretrain
from napari_stentrans.core.slide import Slide
from napari_stentrans.core.training import TrainingSlide, train_slides


def _slide(n_rows: int, n_cols: int, seed: int, prefix: str, n_genes: int = 24):
    """A square slide whose genes are named ``{prefix}0..``: slides share no gene name."""
    adata = make_slide(*block_sites("square", n_rows, n_cols), "square", n_genes=n_genes, seed=seed)
    adata.var_names = [f"{prefix}{g}" for g in range(n_genes)]
    adata.uns["stentrans_lattice"] = dict(adata.uns["stentrans_lattice"], source=f"{prefix}.h5ad")
    return adata


@pytest.fixture(scope="module")
def slides():
    return _slide(12, 14, 0, "A"), _slide(10, 16, 1, "B", n_genes=20)


@pytest.fixture(scope="module")
def pretrained(slides):
    events = []
    model = pretrain(list(slides), tiny_config(), device="cpu", callback=events.append)
    return model, events


def test_pretraining_uses_every_slide_and_records_them(slides, pretrained, tmp_path):
    model, events = pretrained
    assert isinstance(model, LearnedModel)
    prepared = next(e for e in events if e.kind != "stage")
    assert prepared.kind == "prepared" and prepared.message.startswith("2 slides, ")
    # one epoch passes over both slides' training genes (16 less the validation genes drawn
    # among them, in batches of 8)
    assert prepared.n_steps == 2 + 2
    assert sum(e.kind == "step" for e in events) == 2 * prepared.n_steps
    names = [s["name"] for s in model.pretrained_on]
    fingerprints = [s["fingerprint"] for s in model.pretrained_on]
    assert names == ["A.h5ad", "B.h5ad"]
    assert fingerprints == [Slide.from_adata(a).fingerprint for a in slides]
    assert [s["n_spots"] for s in model.pretrained_on] == [168, 160]
    # genes of both slides (no name in common) were trained on
    assert {g[0] for g in model.training_genes} == {"A", "B"}
    assert model.slide_fingerprint == ""  # the classical choice is re-made on every slide
    loaded = load_model(model.save(tmp_path / "pre.safetensors"))
    assert loaded.pretrained_on == model.pretrained_on
    for key, value in model.state_dict.items():
        assert torch.equal(loaded.state_dict[key], value)


def test_pretraining_refuses_mixed_lattices(slides):
    hex_slide = make_slide(*block_sites("hex", 12, 20), "hex", n_genes=24)
    with pytest.raises(InputError, match="one lattice type"):
        pretrain([slides[0], hex_slide], tiny_config(), device="cpu")


def test_a_pretrained_model_applies_to_a_slide_with_other_genes(pretrained):
    model, _ = pretrained
    other = _slide(11, 13, 2, "C", n_genes=18)
    events = []
    fitted = finetune(model, other, epochs=1, device="cpu", callback=events.append)
    kinds = [e.kind for e in events if e.kind != "stage"]
    assert kinds[0] == "prepared" and kinds[-1] == "finished"
    judged = fitted.validation
    default_loss = judged["default_val_loss"]
    best_loss = fitted.history["val_loss"][judged["best_epoch"]]
    score, default_score = judged.get("val_score"), judged.get("default_val_score")
    if isinstance(fitted, LearnedModel):  # kept only when it beat the default's estimate here
        assert best_loss < default_loss and score > default_score
        assert fitted.slide_fingerprint == Slide.from_adata(other).fingerprint
    else:  # a higher loss, a correlation score not above the default's, or too few spots to score
        assert fitted.note == NOT_IMPROVED
        assert best_loss >= default_loss or score is None or score <= default_score + 1e-3
    enhanced = fitted.enhance(other, device="cpu")
    assert enhanced.n_vars == len(Slide.from_adata(other).gene_indices(None, fitted.min_detection))
    assert np.isfinite(enhanced.X).all()


def test_a_correction_that_does_not_help_gives_the_classical_estimate(pretrained):
    model, _ = pretrained
    # a zero output head corrects nothing: its held-out loss equals the classical estimate's
    zero = {k: (torch.zeros_like(v) if k.startswith("head.") else v) for k, v in model.state_dict.items()}
    blank = LearnedModel(**{**model.__dict__, "state_dict": zero})
    other = _slide(11, 13, 2, "C", n_genes=18)
    with pytest.warns(NetworkNotKeptWarning, match="the learned correction did not improve held-out genes"):
        fitted = finetune(blank, other, device="cpu")
    assert isinstance(fitted, ClassicalModel) and fitted.note == NOT_IMPROVED
    assert fitted.history["val_loss"][0] == pytest.approx(fitted.validation["classical_val_loss"])
    # the fallback is exactly the per-slide default's classical estimate (gene residuals included)
    from napari_stentrans.core.fitting import fit

    default = fit(other, "default", device="cpu")
    assert fitted.config.classical.gene_residuals == "shrunk"
    assert fitted.params.describe() == default.params.describe()
    np.testing.assert_array_equal(fitted.enhance(other).X, default.enhance(other).X)


def test_finetune_refuses_a_classical_model(slides):
    from napari_stentrans.core.fitting import fit

    classical = fit(slides[0], "default", device="cpu")
    with pytest.raises(InputError, match="not a learned correction: nothing to fine-tune$"):
        finetune(classical, slides[1], device="cpu")
    # a learned preset's file whose network was refused: why it holds none, of the slide it was fitted on
    from dataclasses import replace

    from napari_stentrans.core.estimators.learned import NOTHING_LEARNED

    refused = replace(classical, note=NOTHING_LEARNED)
    with pytest.raises(
        InputError, match="its network was not kept when it was fitted: training did not improve"
    ) as why:
        finetune(refused, slides[1], device="cpu")
    assert "held-out loss of that slide" in str(why.value)


# ----------------------------------------------------------------------------- data parallel

DDP_OPTIONS = dict(epochs=2, batch_size=7, n_train_genes=16, patience=None, restore_best=False)


def _ddp_run(rank: int, world: int, store: str, out: str) -> None:
    """One process of a gloo run: pretrain on both slides, rank 0 saves the weights."""
    import torch.distributed as dist

    from napari_stentrans.cli import _end_process_group

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    state, events = _train_two_slides()
    assert events[0].device == "cpu x2 processes"
    if rank == 0:
        torch.save(state, out)
    _end_process_group()  # as `stentrans pretrain` ends (a rank that failed exits with its error)


def _train_two_slides() -> tuple[dict[str, torch.Tensor], list]:
    from napari_stentrans.core.pretrain import _training_part

    config = tiny_config(**DDP_OPTIONS)
    parts = [
        _training_part(Slide.from_adata(a), config)[0]
        for a in (_slide(12, 14, 0, "A"), _slide(10, 16, 1, "B", n_genes=20))
    ]
    assert all(isinstance(p, TrainingSlide) for p in parts)
    events = []
    result = run_fit(train_slides(parts, config, torch.device("cpu")), events.append)
    return result.state_dict, events


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    """torch.distributed data parallel: 2 CPU processes with the global batch of 1 process."""
    import torch.multiprocessing as mp

    single, events = _train_two_slides()
    assert events[0].device == "cpu"
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_run, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    parallel = torch.load(out, weights_only=True)
    assert set(parallel) == set(single)
    moved = max(float((single[k] - v).abs().max()) for k, v in _fresh_state().items())
    differ = max(float((single[k] - v).abs().max()) for k, v in parallel.items())
    # Adam divides by the root of the squared gradients, so a parameter whose gradient is
    # near zero moves by a float-rounding-sensitive amount: a tolerance 100x below the motion
    assert moved > 5e-3 and differ < moved / 100, (moved, differ)


def _fresh_state() -> dict[str, torch.Tensor]:
    from napari_stentrans.core.model import StEnTransViT

    torch.manual_seed(0)
    return StEnTransViT(tiny_config(**DDP_OPTIONS).network).state_dict()


def test_judging_a_pretrained_model_calls_its_base_the_classical_base(slides, pretrained):
    """The CLI prints the prepared line before "classical estimate chosen on this slide: ...":
    the network's base (chosen for the network) must not read as a second, contradicting estimate."""
    from napari_stentrans.core.pretrain import finetune_events

    model, _ = pretrained
    events = finetune_events(model, Slide.from_adata(slides[0]), 0, "cpu")
    prepared = next(e for e in events if e.kind == "prepared").message
    assert "the network's classical base (low-rank + gene residuals, rank " in prepared
    assert "classical estimate" not in prepared


def test_cli_finetune_without_model_says_it_needs_one_and_a_negative_count_says_so(tmp_path, capsys):
    slide = tmp_path / "s.h5ad"
    _slide(8, 8, 0, "A").write_h5ad(slide)
    code = main(["enhance", str(slide), "-o", str(tmp_path / "o.h5ad"), "--finetune", "2"])
    assert code == 2
    assert capsys.readouterr().err.startswith("stentrans: error: --finetune needs --model")
    fake_model = tmp_path / "m.safetensors"
    fake_model.write_bytes(b"x")
    args = ["enhance", str(slide), "-o", str(tmp_path / "o.h5ad"), "--model", str(fake_model)]
    assert main([*args, "--finetune", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == "stentrans: error: --finetune: -1 is not a number of epochs (>= 0)\n"
    assert not (tmp_path / "o.h5ad").exists()


# ----------------------------------------------------------------------------- command line


def test_cli_finetune_needs_a_model(tmp_path, capsys):
    slide = tmp_path / "s.h5ad"
    _slide(8, 8, 0, "A").write_h5ad(slide)
    code = main(["enhance", str(slide), "-o", str(tmp_path / "o.h5ad"), "--finetune", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("stentrans: error: --finetune") and err.count("\n") == 1
    assert not (tmp_path / "o.h5ad").exists()


def test_cli_pretrain_refuses_the_same_slide_twice_naming_both_paths(tmp_path, capsys):
    """One path twice, or two files of identical content, is one slide: refused before training
    (as enhance --reference refuses the slide itself), naming both paths; nothing written."""
    import shutil

    first, copy = tmp_path / "a.h5ad", tmp_path / "copy_of_a.h5ad"
    _slide(12, 14, 0, "A").write_h5ad(first)
    shutil.copy(first, copy)
    out = tmp_path / "m.safetensors"
    for paths in ([first, first], [first, copy]):
        code = main(["pretrain", *map(str, paths), "-o", str(out), "--epochs", "1", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"stentrans: error: {paths[0]} and {paths[1]} are the same slide (fingerprint ")
        assert not out.exists()


def test_pretrain_refuses_the_same_slide_twice_in_python(slides):
    with pytest.raises(InputError, match=r"^A.h5ad and A.h5ad are the same slide"):
        pretrain([slides[0], slides[1], slides[0]], tiny_config(), device="cpu")


def test_cli_pretrain_on_one_slide_says_slide_not_slides(tmp_path, capsys):
    slide, out = tmp_path / "a.h5ad", tmp_path / "m.safetensors"
    _slide(12, 14, 0, "A").write_h5ad(slide)
    args = ["--epochs", "1", "--train-genes", "16", "--device", "cpu", "--quiet"]
    assert main(["pretrain", str(slide), "-o", str(out), *args]) == 0
    assert f"wrote {out}: a correction network pretrained on 1 slide ({slide}); best epoch" in (
        capsys.readouterr().out
    )


def test_cli_pretrain_refuses_mixed_lattices(tmp_path, capsys):
    square, hexagonal = tmp_path / "sq.h5ad", tmp_path / "hex.h5ad"
    _slide(8, 8, 0, "A").write_h5ad(square)
    make_slide(*block_sites("hex", 10, 16), "hex").write_h5ad(hexagonal)
    out = tmp_path / "m.safetensors"
    code = main(["pretrain", str(square), str(hexagonal), "-o", str(out), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "one lattice type" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_cli_pretrain_two_slides_then_enhance_a_third(shared_data, tmp_path, capsys):
    """The acceptance path: pretrain on two real ST slides, enhance a third with --model."""
    import anndata as ad

    first = shared_data / "st_melanoma_thrane2018_mel1_rep2/mel1_rep2.h5ad"
    second = shared_data / "st_mouse_olfactory_bulb_stahl2016/mob_stahl2016.h5ad"
    third = shared_data / "st_breast_cancer_layers_stahl2016/layer2_fullgenes.h5ad"
    model_path, out = tmp_path / "pre.safetensors", tmp_path / "out.h5ad"
    args = ["--epochs", "1", "--train-genes", "40", "--device", "cpu", "--quiet"]
    assert main(["pretrain", str(first), str(second), "-o", str(model_path), *args]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {model_path}: a correction network pretrained on 2 slides" in printed
    model = load_model(model_path)
    assert [s["name"] for s in model.pretrained_on] == [str(first), str(second)]
    code = main(
        ["enhance", str(third), "--model", str(model_path), "--finetune", "1", "-o", str(out)]
        + ["--genes", "30", "--device", "cpu", "--quiet"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    enhanced = ad.read_h5ad(out)
    from napari_stentrans import read
    from napari_stentrans.core.slide import Slide

    usable = Slide.from_adata(read(third)).n_usable  # 251 spots, one near-empty (2 counts) imputed
    assert enhanced.n_vars == 30 and (enhanced.obs["kind"] == "measured").sum() == usable == 250
    assert np.isfinite(enhanced.X).all()
    # either the learned correction helped on this slide's held-out genes, or the CLI says it did not
    assert ("improved held-out genes on this slide: held-out loss" in printed) != (
        f"note: {NOT_IMPROVED}" in printed
    )
