"""The DIST-like residual CNN baseline: architecture, geometry of its rasters, and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import block_sites, make_slide
from napari_stentrans.core.classical import linear_weights
from napari_stentrans.core.estimators.cnn import CNNEstimator, CNNSettings, ResidualCNN
from napari_stentrans.core.evaluate import evaluate, make_split
from napari_stentrans.core.lattice import Lattice
from napari_stentrans.core.sites import sites_at
from napari_stentrans.core.slide import Slide


def test_architecture_is_dist_like():
    net = ResidualCNN()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and all(c.kernel_size == (3, 3) for c in convs)
    assert [c.out_channels for c in convs] == [64, 64, 64, 64, 64, 1]
    x = torch.randn(2, 1, 9, 11)
    np.testing.assert_array_equal(net(x).detach().numpy(), x.numpy())  # input skip, zero tail


@pytest.mark.parametrize("kind", ["hex", "square"])
@pytest.mark.parametrize("half_pitch", [True, False])
def test_untrained_network_is_linear_interpolation_at_the_right_sites(kind, half_pitch):
    """Epoch 0 predicts exactly what Delaunay interpolation predicts at each target position."""
    lattice = Lattice(kind)
    row, col = block_sites(kind, 10, 14)
    slide = Slide.from_adata(make_slide(row, col, kind, n_genes=5))
    values = slide.expression(np.arange(5))
    if half_pitch:  # every new half-pitch site among the measured ones
        tr, tc = lattice.half_pitch_children(row, col)
        tr, tc = tr[:, 1:].ravel(), tc[:, 1:].ravel()
    else:  # a few measured sites (child 0), on the slide's own raster
        tr, tc = 2 * row[::7], 2 * col[::7]
    model = CNNEstimator(settings=CNNSettings(epochs=0)).fit(slide, genes=np.arange(5), device="cpu")
    predictor = model.predictor(slide, sites_at(slide, tr, tc))
    assert predictor.raster.lattice == lattice and (half_pitch != sites_at(slide, tr, tc).on_input_lattice)
    pos = lattice.physical(row, col) / lattice.pitch_um
    expected = linear_weights(pos, lattice.physical(tr, tc, 2.0) / lattice.pitch_um) @ values
    np.testing.assert_allclose(predictor.normalised(values), expected, atol=1e-5)
    assert model.best_epoch == 0


def test_training_improves_the_pairs_and_predicts_every_gene():
    """Validation on held-out genes accepts trained weights, and the prediction stays sound."""
    row, col = block_sites("square", 24, 24)
    slide = make_slide(row, col, "square", n_genes=60, seed=3)
    split = make_split(slide, "heldout", min_detection=0.0)
    report = evaluate(slide, "heldout", methods=("linear", "residual_cnn"), device="cpu", dataset="t")
    cnn = report["methods"]["residual_cnn"]
    assert cnn["n_genes_scored"] == len(split.genes)
    assert cnn["best_epoch"] >= 1  # a trained epoch beat plain interpolation on validation genes
    assert (
        cnn["median_pcc"] > 0.7 and abs(cnn["median_pcc"] - report["methods"]["linear"]["median_pcc"]) < 0.1
    )
