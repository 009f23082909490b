"""The stEnTrans Vision Transformer (METHOD.md "Network"), configurable for both presets.

Input: a low-resolution (LR) raster ``(batch, channels, H, W)``, one gene per batch item.
Output: the 2x raster ``(batch, 2H, 2W)``; LR pixel (a, b) owns output pixels
(2a + du, 2b + dv), du, dv in {0, 1} (the reverse patch embedding is a 2x pixel shuffle). In an
index raster (see :mod:`.lattice`) these are exactly the lattice's four 2x children.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def sinusoid(positions: torch.Tensor, dim: int, max_wavelength: float = 1000.0) -> torch.Tensor:
    """Sinusoidal code ``(n, dim)`` of scalar positions ``(n,)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_wavelength) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = positions.float()[:, None] * freqs[None, :].to(positions.device)
    code = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if code.shape[1] < dim:
        code = torch.cat([code, torch.zeros(len(positions), dim - code.shape[1], device=positions.device)], 1)
    return code


class StEnTransViT(nn.Module):
    """Patch embedding -> position code -> pre-norm Transformer blocks -> reverse patch embedding."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        p, d = config.patch_size, config.width
        self.patch_embed = nn.Conv2d(config.in_channels, d, kernel_size=p, stride=p)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=config.heads,
            dim_feedforward=int(config.mlp_ratio * d),
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        if config.output_head:
            self.head = nn.Linear(d, 4 * p * p)
            if config.residual:  # start exactly at the base estimate
                nn.init.zeros_(self.head.weight)
                nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()
        self._code_cache: dict[tuple, torch.Tensor] = {}

    def position_code(self, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor | None:
        kind = self.config.position_code
        if kind == "none":
            return None
        key = (kind, grid_h, grid_w, str(device))
        if key not in self._code_cache:
            d, p = self.config.width, self.config.patch_size
            if kind == "index1d":
                code = sinusoid(torch.arange(grid_h * grid_w), d, 10000.0)
            else:
                a, b = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
                centre = (p - 1) / 2.0  # token centre in input-lattice units
                code = torch.cat(
                    [
                        sinusoid(a.flatten() * p + centre, d // 2),
                        sinusoid(b.flatten() * p + centre, d - d // 2),
                    ],
                    dim=1,
                )
            self._code_cache[key] = code.to(device)
        return self._code_cache[key]

    def forward(self, x: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the 2x raster.

        Parameters
        ----------
        x
            ``(batch, in_channels, H, W)`` input raster.
        base
            ``(batch, 2H, 2W)`` base estimate; required when ``config.residual``.
        """
        batch, _, h, w = x.shape
        p = self.config.patch_size
        pad_h, pad_w = (-h) % p, (-w) % p
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
        tokens = self.patch_embed(x)  # (batch, d, gh, gw)
        gh, gw = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        code = self.position_code(gh, gw, x.device)
        if code is not None:
            tokens = tokens + code.to(tokens.dtype)
        tokens = self.norm(self.blocks(tokens))
        out = self.head(tokens)  # (batch, gh*gw, 4 p^2) = p^2 pixels x 4 children
        out = out.reshape(batch, gh, gw, p, p, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        out = out.reshape(batch, 2 * gh * p, 2 * gw * p)[:, : 2 * h, : 2 * w]
        if self.config.residual:
            if base is None:
                raise ValueError("this model predicts a correction: pass the base estimate")
            out = out + base
        return out
