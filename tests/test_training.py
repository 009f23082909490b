"""Training: one generator of events, a stop flag honoured within one batch, determinism."""

from __future__ import annotations

import os
import re
import threading
import warnings

import numpy as np
import pytest
import torch

from helpers import TINY_OPTIONS, block_sites, fit_cpu, make_slide, tiny_config
from napari_stentrans.core.classical import ClassicalParams
from napari_stentrans.core.config import preset
from napari_stentrans.core.estimators.classical import ClassicalModel
from napari_stentrans.core.fitting import Trainer
from napari_stentrans.core.slide import Slide
from napari_stentrans.core.training import PairSampler


def _sampler(slide, values, params, config=None) -> PairSampler:
    """Pairs of a slide with a given classical choice."""
    config = config or tiny_config()
    model = ClassicalModel(config, params, slide.lattice.kind, [], slide.fingerprint)
    return PairSampler(slide, values, config, model)


@pytest.fixture
def square_slide():
    r, c = block_sites("square", 12, 14)
    return make_slide(r, c, "square", n_genes=24)


def test_events_report_progress_and_a_model_is_produced(square_slide):
    trainer = Trainer(square_slide, tiny_config(epochs=3, restore_best=False), device="cpu")
    events = [e for e in trainer.run() if e.kind != "stage"]  # stages: test_stages_report_...
    kinds = [e.kind for e in events]
    assert kinds[0] == "prepared" and kinds[-1] == "finished"
    steps = [e for e in events if e.kind == "step"]
    assert len(steps) == 3 * events[0].n_steps
    assert all(e.eta is not None and e.eta >= 0 and e.elapsed > 0 for e in steps)
    assert steps[-1].eta == 0
    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.epoch for e in epochs] == [1, 2, 3] and all(np.isfinite(e.val_loss) for e in epochs)
    assert trainer.result is not None
    assert trainer.result.history["epoch"] == [0, 1, 2, 3]
    assert events[0].device == "cpu"


def _stages(events) -> dict[str, list]:
    """The stage events before the first training step, by stage: ``[(done, total, elapsed)]``."""
    stages: dict[str, list] = {}
    for event in events:
        if event.kind in ("prepared", "step"):
            break
        assert event.kind == "stage", event
        stages.setdefault(event.message, []).append((event.step, event.n_steps, event.elapsed))
    return stages


@pytest.mark.parametrize("preset_name", ["default", "transformer"])
def test_stages_report_the_work_before_training_with_counts(square_slide, preset_name):
    """The first seconds of a run (classical choice over the pairs, the pairs, validation) say
    what they do and how far they got, before the first epoch; not one opaque 'preparing'."""
    config = tiny_config(epochs=1) if preset_name == "transformer" else "default"
    events = list(Trainer(square_slide, config, device="cpu").run())
    kinds = [e.kind for e in events]
    first_epoch = kinds.index("epoch") if "epoch" in kinds else len(kinds)
    assert kinds.index("prepared") < first_epoch and kinds[0] == "stage"
    stages = _stages(events)
    names = list(stages)
    assert any("rank and smoothers on 4 coset pairs" in n for n in names)
    assert any("rank and residual smoother on 8 dropout pairs" in n for n in names)
    for name, counts in stages.items():
        done = [d for d, _, _ in counts]
        totals = {t for _, t, _ in counts}
        assert len(totals) == 1 and done[0] == 0 and done[-1] == totals.pop(), (name, counts)
        assert done == sorted(done) and len(set(done)) == len(done), (name, counts)  # counts increase
    pairs = next(counts for name, counts in stages.items() if "rank and smoothers" in name)
    assert [d for d, _, _ in pairs] == [0, 1, 2, 3, 4]
    for counts in stages.values():
        elapsed = [t for _, _, t in counts]
        assert elapsed == sorted(elapsed)
    if preset_name == "transformer":  # the classical base, the default's estimate, pairs, validation
        # (the tiny configuration's 16 training genes make its base another fit than the default's)
        assert any(n.startswith("classical base: ") for n in names)
        assert any(n.startswith("the default's estimate: ") for n in names)
        # the network's base is named as its stage is, not as the result's "classical estimate"
        prepared = next(e for e in events if e.kind == "prepared").message
        assert "classical base (low-rank + gene residuals, rank " in prepared
        assert "classical estimate" not in prepared
        assert "building the training pairs, held-out genes and region" in names
        validation = stages["scoring the starting network on the held-out genes"]
        assert validation[-1][0] == validation[-1][1] >= 1  # counted in gene batches


