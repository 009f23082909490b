"""Self-supervised training of the network: pairs from the slide itself, validation, the loop.

A training pair is (down-sample(slide) -> slide): the input is one coset of the lattice (a
quarter of the spots, the same lattice type at twice the pitch), the target every usable spot.
The learned presets draw the coset, a lattice symmetry and random blobs of dropped input spots
at every step, and half of the steps are same-scale hole-filling pairs; user-declared lost
spots are never input nor target. Three parts: :class:`PairSampler` builds pairs,
:class:`Validation` scores held-out genes at a held-out region, :func:`train_network` is the
loop, a generator of :class:`~.estimators.base.TrainEvent` with a stop flag.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from .classical import ClassicalParams, LowRankBasis, smooth
from .config import Config
from .estimators.base import StopFlag, TrainEvent
from .estimators.classical import ClassicalModel
from .lattice import BrickRaster, apply_symmetry, scatter
from .model import StEnTransViT
from .regions import random_disks
from .slide import Slide

IDENTITY = (False, False, False)


@dataclass
class Pair:
    """One batch of (input, base, target) rasters, already as tensors."""

    inputs: torch.Tensor  # (B, C, h, w)
    base: torch.Tensor | None  # (B, 2h, 2w)
    target: torch.Tensor  # (B, 2h, 2w)
    target_mask: torch.Tensor  # (2h, 2w) float


class PairSampler:
    """Builds self-supervised training pairs of a slide for one configuration.

    Parameters
    ----------
    slide
        The prepared slide.
    values
        ``(n_usable, n_genes)`` the training genes' values at the usable spots (normalised or raw).
    config
        The fit's configuration.
    classical
        The classical estimate the network corrects (None for a network without a base).
    """

    def __init__(
        self, slide: Slide, values: np.ndarray, config: Config, classical: ClassicalModel | None
    ) -> None:
        self.slide = slide
        self.values = values
        self.config = config
        self.classical = classical
        self.params = classical.params if classical is not None else ClassicalParams()
        usable_row = slide.row[slide.usable]
        usable_col = slide.col[slide.usable]
        if config.data.raster == "brick":
            self.raster = BrickRaster.covering(slide.lattice, usable_row, usable_col, pad=2)
        else:
            self.raster = slide.index_raster(pad=2)
        pr, pc = self.raster.pixels(usable_row, usable_col)
        self.cosets = (2 * (pr % 2) + pc % 2).astype(np.int64)  # raster origins are even
        self.flat = pr * self.raster.width + pc
        self.positions = slide.positions(slide.usable)
        self._bases: dict[int, LowRankBasis] = {}

    def image(self, per_site: np.ndarray) -> np.ndarray:
        """Values ``(n_usable, k)`` at the usable spots -> ``(k, h, w)`` raster images."""
        return scatter(per_site, self.flat, self.raster.shape)

    def basis(self, coset: int | None) -> LowRankBasis:
        """Low-rank basis of one coset's spots (``None``: all spots, the classical model's own)."""
        if coset is None:  # the hole-filling pairs use the basis (and gap rank) prediction uses
            return self.classical.basis(self.slide, self.values)
        if coset not in self._bases:
            self._bases[coset] = LowRankBasis.fit(self.values[self.cosets == coset], self.params.rank)
        return self._bases[coset]

    def available_cosets(self) -> list[int]:
        if not self.config.pairs.cosets:
            return [0]
        return [c for c in range(4) if (self.cosets == c).sum() >= 3]

    def validation_sites(self, fraction: float, rng: np.random.Generator) -> np.ndarray:
        """Boolean over usable spots: contiguous blobs (about ``fraction``) held out as targets.

        Early stopping on held-out genes alone cannot see a correction that memorises
        site-specific effects shared by all genes; those do not transfer to new sites. Spots in
        this region are never training targets, and validation scores only them.
        """
        want = max(1, int(round(fraction * len(self.positions))))
        return random_disks(self.positions, rng, want, max(1.0, np.sqrt(want / 4 / np.pi)))

    def blob_drop(self, coset: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean over the coset's spots: dropped by random blobs (about 15 % of them)."""
        return self._blobs(np.flatnonzero(self.cosets == coset), rng, 0.15, (2.0, 6.0))

    def inpaint_drop(self, rng: np.random.Generator) -> np.ndarray:
        """Boolean over all usable spots: blobs of 1-4 pitches covering about 10 % of them."""
        return self._blobs(np.arange(len(self.positions)), rng, 0.10, (1.0, 4.0))

    def _blobs(
        self, members: np.ndarray, rng: np.random.Generator, fraction: float, radius: tuple[float, float]
    ) -> np.ndarray:
        """Up to 20 random disks (radii in fine pitches) over ``members`` covering about ``fraction``."""
        dropped = random_disks(self.positions[members], rng, fraction * len(members), radius, max_disks=20)
        if dropped.all():
            dropped[rng.integers(len(members))] = False
        return dropped

    def upsampling_pair(
        self,
        genes: np.ndarray,
        coset: int,
        op: tuple[bool, bool, bool],
        drop: np.ndarray | None,
        device: torch.device,
        targets: np.ndarray | None = None,
    ) -> Pair:
        """The pair (coset, less ``drop``) -> every usable spot, for a batch of genes.

        ``genes`` are column indices into ``values``; ``targets`` (boolean over the usable spots)
        restricts which spots the loss scores, e.g. the validation region or everything but it.
        """
        h, w = self.raster.shape
        members = np.flatnonzero(self.cosets == coset)
        kept = members if drop is None else members[~drop]
        target = self.image(self.values[:, genes])
        tmask = np.zeros(h * w, dtype=np.float32)
        tmask[self.flat] = 1.0 if targets is None else targets.astype(np.float32)
        real = np.zeros(h * w, dtype=np.float32)
        real[self.flat] = 1.0
        keep = np.zeros(h * w, dtype=np.float32)
        keep[self.flat[kept]] = 1.0
        coset_pixels = np.zeros((h, w), dtype=bool)
        coset_pixels[coset // 2 :: 2, coset % 2 :: 2] = True
        stack = [
            target,
            tmask.reshape(1, h, w),
            keep.reshape(1, h, w),
            coset_pixels[None].astype(np.float32),
            real.reshape(1, h, w),
        ]
        residual = self.config.network.residual
        if residual:
            basis, rank = self.basis(coset), self.params.rank
            rows_in_basis = np.searchsorted(members, kept)
            weights = self.params.weights(self.positions[kept] / 2.0, self.positions / 2.0)
            scores = weights @ basis.scores[rows_in_basis, :rank]
            estimate = scores @ basis.components[genes, :rank].T + basis.mean[genes]
            stack.append(self.image(estimate.astype(np.float32)))
        full = np.concatenate(stack, axis=0)
        if self.config.pairs.symmetries:
            full = apply_symmetry(full, op)
        coset_img = full[len(genes) + 2]
        first = np.argwhere(coset_img > 0.5)
        du, dv = (int(first[0][0]) % 2, int(first[0][1]) % 2) if len(first) else (0, 0)
        full = full[:, du:, dv:]
        hh, ww = full.shape[1] - full.shape[1] % 2, full.shape[2] - full.shape[2] % 2
        full = np.ascontiguousarray(full[:, :hh, :ww])
        n = len(genes)
        target_hr = full[:n]
        tmask_hr = full[n].copy()
        keep_lr = full[n + 1, ::2, ::2]
        if self.config.pairs.loss_on == "spots":
            # a spot visible in the input is its own target at HR (2a, 2b): scoring it would teach
            # the network to copy noise (the leak of the published protocol, inside the loss)
            tmask_hr[::2, ::2] *= 1.0 - keep_lr
        lr_values = target_hr[:, ::2, ::2] * keep_lr
        channels = [lr_values]
        base = None
        if residual:
            base_hr = full[n + 4 :] * full[n + 3]
            channels += [np.broadcast_to(keep_lr, lr_values.shape), base_hr[:, ::2, ::2] * keep_lr]
            base = torch.from_numpy(np.ascontiguousarray(base_hr)).to(device)
        inputs = np.stack(channels, axis=1)
        return Pair(
            inputs=torch.from_numpy(np.ascontiguousarray(inputs)).to(device),
            base=base,
            target=torch.from_numpy(target_hr).to(device),
            target_mask=torch.from_numpy(np.ascontiguousarray(tmask_hr)).to(device),
        )

    def hole_pair(
        self,
        genes: np.ndarray,
        op: tuple[bool, bool, bool],
        drop: np.ndarray,
        device: torch.device,
        targets: np.ndarray | None,
        window: tuple[int, int] | None,
        rng: np.random.Generator | None,
    ) -> Pair:
        """Same-scale hole filling: the full-resolution slide with blobs dropped -> the dropped spots.

        Unlike the upsampling pairs, this task has exactly the scale of its use (filling lost
        regions of the slide), so nothing has to transfer across scales. Each dropped spot is
        the target of child 0 of its own pixel; ``window`` crops the raster around a dropped
        spot so a step costs about as much as an upsampling pair (the classical base sees the
        whole slide).
        """
        kept = ~drop
        n = len(genes)
        scored = drop if targets is None else drop & targets
        basis = self.basis(None)
        # the base inference gives: the main smoothers at measured sites, the gap smoothers in gaps
        estimate = np.empty((len(kept), n), dtype=np.float32)
        for rows, params in self.params.site_groups(drop):
            scores = smooth(
                self.positions[kept],
                self.positions[rows],
                params.bandwidth,
                basis.scores[kept, : params.rank],
            )
            estimate[rows] = scores @ basis.components[genes, : params.rank].T + basis.mean[genes]
        full = np.concatenate(
            [
                self.image(self.values[:, genes]),
                self.image(scored[:, None].astype(np.float32)),
                self.image(kept[:, None].astype(np.float32)),
                self.image(estimate.astype(np.float32)),
            ],
            axis=0,
        )
        full = apply_symmetry(full, op) if self.config.pairs.symmetries else full
        if window is not None:
            wh, ww = min(window[0], full.shape[1]), min(window[1], full.shape[2])
            candidates = np.argwhere(full[n] > 0.5)
            cr, cc = candidates[rng.integers(len(candidates))] if len(candidates) else (0, 0)
            r0 = int(np.clip(cr - wh // 2, 0, full.shape[1] - wh))
            c0 = int(np.clip(cc - ww // 2, 0, full.shape[2] - ww))
            full = full[:, r0 : r0 + wh, c0 : c0 + ww]
        values, tmask, keep, base = full[:n], full[n], full[n + 1], full[n + 2 :]
        hh, ww = tmask.shape
        target_hr = np.zeros((n, 2 * hh, 2 * ww), dtype=np.float32)
        target_hr[:, ::2, ::2] = values
        tmask_hr = np.zeros((2 * hh, 2 * ww), dtype=np.float32)
        tmask_hr[::2, ::2] = tmask
        base_hr = np.zeros_like(target_hr)
        base_hr[:, ::2, ::2] = base
        inputs = np.stack([values * keep, np.broadcast_to(keep, values.shape), base * keep], axis=1)
        return Pair(
            inputs=torch.from_numpy(np.ascontiguousarray(inputs)).to(device),
            base=torch.from_numpy(base_hr).to(device),
            target=torch.from_numpy(target_hr).to(device),
            target_mask=torch.from_numpy(tmask_hr).to(device),
        )


def pair_loss(pred: torch.Tensor, pair: Pair, loss_on: str) -> torch.Tensor:
    """Mean squared error over real spots hidden from the input (default) or every pixel (published)."""
    err = (pred.float() - pair.target) ** 2
    if loss_on == "all":
        return err.mean()
    return (err * pair.target_mask).sum() / (pair.target_mask.sum() * pred.shape[0]).clamp_min(1.0)


class Validation:
    """The evaluation step: held-out genes, scored at a held-out region (and as a hole there).

    Parameters
    ----------
    sampler
        The pairs of the slide.
    genes
        Column indices of the held-out genes (never trained on).
    coset
        The coset the validation's upsampling pair uses as input.
    drop
        Input spots dropped from that pair (blobs), or None.
    sites
        Usable spots scored (never training targets), or None for all.
    hole
        Spots hidden in the validation's hole-filling pair (None: no such pair).
    """

    def __init__(
        self,
        sampler: PairSampler,
        genes: np.ndarray,
        coset: int,
        drop: np.ndarray | None,
        sites: np.ndarray | None,
        hole: np.ndarray | None,
        device: torch.device,
    ) -> None:
        self.sampler, self.genes, self.coset = sampler, genes, coset
        self.drop, self.sites, self.hole, self.device = drop, sites, hole, device

    def __call__(self, net: StEnTransViT) -> float | None:
        """Mean loss per held-out gene (None without held-out genes)."""
        if len(self.genes) == 0:
            return None
        config, device = self.sampler.config, self.device
        batch = config.optim.batch_size
        net.eval()
        losses = []
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            for chunk in np.array_split(self.genes, max(1, int(np.ceil(len(self.genes) / batch)))):
                pair = self.sampler.upsampling_pair(
                    chunk, self.coset, IDENTITY, self.drop, device, self.sites
                )
                loss = pair_loss(net(pair.inputs, pair.base), pair, config.pairs.loss_on).item()
                if self.hole is not None:  # the validation region as a lost hole, at full resolution
                    hole = self.sampler.hole_pair(chunk, IDENTITY, self.hole, device, self.hole, None, None)
                    loss = (
                        loss + pair_loss(net(hole.inputs, hole.base), hole, config.pairs.loss_on).item()
                    ) / 2
                losses.append(loss * len(chunk))
        net.train()
        return sum(losses) / len(self.genes)


@dataclass
class TrainResult:
    """What :func:`train_network` returns: the kept weights and the history."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    history: dict[str, list]


def train_network(
    slide: Slide,
    values: np.ndarray,
    config: Config,
    classical: ClassicalModel | None,
    device: torch.device,
    stop: StopFlag | None = None,
    message: str = "",
) -> Generator[TrainEvent, None, TrainResult | None]:
    """Train the network on the slide's own pairs, yielding progress events.

    Parameters
    ----------
    slide
        The prepared slide.
    values
        ``(n_usable, n_genes)`` the training genes' values (log-normalised or raw counts).
    config
        The fit's configuration (``optim``, ``pairs``, ``network``, ``seed``).
    classical
        The classical model the network corrects (``config.network.residual``), else None.
    device
        Where to train; CUDA trains with bfloat16 autocast.
    stop
        When ``stop.is_set()`` the run ends within one batch with a ``"stopped"`` event and
        returns None.
    message
        What the ``"prepared"`` event reports besides the training set.

    Returns
    -------
    The weights to keep (the best validation epoch's when ``restore_best``), the best epoch
    and the history; None when stopped.
    """
    optim, pairs = config.optim, config.pairs
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    sampler = PairSampler(slide, values, config, classical)
    n_genes = values.shape[1]
    perm = rng.permutation(n_genes)
    n_val = int(round(pairs.val_fraction * n_genes)) if n_genes >= 10 else 0
    val_genes, fit_genes = np.sort(perm[:n_val]), perm[n_val:]
    cosets = sampler.available_cosets()
    ops = list(slide.lattice.symmetries) if pairs.symmetries and config.data.raster == "index" else [IDENTITY]
    val_rng = np.random.default_rng(config.seed + 1)
    val_drop = sampler.blob_drop(0, val_rng) if pairs.blob_fraction > 0 else None
    val_sites = sampler.validation_sites(pairs.val_sites, val_rng) if pairs.val_sites > 0 else None
    train_sites = None if val_sites is None else ~val_sites
    inpaint = pairs.inpaint_fraction > 0 and config.network.residual
    val_hole = val_sites if val_sites is not None else sampler.inpaint_drop(val_rng)
    validate = Validation(
        sampler, val_genes, cosets[0], val_drop, val_sites, val_hole if inpaint else None, device
    )
    window = (max(8, sampler.raster.shape[0] // 2), max(8, sampler.raster.shape[1] // 2))

    model = StEnTransViT(config.network).to(device)
    optimizer = (  # nothing to optimise without epochs (and importing AdamW costs seconds)
        torch.optim.AdamW(
            model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
        )
        if optim.epochs > 0
        else None
    )
    use_amp = device.type == "cuda"
    n_steps = max(1, int(np.ceil(len(fit_genes) / optim.batch_size)))
    total_steps = n_steps * optim.epochs
    dev = str(device)
    history: dict[str, list] = {"epoch": [], "train_loss": [], "val_loss": [], "seconds": []}

    def record(epoch: int, train_loss: float | None, val_loss: float | None) -> float:
        elapsed = time.perf_counter() - start
        history["epoch"].append(epoch)
        history["train_loss"].append(np.nan if train_loss is None else train_loss)
        history["val_loss"].append(np.nan if val_loss is None else val_loss)
        history["seconds"].append(elapsed)
        return elapsed

    def event(kind, epoch, step, train_loss=None, val_loss=None, best=None, eta=None, text=""):
        elapsed = time.perf_counter() - start
        return TrainEvent(
            kind, epoch, optim.epochs, step, n_steps, train_loss, val_loss, best, elapsed, eta, dev, text
        )

    best_val = validate(model) if optim.epochs > 0 else None
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    best_epoch, since_best = 0, 0
    record(0, None, best_val)
    yield event(
        "prepared",
        0,
        0,
        val_loss=best_val,
        best=best_val,
        text=f"{slide.n_usable} spots, {n_genes} training genes ({len(val_genes)} validation)" + message,
    )
    done, epoch = 0, 0
    try:
        for epoch in range(1, optim.epochs + 1):
            order = rng.permutation(fit_genes)
            epoch_losses = []
            for step in range(n_steps):
                if stop is not None and stop.is_set():
                    yield event("stopped", epoch, step, best=best_val, text="stopped by request")
                    return None
                genes = np.sort(order[step * optim.batch_size : (step + 1) * optim.batch_size])
                coset = int(rng.choice(cosets))
                op = ops[int(rng.integers(len(ops)))]
                if inpaint and rng.random() < pairs.inpaint_fraction:
                    drop = sampler.inpaint_drop(rng)
                    pair = sampler.hole_pair(genes, op, drop, device, train_sites, window, rng)
                else:
                    drop = sampler.blob_drop(coset, rng) if rng.random() < pairs.blob_fraction else None
                    pair = sampler.upsampling_pair(genes, coset, op, drop, device, train_sites)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = pair_loss(model(pair.inputs, pair.base), pair, pairs.loss_on)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_losses.append(loss.item())
                done += 1
                elapsed = time.perf_counter() - start
                eta = elapsed / done * (total_steps - done)
                yield event("step", epoch, step + 1, epoch_losses[-1], best=best_val, eta=eta)
            val = validate(model)
            train_loss = float(np.mean(epoch_losses))
            elapsed = record(epoch, train_loss, val)
            if val is not None and (best_val is None or val < best_val):
                best_val, best_epoch, since_best = val, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
            eta = elapsed / done * (total_steps - done)
            yield event("epoch", epoch, n_steps, train_loss, val, best_val, eta)
            if optim.patience is not None and val is not None and since_best >= optim.patience:
                break
        if not (optim.restore_best and best_val is not None):
            best_state = model.state_dict()
        result = TrainResult(
            state_dict={k: v.detach().cpu().clone() for k, v in best_state.items()},
            best_epoch=best_epoch,
            history=dict(history, best_epoch=[best_epoch]),
        )
        yield event("finished", epoch, n_steps, best=best_val, eta=0.0, text=f"best epoch {best_epoch}")
        return result
    finally:
        model = optimizer = best_state = None  # release parameters and optimiser state
        if device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = ["PairSampler", "Validation", "train_network", "pair_loss", "TrainResult"]
