"""A DIST-like residual CNN: the convolutional baseline of the honest benchmark.

Architecture as published for DIST (Zhao et al. 2023): 3x3 convolutions of width 64, two
residual blocks and a skip from the input to the output, so the network learns a correction of
an interpolated image. It works on library-size-normalised log expression in the lattice's
index raster (:class:`.lattice.IndexRaster`, where neighbouring pixels are neighbouring spots
for square and hexagonal lattices alike), one gene per batch item; depth is interpolated
linearly in log space and multiplied back.

It is trained the way stEnTrans is, on self-supervised pairs of the slide it is given: each of
the four lattice-preserving cosets in turn is the input, linearly interpolated to every spot of
the slide, and the loss is taken at the spots the input did not contain. At inference the
whole slide is the input, interpolated to the sites to predict. The last convolution starts at
zero, so epoch 0 is plain linear interpolation; validation on held-out genes keeps the best
epoch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .classical import linear_weights
from .lattice import IndexRaster, Lattice

WIDTH = 64
RECEPTIVE_RADIUS = 6  # pixels: six 3x3 convolutions


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class ResidualCNN(nn.Module):
    """3x3 conv (1 -> 64), two residual blocks, 3x3 conv (64 -> 1), plus the input."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.Sequential(ResidualBlock(width), ResidualBlock(width))
        self.tail = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.blocks(torch.relu(self.head(x))))


def _interpolated_image(
    raster: IndexRaster,
    weights,
    source_values: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
) -> np.ndarray:
    """genes x H x W image: ``weights @ source_values`` at the sites (row, col), 0 elsewhere."""
    return raster.rasterize((weights @ source_values).astype(np.float32), row, col)


def _crop_around(raster: IndexRaster, row: np.ndarray, col: np.ndarray) -> IndexRaster:
    """The part of ``raster`` within the network's receptive field of the sites (row, col).

    Pixels further away cannot change the prediction at the sites, so leaving them out gives
    the same result for less work (hole filling predicts a few blobs of a large slide).
    """
    p, q = raster.pixels(row, col)
    margin = RECEPTIVE_RADIUS + 1
    p0, q0 = max(0, int(p.min()) - margin), max(0, int(q.min()) - margin)
    p1, q1 = min(raster.height, int(p.max()) + margin + 1), min(raster.width, int(q.max()) + margin + 1)
    p0, q0 = p0 - p0 % 2, q0 - q0 % 2  # keep an even origin
    return IndexRaster(raster.lattice, raster.u0 + p0, raster.v0 + q0, p1 - p0, q1 - q0)


def fit_predict(
    values: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    lattice: Lattice,
    target_row: np.ndarray,
    target_col: np.ndarray,
    half_pitch: bool,
    *,
    epochs: int = 10,
    n_train_genes: int = 512,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[np.ndarray, dict]:
    """Train on the slide's coset pairs, then predict normalised expression at the targets.

    Parameters
    ----------
    values
        ``(n_spots, n_genes)`` normalised expression of the spots the method may see.
    row, col
        Their lattice coordinates.
    target_row, target_col
        Sites to predict: in half-pitch coordinates of the slide when ``half_pitch`` (measured
        spot (r, c) is (2r, 2c) there), else in the slide's own coordinates.
    epochs, n_train_genes, batch_size, lr, seed, device
        Training settings: most variable genes trained on, genes per step.

    Returns
    -------
    ``(n_targets, n_genes)`` predictions and a dict with the best epoch.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    positions = lattice.physical(row, col) / lattice.pitch_um
    raster = IndexRaster.covering(lattice, row, col, pad=2)
    coset = lattice.coset(row, col)
    pairs = []
    for c in range(4):
        keep = coset == c
        if keep.sum() >= 3 and (~keep).sum() >= 3:
            pairs.append((keep, linear_weights(positions[keep], positions)))
    order = np.argsort(values.var(axis=0))[::-1]
    genes = order[: min(n_train_genes, values.shape[1])]
    n_val = max(1, len(genes) // 10) if len(genes) >= 10 else 0
    val_genes = rng.permutation(genes)[:n_val]
    train_genes = np.setdiff1d(genes, val_genes)
    target_img = torch.from_numpy(raster.rasterize(values.astype(np.float32), row, col))
    loss_masks = [torch.from_numpy(raster.mask(row[~keep], col[~keep])) for keep, _ in pairs]
    inputs = [torch.from_numpy(_interpolated_image(raster, w, values[keep], row, col)) for keep, w in pairs]

    net = ResidualCNN().to(dev)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)

    def pair_loss(k: int, gene_batch: np.ndarray) -> torch.Tensor:
        x = inputs[k][gene_batch].unsqueeze(1).to(dev)
        y = target_img[gene_batch].to(dev)
        m = loss_masks[k].to(dev)
        return ((net(x).squeeze(1) - y)[:, m] ** 2).mean()

    def validation() -> float:
        if n_val == 0 or not pairs:
            return 0.0
        with torch.no_grad():
            return float(np.mean([pair_loss(k, val_genes).item() for k in range(len(pairs))]))

    best = (validation(), 0, {k: v.clone() for k, v in net.state_dict().items()})
    for epoch in range(1, epochs + 1 if pairs else 1):  # no coset pair: nothing to learn from
        net.train()
        shuffled = rng.permutation(train_genes)
        for start in range(0, len(shuffled), batch_size):
            batch = shuffled[start : start + batch_size]
            k = int(rng.integers(len(pairs)))
            optimiser.zero_grad()
            loss = pair_loss(k, batch)
            loss.backward()
            optimiser.step()
        net.eval()
        val = validation()
        if val < best[0]:
            best = (val, epoch, {k: v.clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[2])

    # inference: the whole slide as input, interpolated to every site of the output raster
    if half_pitch:
        in_row, in_col = 2 * np.asarray(row), 2 * np.asarray(col)
    else:
        in_row, in_col = np.asarray(row), np.asarray(col)
    target_row, target_col = np.asarray(target_row), np.asarray(target_col)
    all_row = np.concatenate([in_row, target_row])
    all_col = np.concatenate([in_col, target_col])
    scale = 2.0 if half_pitch else 1.0
    out_raster = _crop_around(IndexRaster.covering(lattice, all_row, all_col, pad=2), target_row, target_col)
    inside = out_raster.contains(all_row, all_col)
    all_row, all_col = all_row[inside], all_col[inside]
    weights = linear_weights(positions, lattice.physical(all_row, all_col, scale) / lattice.pitch_um)
    out = np.empty((len(target_row), values.shape[1]), dtype=np.float32)
    flat = out_raster.flat_index(target_row, target_col)
    with torch.no_grad():
        for start in range(0, values.shape[1], 4 * batch_size):
            cols = slice(start, start + 4 * batch_size)
            x = torch.from_numpy(_interpolated_image(out_raster, weights, values[:, cols], all_row, all_col))
            pred = net(x.unsqueeze(1).to(dev)).squeeze(1).reshape(x.shape[0], -1)
            out[:, cols] = pred[:, flat].T.cpu().numpy()
    return out, {"best_epoch": int(best[1])}