def test_the_transformer_corrects_the_defaults_estimate_fitted_once(square_slide):
    """With the default's classical options and training genes, the base the network corrects
    is the default's own estimate (gene residuals included): one classical fit, named so."""
    from napari_stentrans.core.estimators.learned import LearnedModel

    small = {k: v for k, v in TINY_OPTIONS.items() if k not in ("n_train_genes", "min_detection")}
    trainer = Trainer(square_slide, preset("transformer", "square", **small), device="cpu")
    events = list(trainer.run())
    names = list(_stages(events))
    assert any(n.startswith("the default's estimate: ") for n in names)
    assert not any(n.startswith("classical base: ") for n in names)  # one classical fit
    # one clock from the fit's start: the training's stages followed the default's at "from 0.0 s"
    times = [e.elapsed for e in events]
    assert times == sorted(times) and times[-1] > 0
    prepared = next(e for e in events if e.kind == "prepared").message
    # its rank only: the whole choice is the summary line's (it was printed twice)
    assert "the network corrects the default's estimate (low-rank + gene residuals, rank " in prepared
    assert "scores " not in prepared and "depth " not in prepared
    # the default's estimate is scored as the bar and as the network's own start: the same loss
    result = trainer.result
    # the last line says what the gate made of it, as the result is
    kept = isinstance(result, LearnedModel)
    assert events[-1].kind == "finished" and events[-1].message.endswith(
        "the network beat the default's estimate on the held-out genes and is kept"
        if kept
        else "; not kept: the result is the default's estimate"
    )
    assert result.validation["default_val_loss"] == pytest.approx(result.history["val_loss"][0], rel=1e-5)
    assert result.validation["default_val_score"] == pytest.approx(
        result.validation["classical_val_score"], abs=1e-6
    )
    # refused (cannot move), the result is the default's fit, recorded with the default's configuration
    stuck = Trainer(square_slide, preset("transformer", "square", **small, lr=1e-12, weight_decay=0.0))
    finished = list(stuck.run())[-1]
    assert finished.message == (
        "best epoch 0: no epoch beat the start on the held-out genes; not kept: the result is the "
        "default's estimate"
    )
    fallback = stuck.result
    default = fit_cpu(square_slide, "default")
    assert isinstance(fallback, ClassicalModel) and fallback.config.preset == "default"
    assert (
        fallback.config.to_dict() == default.config.to_dict() and fallback.requested.preset == "transformer"
    )
    enhanced = fallback.enhance(square_slide)
    assert enhanced.uns["stentrans"]["config"]["preset"] == "default"
    # torch trained a network there, though none made the estimate; the default's own fit used none
    assert enhanced.uns["stentrans"]["torch_version"].startswith("not used for the estimate (torch ")
    assert default.enhance(square_slide).uns["stentrans"]["torch_version"] == "not used"
    np.testing.assert_array_equal(enhanced.X, default.enhance(square_slide).X)


def test_stop_during_the_stages_ends_the_fit_before_training(square_slide):
    stop = threading.Event()
    events = []
    trainer = Trainer(square_slide, tiny_config(epochs=5), device="cpu")
    for event in trainer.run(stop):
        events.append(event)
        if event.kind == "stage" and "residual smoother" in event.message:
            stop.set()
    assert events[-1].kind == "stopped" and not any(e.kind in ("prepared", "step") for e in events)
    assert trainer.result is None


def test_stop_flag_ends_the_run_within_one_batch(square_slide):
    stop = threading.Event()
    trainer = Trainer(square_slide, tiny_config(epochs=50), device="cpu")
    steps_after_stop = 0
    events = []
    for event in trainer.run(stop):
        events.append(event)
        if stop.is_set() and event.kind == "step":
            steps_after_stop += 1
        if event.kind == "step" and event.step == 2:
            stop.set()
    assert events[-1].kind == "stopped"
    assert steps_after_stop == 0
    assert trainer.result is None
    assert fit_cpu(square_slide, tiny_config(), stop=stop) is None  # already set: nothing trained


def _train(slide, config):
    """Train the network as the learned preset does (its classical base) and return the TrainResult."""
    from napari_stentrans.core.classical import TARGET_SUM
    from napari_stentrans.core.estimators.classical import ClassicalEstimator
    from napari_stentrans.core.estimators.learned import default_model
    from napari_stentrans.core.training import train_network

    slide = Slide.from_adata(slide)
    values = slide.expression(
        slide.training_genes(config.data.n_train_genes, config.data.min_detection), "log1p", TARGET_SUM
    )
    classical = ClassicalEstimator(config).fit_model(slide, values=values)
    run = train_network(
        slide, values, config, classical, torch.device("cpu"), baseline=default_model(slide, config)
    )
    try:
        while True:
            next(run)
    except StopIteration as done:
        return done.value


