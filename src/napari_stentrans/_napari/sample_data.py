"""npe2 sample data: synthetic Visium and ST slides, generated offline, with 2x ground truth."""

from __future__ import annotations

import anndata as ad
import numpy as np

from ..core.display import DisplayFrame
from ..synthetic import sample_slide
from .layers import enhanced_layers, slide_layers


def _truth(adata: ad.AnnData) -> ad.AnnData:
    truth = adata.uns["stentrans_truth"]
    out = ad.AnnData(X=np.asarray(truth["expression"]))
    out.var_names = [str(g) for g in truth["genes"]]
    out.obs["array_row"] = np.asarray(truth["array_row"])
    out.obs["array_col"] = np.asarray(truth["array_col"])
    return out


def _sample(name: str) -> list[tuple]:
    adata = sample_slide(name)
    layers = slide_layers(adata, name=name)
    genes = [attrs["name"] for _, attrs, _ in layers if attrs["metadata"]["stentrans"]["role"] == "gene"]
    slide_id = layers[0][1]["metadata"]["stentrans"]["slide_id"]
    truth = enhanced_layers(
        _truth(adata), genes, slide_id, DisplayFrame.of(adata), role="truth", suffix=" truth x2"
    )
    for _, attrs, _ in truth:
        attrs["visible"] = False
        attrs["metadata"]["stentrans"]["units"] = "expected counts per 10,000"
    # the truth goes under the gene layers (above the H&E), so the top of the layer list is the
    # most spatially variable measured gene, the one visible layer
    he = [layer for layer in layers if layer[1]["metadata"]["stentrans"]["role"] == "he"]
    rest = [layer for layer in layers if layer[1]["metadata"]["stentrans"]["role"] != "he"]
    return he + truth + rest


def synthetic_visium() -> list[tuple]:
    """A synthetic Visium slide (hex lattice, three holes) and its noise-free 2x truth."""
    return _sample("synthetic_visium")


def synthetic_st() -> list[tuple]:
    """A synthetic legacy ST slide (square lattice) and its noise-free 2x truth."""
    return _sample("synthetic_st")
