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

import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..classical import denormalize, linear_weights
from ..config import DEFAULT_RUNTIME, Runtime
from ..device import resolve_device
from ..errors import InputError
from ..lattice import IndexRaster, Lattice
from ..sites import OutputSites
from ..slide import Slide
from .base import Estimator, FitRequest, FittedModel, Predictor, TrainEvent, stage_event

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


@dataclass
class CNNSettings:
    """Training settings of the baseline: epochs, most variable genes trained on, genes a step, Adam lr."""

    epochs: int = 10
    n_train_genes: int = 512
    batch_size: int = 32
    lr: float = 1e-3


def train_cnn(
    values: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    lattice: Lattice,
    settings: CNNSettings,
    seed: int,
    device,
) -> tuple[dict[str, torch.Tensor], int]:
    """Train on the slide's coset pairs; the weights of the best validation epoch and that epoch.

    Parameters
    ----------
    values
        ``(n_spots, n_genes)`` normalised expression of the spots the method may see.
    row, col
        Their lattice coordinates.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    positions = lattice.physical(row, col) / lattice.pitch_um
    raster = IndexRaster.covering(lattice, row, col, pad=2)
    coset = lattice.coset(row, col)
    pairs = []
    for c in range(4):
        keep = coset == c
        if keep.sum() >= 3 and (~keep).sum() >= 3:
            pairs.append((keep, linear_weights(positions[keep], positions)))
    order = np.argsort(values.var(axis=0))[::-1]
    genes = order[: min(settings.n_train_genes, values.shape[1])]
    n_val = max(1, len(genes) // 10) if len(genes) >= 10 else 0
    val_genes = rng.permutation(genes)[:n_val]
    train_genes = np.setdiff1d(genes, val_genes)
    target_img = torch.from_numpy(raster.rasterize(values.astype(np.float32), row, col))
    loss_masks = [torch.from_numpy(raster.mask(row[~keep], col[~keep])) for keep, _ in pairs]
    inputs = [torch.from_numpy(_interpolated_image(raster, w, values[keep], row, col)) for keep, w in pairs]

    net = ResidualCNN().to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)

    def pair_loss(k: int, gene_batch: np.ndarray) -> torch.Tensor:
        x = inputs[k][gene_batch].unsqueeze(1).to(device)
        y = target_img[gene_batch].to(device)
        m = loss_masks[k].to(device)
        return ((net(x).squeeze(1) - y)[:, m] ** 2).mean()

    def validation() -> float:
        if n_val == 0 or not pairs:
            return 0.0
        with torch.no_grad():
            return float(np.mean([pair_loss(k, val_genes).item() for k in range(len(pairs))]))

    best = (validation(), 0, {k: v.clone() for k, v in net.state_dict().items()})
    for epoch in range(1, settings.epochs + 1 if pairs else 1):  # no coset pair: nothing to learn from
        net.train()
        shuffled = rng.permutation(train_genes)
        for start in range(0, len(shuffled), settings.batch_size):
            batch = shuffled[start : start + settings.batch_size]
            k = int(rng.integers(len(pairs)))
            optimiser.zero_grad()
            loss = pair_loss(k, batch)
            loss.backward()
            optimiser.step()
        net.eval()
        val = validation()
        if val < best[0]:
            best = (val, epoch, {k: v.clone() for k, v in net.state_dict().items()})
    return {k: v.cpu() for k, v in best[2].items()}, int(best[1])


@dataclass(eq=False, repr=False)  # FittedModel.__repr__: one short line
class CNNModel(FittedModel):
    """The trained baseline CNN (per-gene images; depth interpolated linearly in log space)."""

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    lattice_kind: str
    training_genes: list[str] = field(repr=False)
    best_epoch: int
    history: dict = field(default_factory=dict, repr=False)
    validation: dict = field(default_factory=dict, repr=False)
    name: str = "residual_cnn"

    @property
    def uses_network(self) -> bool:
        return True

    def describe(self) -> dict:
        return {
            "preset": self.name,
            "estimator": "DIST-like residual CNN",
            "n_training_genes": len(self.training_genes),
            "best_epoch": self.best_epoch,
        }

    def predictor(
        self, slide: Slide, sites: OutputSites, *, runtime: Runtime = DEFAULT_RUNTIME, classical: str = "auto"
    ) -> CNNPredictor:
        return CNNPredictor(self, slide, sites, resolve_device(runtime.device))


class CNNPredictor(Predictor):
    """Inference: the whole slide is the input, interpolated to every site of the output raster.

    Sites on the slide's own lattice (lost spots) are predicted on its raster; half-pitch sites
    on the raster of the 2x lattice.
    """

    def __init__(self, model: CNNModel, slide: Slide, sites: OutputSites, device: torch.device) -> None:
        super().__init__()
        self.slide, self.device = slide, device
        self.net = ResidualCNN().to(device)
        self.net.load_state_dict(model.state_dict)
        self.net.eval()
        lattice = slide.lattice
        usable = slide.usable
        row, col = slide.row[usable], slide.col[usable]
        half_pitch = not sites.on_input_lattice
        if half_pitch:
            in_row, in_col = 2 * row, 2 * col
            target_row, target_col = sites.row, sites.col
        else:
            in_row, in_col = row, col
            target_row, target_col = sites.fine_row, sites.fine_col
        all_row = np.concatenate([in_row, target_row])
        all_col = np.concatenate([in_col, target_col])
        scale = 2.0 if half_pitch else 1.0
        self.raster = _crop_around(
            IndexRaster.covering(lattice, all_row, all_col, pad=2), target_row, target_col
        )
        inside = self.raster.contains(all_row, all_col)
        self.all_row, self.all_col = all_row[inside], all_col[inside]
        positions = slide.positions(usable)
        self.weights = linear_weights(
            positions, lattice.physical(self.all_row, self.all_col, scale) / lattice.pitch_um
        )
        self.flat = self.raster.flat_index(target_row, target_col)
        log_depth = np.log(slide.depth[usable])
        self.depth = np.exp(linear_weights(positions, sites.positions(slide)) @ log_depth)

    def normalised(self, values: np.ndarray) -> np.ndarray:
        """The network's estimate ``(n_sites, genes)`` of log-normalised expression at the sites."""
        x = torch.from_numpy(
            _interpolated_image(self.raster, self.weights, values, self.all_row, self.all_col)
        )
        with torch.no_grad():
            pred = self.net(x.unsqueeze(1).to(self.device)).squeeze(1).reshape(x.shape[0], -1)
        return pred[:, self.flat].T.cpu().numpy()

    def predict_counts(self, gene_idx: np.ndarray) -> np.ndarray:
        estimate = self.normalised(self.slide.expression(gene_idx, "log1p"))
        return denormalize(np.clip(estimate, 0, None), self.depth)