def test_same_seed_gives_identical_weights_on_cpu(square_slide):
    a = _train(square_slide, tiny_config(seed=3, restore_best=False))
    b = _train(square_slide, tiny_config(seed=3, restore_best=False))
    c = _train(square_slide, tiny_config(seed=4, restore_best=False))
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_best_weights_are_never_worse_than_the_classical_start_on_validation(square_slide):
    result = _train(square_slide, tiny_config(epochs=4, lr=0.05))  # a deliberately wild learning rate
    val = np.asarray(result.history["val_loss"])
    best_epoch = result.validation["best_epoch"]
    assert val[best_epoch] == np.nanmin(val)
    assert val[best_epoch] <= val[0]


def test_lost_sites_are_neither_input_nor_target(square_slide):
    lost = np.array([[5, 5], [5, 6], [6, 5]])
    slide = Slide.from_adata(square_slide, mask=lost)
    assert slide.n_usable == square_slide.n_obs - 3
    config = tiny_config()
    values = slide.expression(np.arange(8), "log1p")

    sampler = _sampler(slide, values, ClassicalParams(rank=2, bandwidth=1.0), config)
    lost_flat = sampler.raster.flat_index(lost[:, 0], lost[:, 1])
    assert not np.isin(lost_flat, sampler.flat).any()
    for coset in range(4):
        pair = sampler.upsampling_pair(np.arange(4), coset, (False, False, False), None, torch.device("cpu"))
        visible = int(pair.inputs[0, 1].sum())
        # targets: every usable spot hidden from the input; never a lost one, never an input spot
        assert pair.target_mask.sum() == slide.n_usable - visible
        assert (pair.target_mask[::2, ::2] * pair.inputs[0, 1]).sum() == 0
        assert pair.inputs.shape[1] == 3 and pair.base.shape == pair.target.shape


def test_training_pair_geometry_is_the_coset_under_every_symmetry(square_slide):
    """The LR input of a pair is exactly HR[::2, ::2] restricted to the chosen coset's spots."""
    slide = Slide.from_adata(square_slide)
    values = slide.expression(np.arange(4), "log1p")
    sampler = _sampler(slide, values, ClassicalParams(rank=2, bandwidth=1.0))
    for coset in range(4):
        for op in slide.lattice.symmetries:
            pair = sampler.upsampling_pair(np.arange(4), coset, op, None, torch.device("cpu"))
            lr_mask = pair.inputs[0, 1]
            assert int(lr_mask.sum()) == int((sampler.cosets == coset).sum())
            torch.testing.assert_close(pair.inputs[:, 0], pair.target[:, ::2, ::2] * lr_mask)


def test_published_preset_trains_on_a_hex_slide_with_the_brick_raster():
    r, c = block_sites("hex", 16, 30)
    slide = make_slide(r, c, "hex", n_genes=12)
    config = preset("published", "hex", epochs=1, n_train_genes=12, batch_size=6, depth=1, min_detection=0.0)
    assert config.data.raster == "brick" and config.data.normalization == "none"
    model = fit_cpu(slide, config)
    assert model is not None and model.lattice_kind == "hex" and model.classical is None
    assert model.config.network.patch_size == 8


def test_validation_sites_are_never_training_targets(square_slide):

    slide = Slide.from_adata(square_slide)
    sampler = _sampler(slide, slide.expression(np.arange(4), "log1p"), ClassicalParams(2, 1.0))
    val = sampler.validation_sites(0.2, np.random.default_rng(0))
    assert 0.2 * slide.n_usable <= val.sum() < 0.5 * slide.n_usable
    # contiguous: every validation spot has a validation neighbour
    from scipy.spatial import cKDTree

    d, _ = cKDTree(sampler.positions[val]).query(sampler.positions[val], k=2)
    assert d[:, 1].max() <= 1.0 + 1e-9
    train_pair = sampler.upsampling_pair(
        np.arange(4), 0, (False, False, False), None, torch.device("cpu"), ~val
    )
    val_pair = sampler.upsampling_pair(np.arange(4), 0, (False, False, False), None, torch.device("cpu"), val)
    val_pixels = np.zeros(sampler.raster.shape, dtype=np.float32).ravel()
    val_pixels[sampler.flat[val]] = 1.0
    val_pixels = torch.from_numpy(val_pixels.reshape(sampler.raster.shape))
    assert (train_pair.target_mask * val_pixels).sum() == 0
    assert val_pair.target_mask.sum() > 0 and (val_pair.target_mask * (1 - val_pixels)).sum() == 0


