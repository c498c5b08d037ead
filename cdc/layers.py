"""Building blocks shared by the analysis transform, the context decoder and the U-Net.

They follow the official CDC code's blocks (cdc-reference §1.1): channel LayerNorm, conv-LN-ReLU
blocks, residual blocks with an optional time-embedding bias, stride-2 down/up sampling and the
single-head linear attention of Shen et al. 2021 ("Efficient Attention").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a B x C x H x W tensor (biased variance, eps 1e-5)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last):
            # channels-last memory is NHWC: one fused layer_norm over the last axis, no copies
            # (it accumulates in fp32 for bf16 inputs).
            g, b = self.g.reshape(-1).to(x.dtype), self.b.reshape(-1).to(x.dtype)
            return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), g, b, self.eps).permute(0, 3, 1, 2)
        # Statistics in fp32 even for a bf16 network: bf16 variances lose the small channels.
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=1, unbiased=False, keepdim=True)
        return ((xf - mean) * torch.rsqrt(var + self.eps) * self.g + self.b).to(x.dtype)


class Block(nn.Sequential):
    """Conv k x k ("same" padding) -> channel LayerNorm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2),
            ChannelLayerNorm(c_out),
            nn.ReLU(),
        )


class ResBlock(nn.Module):
    """Two :class:`Block` s with a residual connection and an optional time-embedding bias.

    Args:
        c_in: input channels.
        c_out: output channels (a 1x1 conv matches the skip when they differ).
        time_dim: width of the time embedding; ``None`` for time-free blocks (g_a, context decoder).
        first_kernel: kernel of the first conv (7 for the very first block of a network).
    """

    def __init__(self, c_in: int, c_out: int, time_dim: int | None = None, first_kernel: int = 3) -> None:
        super().__init__()
        self.time_mlp = (
            nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(time_dim, c_out)) if time_dim else None
        )
        self.block1 = Block(c_in, c_out, first_kernel)
        self.block2 = Block(c_out, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.block1(x)
        if self.time_mlp is not None and emb is not None:
            h = h + self.time_mlp(emb)[:, :, None, None]
        return self.block2(h) + self.skip(x)


def downsample(channels: int) -> nn.Conv2d:
    """Stride-2 3x3 convolution, same channels (halves H and W)."""
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)


def upsample(c_in: int, c_out: int | None = None) -> nn.ConvTranspose2d:
    """Stride-2 4x4 transposed convolution (doubles H and W)."""
    return nn.ConvTranspose2d(c_in, c_out or c_in, 4, stride=2, padding=1)


class LinearAttention(nn.Module):
    """Single-head linear attention, head dim = channels (Shen et al., WACV 2021).

    Keys are soft-maxed over positions, queries are only scaled by C^-1/2 (the official CDC code
    does not soft-max q over channels). Cost is O(C^2 * H * W), so it runs at every U-Net level.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = channels**-0.5
        self.to_qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.to_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.to_qkv(x)
        if qkv.is_contiguous(memory_format=torch.channels_last):
            # NHWC in memory: (B, HW, C) views of q and v need no copy; k is transposed once so the
            # softmax runs over a contiguous last axis (a strided softmax is ~7x slower on CUDA).
            q, k, v = qkv.permute(0, 2, 3, 1).reshape(b, h * w, 3 * c).split(c, dim=-1)
            k = torch.softmax(k.transpose(1, 2).contiguous(), dim=-1, dtype=torch.float32).to(q.dtype)
            context = torch.bmm(k, v)  # B x C(k) x C(v)
            out = torch.bmm(q * self.scale, context)  # B x HW x C(v)
            return self.to_out(out.reshape(b, h, w, c).permute(0, 3, 1, 2))
        q, k, v = qkv.reshape(b, 3, c, h * w).unbind(1)
        k = torch.softmax(k, dim=-1, dtype=torch.float32).to(q.dtype)
        context = torch.bmm(k, v.transpose(1, 2))  # B x C(k) x C(v)
        out = torch.bmm(context.transpose(1, 2), q * self.scale)  # B x C(v) x HW
        return self.to_out(out.reshape(b, c, h, w))


class PreNormAttention(nn.Module):
    """``x + LinearAttention(LayerNorm(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.attn = LinearAttention(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(self.norm(x))


class TimeEmbedding(nn.Module):
    """MLP on the normalised timestep tau = t / T in [0, 1): Linear(1, 4d) -> GELU -> Linear(4d, d).

    The official CDC code feeds the scalar tau directly (no sinusoidal features); we keep that so
    released weights would map one-to-one.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, tau: Tensor) -> Tensor:
        return self.mlp(tau.reshape(-1, 1).to(self.mlp[0].weight.dtype))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom/right of ``x`` (B x C x H x W) to multiples of ``multiple``.

    Replicate padding (not zeros) keeps the padded border cheap to code and easy to synthesise;
    it works for any size, 1 x 1 included.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Height and width rounded up to ``multiple``."""
    return (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)
