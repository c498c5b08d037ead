"""Analysis transform g_a and the context decoder (after the official CDC code).

::

    x [-1,1] (B,3,H,W) ─ g_a ─► y (B,N,H/16,W/16)          ŷ ─ context decoder ─► [c0, c1, c2, c3]
                                                                 c0 (B,d,H,W)      c1 (B,d,H/2,W/2)
                                                                 c2 (B,2d,H/4,..)  c3 (B,3d,H/8,..)

The pyramid is computed once per image (it does not depend on the diffusion timestep) and is
concatenated to the U-Net's four finest levels.

The paper leaves the encoder unspecified; the official code uses ResBlocks (``model.analysis:
resnet``). ``gdn`` is the convolution + GDN transform of Ballé et al. (ICLR 2018), CompressAI's
standard: measured on the development corpus it learns a usable latent several times faster
(``benchmarks/recipes.py``). The optional auxiliary synthesis g_s mirrors it with inverse GDN.
"""

from __future__ import annotations

import itertools

from compressai.layers import GDN
from torch import Tensor, nn

from cdc.config import ModelConfig
from cdc.models.layers import ResBlock, downsample, upsample


def encoder_channels(cfg: ModelConfig) -> list[int]:
    """Output channels of g_a's four stages; the last one is the latent y."""
    return [cfg.enc_dim * m for m in cfg.enc_mults[:3]] + [cfg.latent_channels]


def transform_channels(cfg: ModelConfig) -> list[int]:
    """Channels of the ``gdn`` analysis stages and (reversed) of g_s: ``transform_dim`` for the
    three hidden stages when set, else the ResBlock encoder's widths; the last is the latent y."""
    if cfg.transform_dim:
        return [cfg.transform_dim] * 3 + [cfg.latent_channels]
    return encoder_channels(cfg)


def context_channels(cfg: ModelConfig) -> list[int]:
    """Channels of the conditioning pyramid, fine to coarse (64, 64, 128, 192 for the paper)."""
    first = cfg.enc_dim * cfg.enc_mults[0]
    return [first] + [cfg.enc_dim * m for m in cfg.enc_mults[:3]]


class AnalysisTransform(nn.Module):
    """g_a: image in [-1, 1] to y at 1/16 resolution in four stride-2 stages.

    ``resnet`` (official code): (ResBlock -> stride-2 conv) per stage. ``gdn`` (Ballé et al.
    2018): (5x5 stride-2 conv -> GDN) per stage, no GDN after the last.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        chans = [3, *(transform_channels(cfg) if cfg.analysis == "gdn" else encoder_channels(cfg))]
        pairs = list(itertools.pairwise(chans))
        if cfg.analysis == "gdn":
            self.stages = nn.ModuleList(
                nn.Sequential(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), *([GDN(c_out)] if i < 3 else []))
                for i, (c_in, c_out) in enumerate(pairs)
            )
            return
        self.stages = nn.ModuleList(
            nn.Sequential(ResBlock(c_in, c_out, first_kernel=7 if i == 0 else 3), downsample(c_out))
            for i, (c_in, c_out) in enumerate(pairs)
        )

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class AuxSynthesis(nn.Sequential):
    """Light synthesis transform g_s: ŷ to the auxiliary reconstruction x_aux in [-1, 1] (unclamped).

    The mirror of the ``gdn`` analysis: (5x5 stride-2 transposed conv -> inverse GDN) x 3, then a
    transposed conv to RGB. Trained as an MSE autoencoder first (as HiFiC / MS-ILLM pretrain their
    autoencoder before the generative stage); the diffusion decoder then refines x_aux
    (Hoogeboom et al. 2023 condition diffusion on an MSE reconstruction).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        chans = [*reversed(transform_channels(cfg)), 3]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(chans)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1))
            if i < 3:
                layers.append(GDN(c_out, inverse=True))
        super().__init__(*layers)


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