def test_inpainting_pairs_score_only_dropped_spots_at_their_own_pixel(square_slide):

    slide = Slide.from_adata(square_slide)
    sampler = _sampler(slide, slide.expression(np.arange(6), "log1p"), ClassicalParams(2, None))
    drop = sampler.inpaint_drop(np.random.default_rng(3))
    assert 0 < drop.sum() < 0.5 * slide.n_usable
    pair = sampler.hole_pair(np.arange(6), (False, False, False), drop, torch.device("cpu"), None, None, None)
    h, w = sampler.raster.shape
    assert pair.inputs.shape == (6, 3, h, w) and pair.target.shape == (6, 2 * h, 2 * w)
    dropped_pixels = np.zeros(h * w, dtype=np.float32)
    dropped_pixels[sampler.flat[drop]] = 1.0
    dropped_pixels = torch.from_numpy(dropped_pixels.reshape(h, w))
    torch.testing.assert_close(pair.target_mask[::2, ::2], dropped_pixels)  # child 0 of each dropped spot
    assert pair.target_mask.sum() == drop.sum()
    assert (pair.inputs[:, 1] * dropped_pixels).sum() == 0  # hidden from the input
    assert (pair.inputs[:, 0] * dropped_pixels).abs().sum() == 0
    # the base fills the hole from the kept spots: finite and non-zero inside the hole
    assert torch.all(pair.base[:, ::2, ::2][:, dropped_pixels > 0] > 0)
    window = sampler.hole_pair(
        np.arange(6),
        slide.lattice.symmetries[3],
        drop,
        torch.device("cpu"),
        None,
        (6, 6),
        np.random.default_rng(0),
    )
    assert window.inputs.shape == (6, 3, 6, 6) and window.target_mask.sum() > 0


def test_inpainting_base_uses_the_gap_smoothers_in_the_hole_and_the_main_ones_elsewhere(square_slide):
    """The base of a hole-filling pair is the one inference gives: gap smoothers in gaps only."""

    slide = Slide.from_adata(square_slide)
    values = slide.expression(np.arange(6), "log1p")
    main, gaps = ClassicalParams(2, None), ClassicalParams(2, 1.4)
    drop = _sampler(slide, values, main).inpaint_drop(np.random.default_rng(3))

    def base(params):
        sampler = _sampler(slide, values, params)
        pair = sampler.hole_pair(np.arange(6), (False,) * 3, drop, torch.device("cpu"), None, None, None)
        return pair.base[:, ::2, ::2].reshape(6, -1)[:, sampler.flat].numpy()

    both = base(ClassicalParams(2, None, holes=gaps))
    np.testing.assert_allclose(both[:, drop], base(gaps)[:, drop], rtol=1e-5)
    np.testing.assert_allclose(both[:, ~drop], base(main)[:, ~drop], rtol=1e-5)
    assert np.abs(both[:, drop] - base(main)[:, drop]).max() > 1e-3  # the two smoothers differ in the hole


