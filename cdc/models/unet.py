"""The conditional U-Net denoiser of CDC (Yang & Mandt 2023; after the official code).

::

    level l (H/2^l):  [x ⊕ c_l] ─ ResBlock(t) ─ ResBlock(t) ─ x+Attn(LN x) ─┬─ skip_l ─ Down ─► l+1
                                                    (c_l only for l < 4)    │
    middle:           ResBlock(t) ─ x+Attn(LN x) ─ ResBlock(t)              │
    up level:         [x ⊕ skip_l] ─ ResBlock(t) ─ ResBlock(t) ─ x+Attn ─ Up   (skip_0 unused)
    head:             LN ─ Conv7x7 ─► x0 / eps / v prediction (3 channels)

The context pyramid from the context decoder is concatenated channel-wise at the four finest
levels (no cross-attention, no FiLM); the time embedding enters every ResBlock as a bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cdc.config import ModelConfig
from cdc.models.layers import ChannelLayerNorm, PreNormAttention, ResBlock, TimeEmbedding, downsample, upsample
from cdc.models.transforms import context_channels

CONTEXT_LEVELS = 4


class _Level(nn.Module):
    def __init__(self, c_in: int, c_out: int, time_dim: int, first_kernel: int = 3) -> None:
        super().__init__()
        self.res1 = ResBlock(c_in, c_out, time_dim, first_kernel)
        self.res2 = ResBlock(c_out, c_out, time_dim)
        self.attn = PreNormAttention(c_out)

    def forward(self, x: Tensor, emb: Tensor, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return self.attn(self.res2(self.res1(x, emb, context), emb))


class ConditionalUNet(nn.Module):
    """Denoiser ``f(x_t, t/T, pyramid)`` in pixel space.

    Args:
        cfg: model config; ``unet_dim * unet_mults`` are the level widths (64..384 in the paper).

    Inputs: ``x_t`` (B, 3, H, W) with H and W multiples of ``2**(len(unet_mults)-1)``; ``tau``
    (B,) = t/T in [0, 1); ``pyramid``: the context decoder's four maps, fine to coarse.
    Output: (B, 3, H, W), the prediction of the configured parameterization.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.unet_dim
        widths = [dim * m for m in cfg.unet_mults]
        ctx = context_channels(cfg) + [0] * (len(widths) - CONTEXT_LEVELS)
        self.time = TimeEmbedding(dim)

        self.downs = nn.ModuleList()
        c_prev = 3
        for level, width in enumerate(widths):
            self.downs.append(_Level(c_prev + ctx[level], width, dim, first_kernel=7 if level == 0 else 3))
            c_prev = width
        self.down_samples = nn.ModuleList(downsample(w) for w in widths[:-1])

        self.mid1 = ResBlock(widths[-1], widths[-1], dim)
        self.mid_attn = PreNormAttention(widths[-1])
        self.mid2 = ResBlock(widths[-1], widths[-1], dim)

        self.ups = nn.ModuleList()
        self.up_samples = nn.ModuleList()
        for level in range(len(widths) - 1, 0, -1):
            self.ups.append(_Level(2 * widths[level], widths[level - 1], dim))
            self.up_samples.append(upsample(widths[level - 1]))

        self.head = nn.Sequential(ChannelLayerNorm(widths[0]), nn.Conv2d(widths[0], 3, 7, padding=3))

    @property
    def multiple(self) -> int:
        """Input H and W must be multiples of this."""
        return 2 ** len(self.down_samples)

    def condition(self, pyramid: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """The part of every step that depends on the context pyramid alone, for ``forward(...,
        conditioned=True)``. A decoder runs the U-Net on one pyramid for all its DDIM steps: this
        takes 24-25 % of a step's FLOPs out of the loop (``small`` and ``paper`` presets), and gives
        the same result to float rounding."""
        return [self.downs[level].res1.condition(c) for level, c in enumerate(pyramid)]

    def forward(self, x: Tensor, tau: Tensor, pyramid: list[Tensor], conditioned: bool = False) -> Tensor:
        """``conditioned``: ``pyramid`` is what ``condition`` returned for the context pyramid."""
        emb = self.time(tau)
        skips = []
        for level, block in enumerate(self.downs):
            if level >= len(pyramid):
                x = block(x, emb)
            elif conditioned:
                x = block(x, emb, pyramid[level])
            else:
                x = block(torch_cat(x, pyramid[level]), emb)
            skips.append(x)
            if level < len(self.down_samples):
                x = self.down_samples[level](x)

        x = self.mid2(self.mid_attn(self.mid1(x, emb)), emb)

        for block, up, skip in zip(self.ups, self.up_samples, reversed(skips[1:]), strict=False):
            x = up(block(torch_cat(x, skip), emb))
        return self.head(x)


def torch_cat(a: Tensor, b: Tensor) -> Tensor:
    """Channel concatenation that keeps the dtype of ``a`` (the pyramid may be fp32 under bf16)."""
    return torch.cat((a, b.to(a.dtype)), dim=1)
