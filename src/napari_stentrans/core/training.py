"""Self-supervised training: pairs from the slide itself and one generator of progress events.

A training pair is (down-sample(slide) -> slide): the input is one coset of the lattice (a
quarter of the spots, the same lattice type at twice the pitch), the target every usable spot.
The default preset draws the coset, a lattice symmetry and random blobs of dropped input spots
at every step; user-declared lost spots are never input nor target.

:meth:`Trainer.run` is the only training loop of the project: the CLI and the napari worker
both iterate it, and it stops within one batch when the stop flag is set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import anndata as ad
import numpy as np
import torch

from .classical import TARGET_SUM, ClassicalParams, LowRankBasis, hole_pairs, select_classical_params, smooth
from .lattice import BrickRaster, apply_symmetry
from .model import StEnTransViT
from .presets import TrainConfig
from .slide import MaskLike, Slide, slide_from_adata


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class TrainEvent:
    """One progress report of :meth:`Trainer.run`.

    ``kind`` is ``"prepared"`` (data ready, before any step), ``"step"``, ``"epoch"`` (after
    validation), ``"finished"`` or ``"stopped"`` (stop flag; no model is produced).
    """

    kind: str
    epoch: int
    n_epochs: int
    step: int
    n_steps: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    elapsed: float
    eta: float | None
    device: str
    message: str = ""


@dataclass
class TrainedModel:
    """A trained model with everything needed to apply it to a slide of the same lattice type."""

    config: TrainConfig
    state_dict: dict[str, torch.Tensor]
    lattice_kind: str
    classical: ClassicalParams
    target_sum: float
    training_genes: list[str]
    history: dict[str, list] = field(default_factory=dict)

    @property
    def uses_network(self) -> bool:
        """False when predictions are exactly the classical estimate.

        A residual model's correction starts at zero; it stays zero when no epoch was trained
        or when validation kept the weights of epoch 0, and the network need not run.
        """
        if not self.config.model.residual:
            return True
        if self.config.epochs == 0:
            return False
        best_epoch = self.history.get("best_epoch", [None])[0]
        return not (self.config.restore_best and best_epoch is not None and int(best_epoch) == 0)

    def build(self, device: str | torch.device = "cpu") -> StEnTransViT:
        """The network with the trained weights, in evaluation mode."""
        model = StEnTransViT(self.config.model)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; explicit names are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available in this PyTorch build")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available")
    return device


def choose_genes(slide: Slide, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(eligible gene indices, training gene indices) by detection rate and variance."""
    eligible = slide.eligible_genes(config.min_detection)
    if len(eligible) == 0:
        raise ValueError(
            f"no gene is detected in at least {config.min_detection:.0%} of the spots; lower min_detection"
        )
    return eligible, slide.most_variable(eligible, config.n_train_genes)


# ----------------------------------------------------------------------------- pairs


@dataclass
class Pair:
    """One batch of (input, base, target) rasters, already as tensors."""

    inputs: torch.Tensor  # (B, C, h, w)
    base: torch.Tensor | None  # (B, 2h, 2w)
    target: torch.Tensor  # (B, 2h, 2w)
    target_mask: torch.Tensor  # (2h, 2w) float


