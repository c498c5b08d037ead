"""Analysis transform g_a and the context decoder (cdc-reference §1.2, §1.5).

::

    x [-1,1] (B,3,H,W) ─ g_a ─► y (B,N,H/16,W/16)          ŷ ─ context decoder ─► [c0, c1, c2, c3]
                                                                 c0 (B,d,H,W)      c1 (B,d,H/2,W/2)
                                                                 c2 (B,2d,H/4,..)  c3 (B,3d,H/8,..)

The pyramid is computed once per image (it does not depend on the diffusion timestep) and is
concatenated to the U-Net's four finest levels.
"""

from __future__ import annotations

import itertools

from torch import Tensor, nn

from cdc.config import ModelConfig
from cdc.layers import ResBlock, downsample, upsample


def encoder_channels(cfg: ModelConfig) -> list[int]:
    """Output channels of g_a's four stages; the last one is the latent y."""
    return [cfg.enc_dim * m for m in cfg.enc_mults[:3]] + [cfg.latent_channels]


def context_channels(cfg: ModelConfig) -> list[int]:
    """Channels of the conditioning pyramid, fine to coarse (64, 64, 128, 192 for the paper)."""
    first = cfg.enc_dim * cfg.enc_mults[0]
    return [first] + [cfg.enc_dim * m for m in cfg.enc_mults[:3]]


class AnalysisTransform(nn.Module):
    """g_a: four (ResBlock -> stride-2 conv) stages, image in [-1, 1] to y at 1/16 resolution."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        chans = [3, *encoder_channels(cfg)]
        self.stages = nn.ModuleList(
            nn.Sequential(ResBlock(c_in, c_out, first_kernel=7 if i == 0 else 3), downsample(c_out))
            for i, (c_in, c_out) in enumerate(itertools.pairwise(chans))
        )

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class ContextDecoder(nn.Module):
    """ŷ (1/16 resolution) to the conditioning pyramid [full, 1/2, 1/4, 1/8] (fine to coarse)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        outs = list(reversed(context_channels(cfg)))  # coarse to fine: 192, 128, 64, 64
        ins = [cfg.latent_channels, *outs[:-1]]
        self.stages = nn.ModuleList(
            nn.Sequential(ResBlock(c_in, c_out), upsample(c_out)) for c_in, c_out in zip(ins, outs, strict=False)
        )

    def forward(self, y_hat: Tensor) -> list[Tensor]:
        pyramid = []
        h = y_hat
        for stage in self.stages:
            h = stage(h)
            pyramid.append(h)
        return pyramid[::-1]
