"""Streaming the enhanced matrix to .h5ad gene batch by gene batch: same file, bounded memory."""

from __future__ import annotations

import threading
import tracemalloc

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers import block_sites, fit_cpu, fit_network, make_slide, tiny_config
from napari_stentrans.core.config import preset
from napari_stentrans.core.errors import TrainingStopped
from napari_stentrans.core.estimators import base as base_module
from napari_stentrans.core.io import read
from napari_stentrans.core.lattice import Lattice
from napari_stentrans.core.streaming import CHUNK_GENES


@pytest.fixture(scope="module")
def slide():
    r, c = block_sites("hex", 14, 28)
    return make_slide(r, c, "hex", n_genes=150, seed=2)


def _same_slide(got: ad.AnnData, expected: ad.AnnData) -> None:
    np.testing.assert_array_equal(np.asarray(got.X), np.asarray(expected.X))
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    pd.testing.assert_frame_equal(got.var, expected.var)
    assert (got.layers["measured"] != expected.layers["measured"]).nnz == 0
    np.testing.assert_array_equal(got.obsm["spatial"], expected.obsm["spatial"])
    assert sorted(got.uns["stentrans"]) == sorted(expected.uns["stentrans"])


@pytest.mark.parametrize("name", ["default", "transformer"])
def test_streamed_file_equals_the_in_memory_result(slide, tmp_path, name):
    # a tiny network is kept whatever validation says (the gate would refuse it)
    config = tiny_config("hex", restore_best=False)
    model = fit_network(slide, config) if name == "transformer" else fit_cpu(slide, preset("default", "hex"))
    assert model.uses_network == (name == "transformer")
    expected_path = tmp_path / "memory.h5ad"
    model.enhance(slide, device="cpu").write_h5ad(expected_path)
    events = []  # the CLI's bar shows the write's progress: it was seconds of silence after the fit
    written = model.write(
        slide, tmp_path / "streamed.h5ad", device="cpu", batch_size=16, callback=events.append
    )
    expected = ad.read_h5ad(expected_path)
    n_sites, n_genes = expected.shape
    assert {(e.kind, e.message, e.n_steps) for e in events} == {
        ("stage", f"writing {n_genes} genes at {n_sites} sites", n_genes)
    }
    assert [e.step for e in events] == [0, *range(16, n_genes, 16), n_genes]
    assert [e.elapsed for e in events] == sorted(e.elapsed for e in events)
    got = ad.read_h5ad(written.path)
    _same_slide(got, expected)
    assert written.shape == expected.shape and written.shape[1] > 16  # several batches
    np.testing.assert_allclose(written.log_variance, np.log1p(expected.X).var(axis=0), rtol=1e-5)
    with h5py.File(written.path) as f:  # chunked so one gene's image is a few small reads
        assert f["X"].chunks == (expected.n_obs, min(expected.n_vars, CHUNK_GENES))


def test_backed_reading_of_a_streamed_file_gives_gene_columns(slide, tmp_path):
    model = fit_cpu(slide, "default")
    written = model.write(slide, tmp_path / "out.h5ad", genes=["G3", "G7"], device="cpu")
    backed = ad.read_h5ad(written.path, backed="r")
    try:
        column = np.asarray(backed[:, "G7"].X).ravel()
    finally:
        backed.file.close()
    in_memory = model.enhance(slide, genes=["G3", "G7"], device="cpu")
    np.testing.assert_array_equal(column, np.asarray(in_memory[:, "G7"].X).ravel())


def _sparse_slide(n_genes: int) -> ad.AnnData:
    """A hex slide with Visium-like sparsity (about 3 % non-zero), so the input is small."""
    r, c = block_sites("hex", 40, 80)
    rng = np.random.default_rng(0)
    counts = sp.random(len(r), n_genes - 1, density=0.03, format="csr", random_state=rng, dtype=np.float32)
    counts.data = np.ceil(counts.data * 5)
    counts = sp.hstack([np.full((len(r), 1), 3.0, np.float32), counts])  # every spot has counts
    lattice = Lattice("hex")
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"array_row": r, "array_col": c}, index=[f"bc{i}" for i in range(len(r))]),
        var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]),
    )
    adata.uns["stentrans_lattice"] = {"kind": "hex", "pitch_um": float(lattice.pitch_um), "source": "test"}
    return adata


def _peak_bytes(function) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_memory_does_not_grow_with_the_gene_count(tmp_path):
    """Peak Python/NumPy memory while streaming stays far below the enhanced matrix it writes."""
    adata = _sparse_slide(3000)
    model = fit_cpu(adata, preset("default", "hex", n_train_genes=200))
    genes = list(adata.var_names)
    x_bytes = 4 * 4 * adata.n_obs * adata.n_vars  # about 4 output sites per spot, float32
    streamed = _peak_bytes(
        lambda: model.write(adata, tmp_path / "s.h5ad", genes=genes, device="cpu", batch_size=64)
    )
    in_memory = _peak_bytes(lambda: model.enhance(adata, genes=genes, device="cpu"))
    assert in_memory > x_bytes * 0.9  # the in-memory result holds the whole matrix
    assert streamed < x_bytes / 3, (streamed, x_bytes)


def test_streaming_refuses_to_replace_the_slide_it_read(slide, tmp_path):
    path = tmp_path / "slide.h5ad"
    slide.write_h5ad(path)
    original = path.read_bytes()
    adata = read(path)
    model = fit_cpu(adata, "default")
    with pytest.raises(ValueError, match="refusing to overwrite the input"):
        model.write(adata, path, device="cpu")
    assert path.read_bytes() == original


def test_stop_while_streaming_keeps_the_previous_file(slide, tmp_path, monkeypatch):
    out = tmp_path / "out.h5ad"
    model = fit_cpu(slide, preset("default", "hex"))
    model.write(slide, out, device="cpu")
    previous = out.read_bytes()
    stop = threading.Event()
    real_batches = base_module.Predictor.batches
    seen = []

    def stop_after_two_batches(self, gene_idx, batch_size, stop_flag):
        for batch in real_batches(self, gene_idx, batch_size, stop_flag):
            seen.append(batch[0])
            yield batch
            if len(seen) == 2:
                stop.set()

    monkeypatch.setattr(base_module.Predictor, "batches", stop_after_two_batches)
    with pytest.raises(TrainingStopped, match="nothing was written"):
        model.write(slide, out, device="cpu", batch_size=16, stop=stop)
    assert seen == [0, 16]
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]  # no temporary left