class PairSampler:
    """Builds self-supervised training pairs of a slide for one configuration."""

    def __init__(
        self, slide: Slide, values: np.ndarray, config: TrainConfig, classical: ClassicalParams
    ) -> None:
        self.slide = slide
        self.values = values  # (n_usable, n_genes) normalised or raw
        self.config = config
        self.classical = classical
        usable_row = slide.row[slide.usable]
        usable_col = slide.col[slide.usable]
        if config.raster == "brick":
            self.raster = BrickRaster.covering(slide.lattice, usable_row, usable_col, pad=2)
        else:
            self.raster = slide.index_raster(pad=2)
        pr, pc = self.raster.pixels(usable_row, usable_col)
        self.cosets = (2 * (pr % 2) + pc % 2).astype(np.int64)  # raster origins are even
        self.flat = pr * self.raster.width + pc
        self.positions = slide.positions(slide.usable)
        self._bases: dict[int | None, LowRankBasis] = {}

    def basis(self, coset: int | None) -> LowRankBasis:
        """Low-rank basis of one coset's spots (``None``: all spots), fitted when first needed."""
        if coset not in self._bases:
            members = slice(None) if coset is None else self.cosets == coset
            rank = self.classical.rank
            if coset is None:  # the hole-filling pairs use the rank chosen for gaps
                rank = max(rank, self.classical.for_holes.rank)
            self._bases[coset] = LowRankBasis.fit(self.values[members], rank)
        return self._bases[coset]

    @property
    def full_basis(self) -> LowRankBasis:
        return self.basis(None)

    def available_cosets(self) -> list[int]:
        if not self.config.cosets:
            return [0]
        return [c for c in range(4) if (self.cosets == c).sum() >= 3]

    def validation_sites(self, fraction: float, rng: np.random.Generator) -> np.ndarray:
        """Boolean over usable spots: contiguous blobs (about ``fraction``) held out as targets.

        Early stopping on held-out genes alone cannot see a correction that memorises
        site-specific effects shared by all genes; those do not transfer to new sites. Spots in
        this region are never training targets, and validation scores only them.
        """
        n = len(self.positions)
        chosen = np.zeros(n, dtype=bool)
        want = max(1, int(round(fraction * n)))
        radius = max(1.0, np.sqrt(want / 4 / np.pi))
        while chosen.sum() < want:
            centre = self.positions[rng.integers(n)]
            chosen |= np.linalg.norm(self.positions - centre, axis=1) <= radius
        return chosen

    def blob_drop(self, coset: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean over the coset's spots: dropped by random blobs (about 15 % of them)."""
        return self._blobs(np.flatnonzero(self.cosets == coset), rng, 0.15, (2.0, 6.0))

    def inpaint_drop(self, rng: np.random.Generator) -> np.ndarray:
        """Boolean over all usable spots: blobs of 1-4 pitches covering about 10 % of them."""
        return self._blobs(np.arange(len(self.positions)), rng, 0.10, (1.0, 4.0))

    def _blobs(
        self,
        members: np.ndarray,
        rng: np.random.Generator,
        fraction: float,
        radius_range: tuple[float, float],
    ) -> np.ndarray:
        """Random disks (radii in fine pitches) over ``members`` covering about ``fraction``."""
        pos = self.positions[members]
        dropped = np.zeros(len(members), dtype=bool)
        for _ in range(20):
            if dropped.sum() >= fraction * len(members):
                break
            centre = pos[rng.integers(len(members))]
            dropped |= np.linalg.norm(pos - centre, axis=1) <= rng.uniform(*radius_range)
        if dropped.all():
            dropped[rng.integers(len(members))] = False
        return dropped

    def make(
        self,
        genes: np.ndarray,
        coset: int,
        op: tuple[bool, bool, bool],
        drop: np.ndarray | None,
        device: torch.device,
        targets: np.ndarray | None = None,
    ) -> Pair:
        """Build the pair for a batch of genes (column indices into ``values``).

        ``targets`` (boolean over the usable spots) restricts which spots the loss scores,
        e.g. the validation region or everything but it.
        """
        h, w = self.raster.shape
        members = np.flatnonzero(self.cosets == coset)
        kept = members if drop is None else members[~drop]
        batch_values = self.values[:, genes]  # (n_usable, B)

        def image(per_site: np.ndarray) -> np.ndarray:
            img = np.zeros((per_site.shape[1], h * w), dtype=np.float32)
            img[:, self.flat] = per_site.T
            return img.reshape(-1, h, w)

        target = image(batch_values)
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
        if self.config.model.residual:
            basis = self.basis(coset)
            rows_in_basis = np.searchsorted(members, kept)
            weights = self.classical.weights(self.positions[kept] / 2.0, self.positions / 2.0)
            scores = weights @ basis.scores[rows_in_basis, : self.classical.rank]
            estimate = scores @ basis.components[genes, : self.classical.rank].T + basis.mean[genes]
            stack.append(image(estimate.astype(np.float32)))
        full = np.concatenate(stack, axis=0)
        if self.config.symmetries:
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
        if self.config.loss_on == "spots":
            # a spot visible in the input is its own target at HR (2a, 2b): scoring it would teach
            # the network to copy noise (the leak of the published protocol, inside the loss)
            tmask_hr[::2, ::2] *= 1.0 - keep_lr
        lr_values = target_hr[:, ::2, ::2] * keep_lr
        channels = [lr_values]
        base = None
        if self.config.model.residual:
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


def _inpaint_pair(
    sampler: PairSampler,
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
    regions of the slide), so nothing has to transfer across scales. Each dropped spot is the
    target of child 0 of its own pixel; ``window`` crops the raster around a dropped spot so a
    step costs about as much as an upsampling pair (the classical base sees the whole slide).
    """
    h, w = sampler.raster.shape
    kept = ~drop
    n = len(genes)

    def image(per_site: np.ndarray) -> np.ndarray:
        img = np.zeros((per_site.shape[1], h * w), dtype=np.float32)
        img[:, sampler.flat] = per_site.T
        return img.reshape(-1, h, w)

    scored = drop if targets is None else drop & targets
    basis, main = sampler.full_basis, sampler.classical
    # the base inference gives: the main smoothers at measured sites, the gap smoothers in gaps
    estimate = np.empty((len(kept), n), dtype=np.float32)
    for rows, params in main.site_groups(drop):
        scores = smooth(
            sampler.positions[kept],
            sampler.positions[rows],
            params.bandwidth,
            basis.scores[kept, : params.rank],
        )
        estimate[rows] = scores @ basis.components[genes, : params.rank].T + basis.mean[genes]
    full = np.concatenate(
        [
            image(sampler.values[:, genes]),
            image(scored[:, None].astype(np.float32)),
            image(kept[:, None].astype(np.float32)),
            image(estimate.astype(np.float32)),
        ],
        axis=0,
    )
    full = apply_symmetry(full, op) if sampler.config.symmetries else full
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


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Trains a model on one slide; iterate :meth:`run` to train.

    Parameters
    ----------
    adata
        The slide (see :func:`napari_stentrans.read`); never modified.
    config
        Training configuration (see :func:`napari_stentrans.core.presets.preset`).
    mask
        Lost sites (see :func:`napari_stentrans.core.slide.slide_from_adata`).
    """

    def __init__(self, adata: ad.AnnData, config: TrainConfig, mask: MaskLike = None) -> None:
        self.slide = slide_from_adata(adata, mask)
        self.config = config
        self.result: TrainedModel | None = None
        self.history: dict[str, list] = {"epoch": [], "train_loss": [], "val_loss": [], "seconds": []}

    def run(self, stop: StopFlag | None = None) -> Iterator[TrainEvent]:
        """Train, yielding progress events; sets :attr:`result` when training finishes.

        When ``stop.is_set()`` becomes true the run ends within one batch with a
        ``"stopped"`` event and :attr:`result` stays ``None``.
        """
        config = self.config
        device = resolve_device(config.device)
        start = time.perf_counter()
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        slide = self.slide
        if slide.n_usable < 8:
            raise ValueError(f"only {slide.n_usable} usable spots: too few to train on")
        _, train_idx = choose_genes(slide, config)
        values = slide.expression(train_idx, config.normalization, TARGET_SUM)
        classical = ClassicalParams()
        if config.model.residual:
            keep = slide.lattice.coset(slide.row[slide.usable], slide.col[slide.usable])  # all four pairs
            positions, log_depth = slide.positions(slide.usable), np.log(slide.depth[slide.usable])
            choice = {"log_depth": log_depth, "depth_choice": "stack"}
            if config.smoothers == "linear":
                choice.update(bandwidths=(None,), depth_bandwidths=(None,))
            classical, _ = select_classical_params(values, positions, keep, **choice)
            hole_sizes = slide.hole_sizes()
            if len(hole_sizes):  # gaps to fill: their smoothers are chosen on gaps of the same size
                pairs = hole_pairs(positions, hole_sizes, np.random.default_rng(config.seed))
                holes, scores = select_classical_params(values, positions, pairs, scale=1.0, **choice)
                if scores:  # gaps of one or two sites make no pair with >= 3 targets: keep the main choice
                    classical = replace(classical, holes=holes)
        sampler = PairSampler(slide, values, config, classical)
        n_genes = values.shape[1]
        perm = rng.permutation(n_genes)
        n_val = int(round(config.val_fraction * n_genes)) if n_genes >= 10 else 0
        val_genes, fit_genes = np.sort(perm[:n_val]), perm[n_val:]
        cosets = sampler.available_cosets()
        ops = (
            list(slide.lattice.symmetries)
            if config.symmetries and config.raster == "index"
            else [(False, False, False)]
        )
        val_rng = np.random.default_rng(config.seed + 1)
        val_drop = sampler.blob_drop(0, val_rng) if config.blob_fraction > 0 else None
        val_sites = sampler.validation_sites(config.val_sites, val_rng) if config.val_sites > 0 else None
        train_sites = None if val_sites is None else ~val_sites
        inpaint = config.inpaint_fraction > 0 and config.model.residual
        val_hole = val_sites if val_sites is not None else sampler.inpaint_drop(val_rng)
        window = (max(8, sampler.raster.shape[0] // 2), max(8, sampler.raster.shape[1] // 2))

        model = StEnTransViT(config.model).to(device)
        optimizer = (  # nothing to optimise without epochs (and importing AdamW costs seconds)
            torch.optim.AdamW(
                model.parameters(),
                lr=config.lr,
                betas=config.betas,
                eps=config.eps,
                weight_decay=config.weight_decay,
            )
            if config.epochs > 0
            else None
        )
        use_amp = device.type == "cuda"
        n_steps = max(1, int(np.ceil(len(fit_genes) / config.batch_size)))
        total_steps = n_steps * config.epochs
        dev = str(device)

        def validate(net: StEnTransViT) -> float | None:
            if len(val_genes) == 0:
                return None
            net.eval()
            losses = []
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                for chunk in np.array_split(
                    val_genes, max(1, int(np.ceil(len(val_genes) / config.batch_size)))
                ):
                    pair = sampler.make(chunk, cosets[0], (False, False, False), val_drop, device, val_sites)
                    loss = pair_loss(net(pair.inputs, pair.base), pair, config.loss_on).item()
                    if inpaint:  # the validation region as a lost hole, at full resolution
                        hole = _inpaint_pair(
                            sampler, chunk, (False, False, False), val_hole, device, val_hole, None, None
                        )
                        loss = (
                            loss + pair_loss(net(hole.inputs, hole.base), hole, config.loss_on).item()
                        ) / 2
                    losses.append(loss * len(chunk))
            net.train()
            return sum(losses) / len(val_genes)

        best_val = validate(model) if config.epochs > 0 else None
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        best_epoch, since_best = 0, 0
        self._record(0, None, best_val, time.perf_counter() - start)
        yield TrainEvent(
            "prepared",
            0,
            config.epochs,
            0,
            n_steps,
            None,
            best_val,
            best_val,
            time.perf_counter() - start,
            None,
            dev,
            f"{slide.n_usable} spots, {n_genes} training genes ({len(val_genes)} validation), "
            f"classical {classical.describe()}",
        )
        done, epoch = 0, 0
        try:
            for epoch in range(1, config.epochs + 1):
                order = rng.permutation(fit_genes)
                epoch_losses = []
                for step in range(n_steps):
                    if stop is not None and stop.is_set():
                        yield TrainEvent(
                            "stopped",
                            epoch,
                            config.epochs,
                            step,
                            n_steps,
                            None,
                            None,
                            best_val,
                            time.perf_counter() - start,
                            None,
                            dev,
                            "stopped by request",
                        )
                        return
                    genes = np.sort(order[step * config.batch_size : (step + 1) * config.batch_size])
                    coset = int(rng.choice(cosets))
                    op = ops[int(rng.integers(len(ops)))]
                    if inpaint and rng.random() < config.inpaint_fraction:
                        pair = _inpaint_pair(
                            sampler, genes, op, sampler.inpaint_drop(rng), device, train_sites, window, rng
                        )
                    else:
                        drop = sampler.blob_drop(coset, rng) if rng.random() < config.blob_fraction else None
                        pair = sampler.make(genes, coset, op, drop, device, train_sites)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss = pair_loss(model(pair.inputs, pair.base), pair, config.loss_on)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    epoch_losses.append(loss.item())
                    done += 1
                    elapsed = time.perf_counter() - start
                    yield TrainEvent(
                        "step",
                        epoch,
                        config.epochs,
                        step + 1,
                        n_steps,
                        epoch_losses[-1],
                        None,
                        best_val,
                        elapsed,
                        elapsed / done * (total_steps - done),
                        dev,
                    )
                val = validate(model)
                train_loss = float(np.mean(epoch_losses))
                elapsed = time.perf_counter() - start
                self._record(epoch, train_loss, val, elapsed)
                improved = val is not None and (best_val is None or val < best_val)
                if improved:
                    best_val, best_epoch, since_best = val, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    since_best += 1
                yield TrainEvent(
                    "epoch",
                    epoch,
                    config.epochs,
                    n_steps,
                    n_steps,
                    train_loss,
                    val,
                    best_val,
                    elapsed,
                    elapsed / done * (total_steps - done),
                    dev,
                )
                if config.patience is not None and val is not None and since_best >= config.patience:
                    break
            if not (config.restore_best and best_val is not None):
                best_state = model.state_dict()
            self.result = TrainedModel(
                config=config,
                state_dict={k: v.detach().cpu().clone() for k, v in best_state.items()},
                lattice_kind=slide.lattice.kind,
                classical=classical,
                target_sum=TARGET_SUM,
                training_genes=[str(g) for g in slide.genes[train_idx]],
                history=dict(self.history, best_epoch=[best_epoch]),
            )
            yield TrainEvent(
                "finished",
                epoch,
                config.epochs,
                n_steps,
                n_steps,
                None,
                None,
                best_val,
                time.perf_counter() - start,
                0.0,
                dev,
                f"best epoch {best_epoch}",
            )
        finally:
            model = optimizer = best_state = None  # release parameters and optimiser state
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def _record(self, epoch: int, train_loss: float | None, val_loss: float | None, seconds: float) -> None:
        self.history["epoch"].append(epoch)
        self.history["train_loss"].append(np.nan if train_loss is None else train_loss)
        self.history["val_loss"].append(np.nan if val_loss is None else val_loss)
        self.history["seconds"].append(seconds)


def train(
    adata: ad.AnnData, config: TrainConfig, mask: MaskLike = None, stop: StopFlag | None = None, callback=None
) -> TrainedModel | None:
    """Run :class:`Trainer` to the end; ``callback(event)`` sees every event. None if stopped."""
    trainer = Trainer(adata, config, mask)
    for event in trainer.run(stop):
        if callback is not None:
            callback(event)
    return trainer.result
