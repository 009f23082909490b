"""Faults: stop and Ctrl-C during enhancement or writing, out-of-memory, interrupted writes."""

from __future__ import annotations

import threading

import anndata as ad
import numpy as np
import pytest
import torch

from helpers import block_sites, fit_network, make_slide, tiny_config
from napari_stentrans.cli import EXIT_INTERRUPT, main
from napari_stentrans.core.errors import TrainingStopped
from napari_stentrans.core.estimators import base as base_module
from napari_stentrans.core.estimators.base import OutOfMemoryFallback
from napari_stentrans.core.files import write_h5ad
from napari_stentrans.core.sites import output_sites
from napari_stentrans.core.slide import Slide

FAST = ["--epochs", "1", "--train-genes", "16", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def slide():
    r, c = block_sites("square", 12, 12)
    return make_slide(r, c, "square", n_genes=40, seed=4)


@pytest.fixture(scope="module")
def learned(slide):
    """A transformer model whose network runs at inference (restore_best off)."""
    return fit_network(slide, tiny_config("square", restore_best=False))


def _files(folder):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_out_of_memory_falls_back_to_smaller_gene_batches(slide, learned, monkeypatch):
    """A device OOM on large batches halves the batch until it fits; the result is unchanged."""
    prepared = Slide.from_adata(slide)
    sites = output_sites(prepared)
    genes = np.arange(len(prepared.genes))
    expected, _ = learned.predict(prepared, sites, genes, device="cpu", batch_size=32)
    original = learned.build
    seen_batches = []

    def build_with_small_memory(device="cpu"):
        net = original(device)
        forward = net.forward

        def limited(x, base=None):
            seen_batches.append(x.shape[0])
            if x.shape[0] > 5:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return forward(x, base)

        net.forward = limited
        return net

    monkeypatch.setattr(learned, "build", build_with_small_memory)
    with pytest.warns(OutOfMemoryFallback, match="continuing with 4 genes per batch"):
        got, _ = learned.predict(prepared, sites, genes, device="cpu", batch_size=32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert seen_batches[:4] == [32, 16, 8, 4] and max(seen_batches[4:]) == 4


def test_stop_during_enhancement_raises_and_returns_nothing(slide, learned):
    calls = {"n": 0}

    class StopOnSecondBatch:
        def is_set(self):
            calls["n"] += 1
            return calls["n"] >= 2

    prepared = Slide.from_adata(slide)
    with pytest.raises(TrainingStopped, match="nothing was written"):
        learned.predict(
            prepared,
            output_sites(prepared),
            np.arange(40),
            device="cpu",
            batch_size=8,
            stop=StopOnSecondBatch(),
        )
    assert calls["n"] == 2


def test_napari_worker_body_stopped_during_enhancement_returns_none(slide):
    """The widget's worker: Stop pressed after training, while enhancing, gives no result."""
    from napari_stentrans._napari.actions import TrainingJob, run_job
    from napari_stentrans.core.display import DisplayFrame

    stop = threading.Event()
    job = TrainingJob(
        "s", slide.copy(), np.zeros((0, 2), int), ["G0"], tiny_config("square"), DisplayFrame.of(slide), "cpu"
    )
    gen = run_job(job, stop)
    events = []
    with pytest.raises(StopIteration) as done:
        while True:
            event = next(gen)
            events.append(event.kind)
            if event.kind == "finished":
                stop.set()  # pressed Stop once training ended: enhancement must not complete
    assert events[-1] == "finished" and done.value.value is None


def test_ctrl_c_during_enhancement_leaves_no_file(slide, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first gene batch went to disk: no output, no model, no temporary."""
    path = tmp_path / "slide.h5ad"
    slide.write_h5ad(path)
    before = _files(tmp_path)
    real_batches = base_module.Predictor.batches
    written = []

    def interrupted_after_one_batch(self, *args, **kwargs):
        for batch in real_batches(self, *args, **kwargs):
            written.append(batch[0])
            yield batch
            raise KeyboardInterrupt

    monkeypatch.setattr(base_module.Predictor, "batches", interrupted_after_one_batch)
    code = main(
        [
            "enhance",
            str(path),
            "-o",
            str(tmp_path / "out.h5ad"),
            "--save-model",
            str(tmp_path / "m.safetensors"),
            *FAST,
        ]
    )
    assert code == EXIT_INTERRUPT and "nothing was written" in capsys.readouterr().err
    assert written == [0]
    assert _files(tmp_path) == before


def test_ctrl_c_while_writing_keeps_the_previous_output(slide, tmp_path, monkeypatch, capsys):
    path = tmp_path / "slide.h5ad"
    slide.write_h5ad(path)
    out = tmp_path / "out.h5ad"
    assert main(["enhance", str(path), "-o", str(out), *FAST]) == 0
    previous = out.read_bytes()
    real_write = ad.AnnData.write_h5ad

    def write_half_then_interrupt(self, filename, *args, **kwargs):
        real_write(self, filename, *args, **kwargs)
        data = open(filename, "rb").read()
        open(filename, "wb").write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write_half_then_interrupt)
    code = main(["enhance", str(path), "-o", str(out), "--overwrite", "--seed", "3", *FAST])
    assert code == EXIT_INTERRUPT
    assert out.read_bytes() == previous  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad", "slide.h5ad"]  # no temporary left


def test_writer_refuses_to_replace_its_input(slide, tmp_path):
    path = tmp_path / "slide.h5ad"
    slide.write_h5ad(path)
    original = path.read_bytes()
    with pytest.raises(ValueError, match="input"):
        write_h5ad(slide, path, inputs=[path])
    assert path.read_bytes() == original


@pytest.mark.parametrize("name", ["default", "transformer"])
def test_same_seed_gives_a_bit_identical_enhanced_slide_on_cpu(slide, name):
    from napari_stentrans.core.config import preset
    from napari_stentrans.core.fitting import enhance

    config = preset(
        name,
        "square",
        epochs=1 if name == "transformer" else 0,
        n_train_genes=16,
        batch_size=8,
        patience=None,
        seed=7,
        restore_best=False,
    )
    first = enhance(slide, config=config, device="cpu")
    second = enhance(slide, config=config, device="cpu")
    assert first.X.dtype == np.float32
    np.testing.assert_array_equal(first.X, second.X)  # bit for bit, not approximately
