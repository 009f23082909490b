"""Enhance a slide straight into an ``.h5ad`` file, one gene batch at a time.

:func:`~napari_stentrans.core.enhance.enhance` returns the whole enhanced matrix in memory:
about 1.4 GB for a full Visium slide (19,685 output sites) at 18,000 genes. Here the
metadata (obs, var, layers, uns) is written first, ``X`` is created on disk as a chunked
float32 array, and each gene batch is written into it as soon as it is predicted, so peak
memory is set by the batch and the input, not by the number of genes. The file is the same
AnnData that ``enhance(...).write_h5ad`` gives (``X`` chunked instead of contiguous) and is
written atomically: a stop, an error or Ctrl-C leaves no file and keeps any previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from .enhance import GeneChoice, SitePredictor, assemble, prepare_enhancement
from .files import atomic_path, refuse_inputs
from .presets import TrainConfig
from .slide import MaskLike
from .training import StopFlag, TrainedModel

# (sites, genes) per HDF5 chunk, about 1 MB: a gene image reads a few chunks and so does one site
CHUNK_SITES, CHUNK_GENES = 4096, 64


@dataclass
class StreamedSlide:
    """Summary of an enhanced slide written by :func:`write_enhanced`.

    ``obs`` and ``var`` are the file's tables; ``log_variance`` is each gene's variance of
    ``log1p`` predicted counts over the sites (computed while writing, e.g. to pick genes to show).
    Open the matrix with ``anndata.read_h5ad(path, backed="r")``.
    """

    path: Path
    obs: pd.DataFrame
    var: pd.DataFrame
    log_variance: np.ndarray
    model: TrainedModel

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.obs), len(self.var)


def write_enhanced(
    adata: ad.AnnData,
    path: str | Path,
    model: TrainedModel | None = None,
    *,
    mask: MaskLike = None,
    genes: GeneChoice = None,
    config: TrainConfig | None = None,
    device: str | None = None,
    stop: StopFlag | None = None,
    callback=None,
    batch_size: int = 256,
    inputs: tuple[str | Path | None, ...] = (),
    **train_options,
) -> StreamedSlide:
    """Enhance a slide and stream the result into ``path`` (``.h5ad``) gene batch by gene batch.

    Parameters
    ----------
    adata, model, mask, genes, config, device, stop, callback, train_options
        As for :func:`~napari_stentrans.core.enhance.enhance`.
    path
        The ``.h5ad`` to write. It never replaces the slide's own source file nor ``inputs``.
    batch_size
        Genes predicted and written at a time; memory grows with it, not with the gene count.
    inputs
        Further files the output must not replace.

    Returns
    -------
    StreamedSlide
        Path, obs, var and per-gene variance of the written slide, and the model used.
    """
    path = Path(path)
    source = adata.uns.get("stentrans_lattice", {}).get("source", "")
    refuse_inputs(path, [*inputs, *([source] if source else [])])
    job = prepare_enhancement(adata, model, mask, genes, config, device, stop, callback, train_options)
    skeleton = assemble(adata, job, counts=None)
    n_sites, n_genes = skeleton.shape
    predictor = SitePredictor(job.model, job.slide, job.sites, job.device)
    log_variance = np.zeros(n_genes)
    with atomic_path(path) as tmp:
        skeleton.write_h5ad(tmp)
        with h5py.File(tmp, "r+") as f:
            x = f.create_dataset(
                "X",
                shape=(n_sites, n_genes),
                dtype="float32",
                chunks=(min(n_sites, CHUNK_SITES), min(n_genes, CHUNK_GENES)),
            )
            x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})  # anndata's dense array
            for start, counts in predictor.batches(job.gene_idx, batch_size, stop):
                x[:, start : start + counts.shape[1]] = counts
                log_variance[start : start + counts.shape[1]] = np.log1p(counts).var(axis=0)
    predictor.release()
    return StreamedSlide(path, skeleton.obs, skeleton.var, log_variance, job.model)


__all__ = ["write_enhanced", "StreamedSlide"]