def test_a_gene_outside_the_training_genes_gets_the_base_of_a_training_gene_it_copies(square_slide):
    """Validation genes outside the training genes (the basis genes) get least-squares loadings
    on the basis scores, as prediction gives them: a copy of a training gene gets that gene's base
    (upsampling and hole-filling pairs, gene residuals included), and the training genes' base
    is the one a sampler without other genes gives."""
    slide = Slide.from_adata(square_slide)
    values = slide.expression(np.arange(6), "log1p")
    extended = np.hstack([values, values[:, [2, 4]]])
    residuals = dict(residual=1.0)
    params = ClassicalParams(2, None, holes=ClassicalParams(2, 1.4, **residuals), **residuals)
    config = tiny_config()
    model = ClassicalModel(config, params, slide.lattice.kind, [], slide.fingerprint)
    alone, both = PairSampler(slide, values, config, model), PairSampler(slide, extended, config, model, 6)
    cpu, op = torch.device("cpu"), (False,) * 3
    drop = alone.inpaint_drop(np.random.default_rng(3))
    genes = np.arange(8)
    for coset in both.available_cosets():
        pair = both.upsampling_pair(genes, coset, op, None, cpu)
        assert pair.base[6:].abs().sum() > 0
        torch.testing.assert_close(pair.base[6:], pair.base[[2, 4]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pair.base[:6], alone.upsampling_pair(genes[:6], coset, op, None, cpu).base)
    hole = both.hole_pair(genes, op, drop, cpu, None, None, None)
    torch.testing.assert_close(hole.base[6:], hole.base[[2, 4]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        hole.base[:6], alone.hole_pair(genes[:6], op, drop, cpu, None, None, None).base
    )


def test_validation_genes_are_drawn_from_every_gene_the_output_holds():
    """As many validation genes as before (a fraction of the training genes), drawn uniformly
    from the training genes and the others together; none below 10 training genes."""
    from napari_stentrans.core.training import validation_genes

    rng = np.random.default_rng(0)
    draws = [validation_genes(200, 300, 0.1, rng) for _ in range(200)]
    assert all(len(a) + len(b) == 20 for a, b in draws)
    assert all(
        a.max(initial=0) < 200 and b.max(initial=0) < 300 and len(np.unique(b)) == len(b) for a, b in draws
    )
    share = np.mean([len(b) / 20 for _, b in draws])
    assert share == pytest.approx(0.6, abs=0.02)  # 300 of 500 genes are outside the training genes
    a, b = validation_genes(9, 100, 0.5, rng)
    assert len(a) == len(b) == 0
    a, b = validation_genes(40, 0, 0.1, rng)  # no other gene: as before
    assert len(a) == 4 and len(b) == 0


def test_a_learned_fit_is_judged_on_genes_outside_its_training_genes_too(square_slide):
    """The tiny preset trains on 16 of the slide's 24 genes: half of its validation genes are
    drawn from all 24, some outside the 16, and the training steps never see a validation gene."""
    config = tiny_config(epochs=1, val_fraction=0.5)
    events = list(Trainer(square_slide, config, device="cpu").run())
    prepared = next(e for e in events if e.kind == "prepared")
    # e.g. "168 spots; trains on 13 of the 16 most variable genes, judged on 8 genes held out from
    # training (3 of those 16 and 5 less variable detected genes)"
    found = re.search(
        r"trains on (\d+) of the 16 most variable genes, judged on (\d+) genes held out from "
        r"training \((\d+) of those 16 and (\d+) less variable detected genes\)",
        prepared.message,
    )
    assert found, prepared.message
    n_fit, n_val, n_own, n_other = map(int, found.groups())
    assert n_val == 8 and n_own + n_other == 8 and n_other >= 1 and n_fit == 16 - n_own
    assert prepared.n_steps == int(np.ceil(n_fit / 8))  # training batches of the non-validation genes


def test_a_windowed_hole_pair_is_the_crop_of_the_whole_slides_pair(square_slide):
    """The base is computed only at the window's sites: the values must be the whole slide's.

    Each symmetry of the lattice, with the gap smoothers in the hole, and a window placed at
    random; the crop offset is found by matching the target channel.
    """
    slide = Slide.from_adata(square_slide)
    genes = np.arange(5)
    values = slide.expression(genes, "log1p")
    sampler = _sampler(slide, values, ClassicalParams(2, None, holes=ClassicalParams(3, 1.4)))
    drop = sampler.inpaint_drop(np.random.default_rng(3))
    cpu = torch.device("cpu")
    for i, op in enumerate(slide.lattice.symmetries):
        whole = sampler.hole_pair(genes, op, drop, cpu, None, None, None)
        part = sampler.hole_pair(genes, op, drop, cpu, None, (7, 6), np.random.default_rng(i))
        hh, ww = part.target.shape[1:]
        offsets = [
            (r, c)
            for r in range(0, whole.target.shape[1] - hh + 1, 2)
            for c in range(0, whole.target.shape[2] - ww + 1, 2)
            if torch.equal(whole.target[:, r : r + hh, c : c + ww], part.target)
            and torch.equal(whole.target_mask[r : r + hh, c : c + ww], part.target_mask)
        ]
        assert offsets, f"symmetry {op}: the window is no crop of the whole slide"
        r, c = offsets[0]
        assert part.base.abs().sum() > 0
        torch.testing.assert_close(part.base, whole.base[:, r : r + hh, c : c + ww], rtol=0, atol=0)
        torch.testing.assert_close(
            part.inputs, whole.inputs[..., r // 2 : r // 2 + hh // 2, c // 2 : c // 2 + ww // 2]
        )


def test_validation_builds_its_pairs_once_and_scores_alike_every_time(square_slide, monkeypatch):
    from napari_stentrans.core import training
    from napari_stentrans.core.model import StEnTransViT

    slide = Slide.from_adata(square_slide)
    values = slide.expression(np.arange(24), "log1p")
    config = tiny_config()
    sampler = _sampler(slide, values, ClassicalParams(2, None), config)
    drop = sampler.inpaint_drop(np.random.default_rng(1))
    net = StEnTransViT(config.network)
    built = []
    for name in ("upsampling_pair", "hole_pair"):
        original = getattr(sampler, name)
        monkeypatch.setattr(
            sampler, name, lambda *a, _f=original, _n=name, **k: built.append(_n) or _f(*a, **k)
        )

    def validation(**kwargs):
        return training.Validation(
            sampler, np.arange(20, 24), 0, None, None, drop, torch.device("cpu"), **kwargs
        )

    kept = validation()
    first, second, score = kept(net), kept(net), kept.score(net)
    assert first == second and built == ["upsampling_pair", "hole_pair"] * kept.n_batches
    built.clear()
    once = validation(keep_pairs=False)
    assert once(net) == first and once(net) == first
    assert built == ["upsampling_pair", "hole_pair"] * 2 * once.n_batches
    assert once.score(net) == score
    built.clear()
    monkeypatch.setattr(training, "VALIDATION_PAIR_BYTES", 0)  # pairs larger than the budget
    small = validation()
    small(net), small(net)
    assert len(built) == 4 * small.n_batches


# ----------------------------------------------------------------------------- the gate (issue 13)


def _result(val_loss, default_val, restore_best=True, score=0.5, default_score=0.4, classical_score=None):
    """A TrainResult; by default the kept network's correlation score beats the default's."""
    from napari_stentrans.core.training import TrainResult

    best = int(np.argmin(val_loss)) if restore_best else len(val_loss) - 1
    return TrainResult(
        state_dict={},
        best_epoch=best,
        history={"val_loss": list(val_loss)},
        best_val=float(np.min(val_loss)),
        start_val=val_loss[0],
        classical_val=val_loss[0],
        default_val=default_val,
        score=score,
        default_score=default_score,
        classical_score=classical_score,
    )


def test_the_gate_refuses_a_network_that_lowers_squared_error_but_not_the_correlation_score():
    from napari_stentrans.core.estimators.learned import gate

    config = tiny_config()
    # DLPFC 151673 (issue 13): the network's held-out loss is below the default's and its
    # low-rank base's, but its per-gene + gene-specific + co-expression r is lower: refused
    assert not gate(_result([1.00, 0.80], 0.85, score=0.35, default_score=0.40), config)
    assert not gate(_result([1.00, 0.80], 0.85, score=0.40, default_score=0.40), config)  # a tie
    assert not gate(_result([1.00, 0.80], 0.85, score=float("nan"), default_score=0.40), config)
    assert not gate(_result([1.00, 0.80], 0.85, score=None, default_score=None), config)
    # a higher correlation score and a lower loss: kept
    assert gate(_result([1.00, 0.80], 0.85, score=0.45, default_score=0.40), config)
    # a higher correlation score is not enough when the squared error is worse than the default's
    assert not gate(_result([1.00, 0.90], 0.85, score=0.45, default_score=0.40), config)


def test_the_gate_refuses_a_network_that_beats_the_default_only_through_its_base():
    """Visium embryo heldout seed 0: the base alone (no gene residuals) scored above the default on
    the coarse pairs; the correction added nothing. Refused: the correction must beat its base too."""
    from napari_stentrans.core.estimators.learned import gate

    config = tiny_config()
    base_wins = _result(
        [1.08403, 1.08402], 1.09225, score=0.9295, default_score=0.9098, classical_score=0.9294
    )
    assert not gate(base_wins, config)
    assert gate(_result([1.084, 1.070], 1.092, score=0.95, default_score=0.91, classical_score=0.93), config)


def test_a_correction_that_lowers_squared_error_without_better_correlations_gives_the_default(square_slide):
    """A real network whose correction is a constant shift of its base: the held-out squared error
    of its base can go down (the base is biased), every correlation stays that of the base;
    refused, and the output is exactly the per-slide default's. (Refused with a loss below the
    default's too: ``test_the_gate_refuses_a_network_that_lowers_squared_error_but_not_the_correlation_score``.)"""
    from napari_stentrans.core.estimators.classical import ClassicalEstimator
    from napari_stentrans.core.estimators.learned import LearnedModel
    from napari_stentrans.core.fitting import fit
    from napari_stentrans.core.model import StEnTransViT
    from napari_stentrans.core.pretrain import finetune, is_classical_fallback

    slide = Slide.from_adata(square_slide)
    config = tiny_config(n_train_genes=24)
    classical = ClassicalEstimator(config).fit_model(slide)
    default_x = fit(square_slide, "default", device="cpu").enhance(square_slide).X
    lowered = []
    for shift in (0.03, 0.05, 0.08):
        net = StEnTransViT(config.network)
        with torch.no_grad():
            net.head.bias.fill_(shift)  # zero weights: the correction is `shift` everywhere
        shifted = LearnedModel(
            config=config,
            state_dict={k: v.clone() for k, v in net.state_dict().items()},
            lattice_kind="square",
            classical=classical,
            training_genes=[],
            slide_fingerprint="another slide",
            pretrained_on=[{"name": "shift", "fingerprint": "0", "n_spots": 0}],
        )
        fitted = finetune(shifted, slide, epochs=0, device="cpu")
        judged = fitted.validation
        if fitted.history["val_loss"][0] < judged["classical_val_loss"]:
            lowered.append(shift)
        # a constant shift keeps every correlation of its base
        assert abs(judged["val_score"] - judged["classical_val_score"]) < 1e-3
        assert is_classical_fallback(fitted)
        np.testing.assert_array_equal(fitted.enhance(square_slide).X, default_x)
    assert lowered  # at least one shift beat its base on squared error, and was refused


def test_the_correlation_score_needs_enough_scored_spots(square_slide):
    from napari_stentrans.core.classical import TARGET_SUM
    from napari_stentrans.core.model import StEnTransViT
    from napari_stentrans.core.training import MIN_SCORED_SPOTS, Validation

    slide = Slide.from_adata(square_slide)
    values = slide.expression(slide.training_genes(24, 0.0), "log1p", TARGET_SUM)
    config = tiny_config(n_train_genes=24)
    sampler = _sampler(slide, values, ClassicalParams(2, None), config)
    net = StEnTransViT(config.network)
    genes = np.arange(6)
    everywhere = Validation(sampler, genes, 0, None, None, None, torch.device("cpu"))
    assert np.isfinite(everywhere.score(net))  # 126 scored spots
    few = np.zeros(slide.n_usable, dtype=bool)
    few[: MIN_SCORED_SPOTS - 1] = True  # fewer spots than the score needs (some are inputs, too)
    assert Validation(sampler, genes, 0, None, few, None, torch.device("cpu")).score(net) is None
    assert Validation(sampler, genes, 0, None, few, few, torch.device("cpu")).score(net) is None


def test_the_correlation_score_is_the_defaults_choice_criterion():
    from napari_stentrans.core.training import correlation_score

    rng = np.random.default_rng(0)
    xy = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    fields = np.stack([np.sin(xy[:, 0] / (1 + k)) + np.cos(xy[:, 1] / (2 + k)) for k in range(12)], 1)
    truth = fields + 0.3 * rng.standard_normal(fields.shape)
    seen = truth[::2]
    assert correlation_score(truth, truth, seen, xy[::2]) == pytest.approx(3.0)
    # shrinking each gene towards its mean lowers the squared error of a noisy estimate but not
    # one correlation: the score is unchanged, so the gate cannot be won by shrinkage
    noisy = truth + 0.5 * rng.standard_normal(truth.shape)
    shrunk = truth.mean(axis=0) + 0.5 * (noisy - truth.mean(axis=0))
    assert ((shrunk - truth) ** 2).mean() < ((noisy - truth) ** 2).mean()
    assert correlation_score(shrunk, truth, seen, xy[::2]) == pytest.approx(
        correlation_score(noisy, truth, seen, xy[::2])
    )
    # the estimate of other spots scores lower than the truth's own pattern
    assert correlation_score(truth[::-1], truth, seen, xy[::2]) < 1.0


def test_the_gate_refuses_a_network_that_beats_the_low_rank_estimate_but_not_the_default():
    from napari_stentrans.core.estimators.learned import gate

    config = tiny_config()
    # epoch 0 is the low-rank estimate (1.00); the network reaches 0.90 (beats it) but the
    # default's estimate scores 0.85 on the same held-out pairs: not kept
    assert not gate(_result([1.00, 0.95, 0.90], 0.85), config)
    assert not gate(_result([1.00, 0.95, 0.90], 0.90), config)  # a tie keeps the default
    assert gate(_result([1.00, 0.95, 0.80], 0.85), config)
    # without restore_best the last epoch's weights are kept, so they are the ones judged
    last = tiny_config(restore_best=False)
    assert not gate(_result([1.00, 0.80, 0.90], 0.85, restore_best=False), last)
    assert not gate(_result([1.00, 0.80], None), config)  # nothing to judge against: the default
    # the default's squared error above the low-rank estimate's: a network that only equals its
    # low-rank base (a zero correction) does not pass for beating the default
    assert not gate(_result([1.00, 1.00], 1.20), config)
    assert gate(_result([1.00, 0.99], 1.20), config)


def test_the_baseline_is_scored_on_the_same_pairs_with_the_defaults_gene_residuals(square_slide):
    from dataclasses import replace

    from napari_stentrans.core.classical import TARGET_SUM
    from napari_stentrans.core.estimators.classical import ClassicalEstimator
    from napari_stentrans.core.estimators.learned import default_model
    from napari_stentrans.core.training import train_network

    slide = Slide.from_adata(square_slide)
    config = tiny_config(n_train_genes=24, gene_residuals="none")  # a low-rank base
    values = slide.expression(slide.training_genes(24, 0.0), "log1p", TARGET_SUM)
    classical = ClassicalEstimator(config).fit_model(slide, values=values)
    default = default_model(slide, config)
    assert default.params.residual is not None and classical.params.residual is None

    def default_val(baseline):
        run = train_network(
            slide, values, config.with_overrides(epochs=0), classical, torch.device("cpu"), baseline=baseline
        )
        try:
            while True:
                next(run)
        except StopIteration as done:
            return done.value.default_val

    low_rank = _train(square_slide, config.with_overrides(epochs=1)).history["val_loss"][0]
    # the low-rank model as baseline scores exactly epoch 0 (the same genes, pairs and region) ...
    assert default_val(replace(default, params=classical.params, _bases={})) == pytest.approx(low_rank)
    # ... and the default's own shrunk gene residuals change that score
    with_residuals = default_val(replace(default, params=replace(classical.params, residual=0.0), _bases={}))
    assert with_residuals != pytest.approx(low_rank)


def test_a_per_slide_correction_that_learns_nothing_gives_exactly_the_default(square_slide):
    from napari_stentrans import NetworkNotKeptWarning
    from napari_stentrans.core.estimators.learned import NOTHING_LEARNED
    from napari_stentrans.core.fitting import fit

    # trains (two epochs) but cannot move: validation keeps epoch 0, the zero correction; the
    # Python API says so (the CLI prints the note), the default's own fit does not
    with pytest.warns(NetworkNotKeptWarning, match=r"^training did not improve .*; model\.note keeps this"):
        fitted = fit_cpu(square_slide, tiny_config(lr=1e-12, weight_decay=0.0))
    assert fitted.validation["best_epoch"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetworkNotKeptWarning)
        default = fit(square_slide, "default", device="cpu")
    assert isinstance(fitted, ClassicalModel) and fitted.note == NOTHING_LEARNED
    assert fitted.config.classical.gene_residuals == "shrunk"
    assert fitted.params.describe() == default.params.describe()
    enhanced = fitted.enhance(square_slide)
    np.testing.assert_array_equal(enhanced.X, default.enhance(square_slide).X)
    assert np.isfinite(fitted.validation["default_val_loss"])
    # the record says what ran (the default's configuration) and what was asked for
    info = enhanced.uns["stentrans"]
    assert info["preset"] == "transformer" and info["config"]["preset"] == "default"
    assert info["requested_config"]["preset"] == "transformer"
    assert info["requested_config"]["optim"]["lr"] == pytest.approx(1e-12)
    assert "requested_config" not in default.enhance(square_slide).uns["stentrans"]


def test_a_saved_fallback_model_keeps_the_preset_it_was_asked_for(square_slide, tmp_path):
    from napari_stentrans.core.checkpoint import load_model, save_model

    fitted = fit_cpu(square_slide, tiny_config(lr=1e-12, weight_decay=0.0))
    loaded = load_model(save_model(fitted, tmp_path / "fallback.safetensors"))
    assert isinstance(loaded, ClassicalModel) and loaded.note == fitted.note
    assert loaded.requested.to_dict() == fitted.requested.to_dict()
    assert loaded.config.to_dict() == fitted.config.to_dict()


def test_a_kept_per_slide_correction_beat_the_default_on_held_out_genes(square_slide):
    from napari_stentrans.core.estimators.learned import LearnedModel

    fitted = fit_cpu(square_slide, tiny_config(epochs=3, lr=1e-3))
    judged = fitted.validation
    best = fitted.history["val_loss"][judged["best_epoch"]]
    assert np.isfinite(judged["default_val_score"])
    if isinstance(fitted, LearnedModel):
        assert best < judged["default_val_loss"]
        assert judged["val_score"] > judged["default_val_score"]
    else:  # the default's own model, chosen on this slide
        assert best >= judged["default_val_loss"] or judged["best_epoch"] == 0
        assert fitted.config.classical.gene_residuals == "shrunk" and fitted.params.residual is not None


def test_the_napari_worker_trains_with_a_core_left_to_the_viewer(square_slide):
    """While the widget's worker fits and enhances, torch and BLAS use one core fewer than the
    machine has (the event loop keeps one); both are restored when the run ends."""
    from threadpoolctl import threadpool_info

    from napari_stentrans._napari.actions import TrainingJob, run_job, worker_threads
    from napari_stentrans.core.display import DisplayFrame

    def blas() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    torch_before, blas_before = torch.get_num_threads(), blas()
    job = TrainingJob(
        "s",
        square_slide.copy(),
        np.zeros((0, 2), int),
        ["G0"],
        tiny_config(epochs=1),
        DisplayFrame.of(square_slide),
        "cpu",
    )
    during = []
    gen = run_job(job)
    with pytest.raises(StopIteration) as done:
        while True:
            if next(gen).kind == "step":
                during.append((torch.get_num_threads(), blas()))
    assert done.value.value is not None and during
    n = worker_threads()
    assert n == max(1, (os.cpu_count() or 1) - 1)
    assert all(t == min(n, torch_before) and b <= {n} for t, b in during), during
    assert torch.get_num_threads() == torch_before and blas() == blas_before