class CNNEstimator(Estimator):
    """Trains the DIST-like residual CNN on the given genes of the slide (the evaluation's baseline)."""

    name = "residual_cnn"

    def __init__(self, seed: int = 0, settings: CNNSettings | None = None) -> None:
        self.seed = seed
        self.settings = settings or CNNSettings()

    def events(self, request: FitRequest) -> Generator[TrainEvent, None, CNNModel]:
        slide, genes, device = request.slide, request.genes, request.device
        start = time.perf_counter()
        if genes is None:
            raise InputError("the CNN baseline trains on given genes: pass genes=...")
        torch_device = resolve_device(device)
        dev = str(torch_device)
        what = f"training the CNN baseline ({self.settings.epochs} epochs, {len(genes)} genes)"
        yield stage_event(what, 0, 1, time.perf_counter() - start, dev)
        usable = slide.usable
        values = slide.expression(np.asarray(genes), "log1p")
        state, best_epoch = train_cnn(
            values,
            slide.row[usable],
            slide.col[usable],
            slide.lattice,
            self.settings,
            self.seed,
            torch_device,
        )
        elapsed = time.perf_counter() - start
        yield stage_event(what, 1, 1, elapsed, dev)
        yield TrainEvent(
            "finished",
            self.settings.epochs,
            self.settings.epochs,
            0,
            0,
            None,
            None,
            None,
            elapsed,
            0.0,
            dev,
            f"best epoch {best_epoch}",
        )
        return CNNModel(state, slide.lattice.kind, [str(g) for g in slide.genes[genes]], best_epoch)
