"""The enhanced slide streamed into an ``.h5ad`` file, one gene batch at a time.

An in-memory enhanced matrix is about 1.4 GB for a full Visium slide (19,685 output sites) at
18,000 genes. Here the metadata (obs, var, layers, uns) is written first, ``X`` is created on
disk as a chunked float32 array, and each gene batch is written into it as soon as it is
predicted, so peak memory is set by the batch and the input, not by the number of genes. The
file is the same AnnData that ``enhance(...).write_h5ad`` gives (``X`` chunked instead of
contiguous) and is written atomically: a stop, an error or Ctrl-C leaves no file and keeps any
previous one. Use it through :meth:`FittedModel.write <.estimators.base.FittedModel.write>`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .estimators.base import MeasuredCounts, Predictor, StopFlag
from .files import atomic_path, take_images, write_images
from .output import assemble
from .patterns import PatternCheck
from .sites import OutputSites
from .slide import Slide

# (sites, genes) per HDF5 chunk, about 1 MB: a gene image reads a few chunks and so does one site
CHUNK_SITES, CHUNK_GENES = 4096, 64


@dataclass
class StreamedSlide:
    """Summary of an enhanced slide written to disk.

    ``obs`` and ``var`` are the file's tables; ``log_variance`` is each gene's variance of
    ``log1p`` predicted counts over the sites (computed while writing, e.g. to pick genes to
    show); ``uns`` is the file's ``uns["stentrans"]``. Open the matrix with
    ``anndata.read_h5ad(path, backed="r")``.
    """

    path: Path
    obs: pd.DataFrame = field(repr=False)
    var: pd.DataFrame = field(repr=False)
    log_variance: np.ndarray = field(repr=False)
    uns: dict = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.obs), len(self.var)

    def __repr__(self) -> str:
        return f"StreamedSlide({str(self.path)!r}, {self.shape[0]} sites x {self.shape[1]} genes)"


def write_streamed(
    slide: Slide,
    model,
    gene_idx: np.ndarray,
    sites: OutputSites,
    predictor: Predictor,
    path: str | Path,
    batch_size: int = 256,
    stop: StopFlag | None = None,
    measured: MeasuredCounts | None = None,
    progress: Callable[[int], None] | None = None,
) -> StreamedSlide:
    """Write the enhanced AnnData to ``path``, ``X`` filled gene batch by gene batch (atomically).

    ``measured``, when given, puts the measured counts at measured sites after the pattern
    check has seen each batch's estimate. ``progress`` is called with the number of genes
    written so far after every batch.
    """
    path = Path(path)
    from anndata.io import write_elem

    skeleton = assemble(slide, model, gene_idx, sites, None, predictor)
    n_sites, n_genes = skeleton.shape
    log_variance = np.zeros(n_genes)
    check = PatternCheck(slide, sites, gene_idx, predictor.depth)
    images = take_images(skeleton.uns)  # written compressed (anndata would not)
    with atomic_path(path) as tmp:
        skeleton.write_h5ad(tmp)
        write_images(tmp, images)
        with h5py.File(tmp, "r+") as f:
            x = f.create_dataset(
                "X",
                shape=(n_sites, n_genes),
                dtype="float32",
                chunks=(min(n_sites, CHUNK_SITES), min(n_genes, CHUNK_GENES)),
            )
            x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})  # anndata's dense array
            for start, counts in predictor.batches(gene_idx, batch_size, stop):
                np.clip(counts, 0, None, out=counts)  # counts are never negative (raw-count models)
                check.add(start, counts)
                if measured is not None:
                    measured.put(counts, gene_idx[start : start + counts.shape[1]])
                x[:, start : start + counts.shape[1]] = counts
                log_variance[start : start + counts.shape[1]] = np.log1p(counts).var(axis=0)
                if progress is not None:
                    progress(start + counts.shape[1])
            patterns = check.result()
            write_elem(f["uns"]["stentrans"], "patterns", patterns)
    uns = dict(skeleton.uns["stentrans"], patterns=patterns)
    return StreamedSlide(path, skeleton.obs, skeleton.var, log_variance, uns)


__all__ = ["write_streamed", "StreamedSlide", "CHUNK_SITES", "CHUNK_GENES"]
