"""Building blocks shared by the analysis transform, the context decoder and the U-Net.

They follow the official CDC code's blocks (github.com/buggyyang/CDC_compression): channel LayerNorm, conv-LN-ReLU
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

    def after_conv(self, h: Tensor) -> Tensor:
        """The block on its convolution's output: LayerNorm, ReLU."""
        return self[2](self[1](h))


class ResBlock(nn.Module):
    """Two ``Block`` s with a residual connection and an optional time-embedding bias.

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

    def forward(self, x: Tensor, emb: Tensor | None = None, context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """With ``context`` (what ``condition`` returned for channels c), ``x`` holds the other input
        channels and the block returns what it would for ``cat(x, c)``."""
        if context is None:
            h, skip = self.block1(x), self.skip(x)
        else:
            first, rest = context
            h = self.block1.after_conv(_conv_part(self.block1[0], x, first))
            skip = _conv_part(self.skip, x, rest) if isinstance(self.skip, nn.Conv2d) else torch.cat((x, rest), 1)
        if self.time_mlp is not None and emb is not None:
            h = h + self.time_mlp(emb)[:, :, None, None]
        return self.block2(h) + skip

    def condition(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """What the first convolution and the skip compute from the last input channels ``c`` (bias
        included), for ``forward``'s ``context``. A convolution is linear in its input channels,
        so conv(cat(x, c)) = conv_x(x) + conv_c(c): with ``c`` fixed over many calls (the diffusion
        decoder's context pyramid over its DDIM steps) the ``c`` part is computed once."""
        conv = self.block1[0]
        first = F.conv2d(c, conv.weight[:, -c.shape[1]:], conv.bias, conv.stride, conv.padding)
        if not isinstance(self.skip, nn.Conv2d):
            return first, c  # an identity skip adds cat(x, c) itself
        return first, F.conv2d(c, self.skip.weight[:, -c.shape[1]:], self.skip.bias)


def _conv_part(conv: nn.Conv2d, x: Tensor, rest: Tensor) -> Tensor:
    """``conv`` on an input whose first channels are ``x``, given what its other channels contribute."""
    return F.conv2d(x, conv.weight[:, : x.shape[1]], None, conv.stride, conv.padding) + rest


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

    Computed re-associated: ``to_out(scale * q @ context)`` with ``q = x W_q^T`` equals
    ``x M + b`` for the C x C matrix ``M = W_q^T (scale * context) W_out^T`` (``context = softmax(k)^T
    v``). Only k and v are projected at full resolution, and one matrix multiply replaces the query
    projection, the scaling, ``q @ context`` and the output convolution: the same function to float
    rounding, with 2 C^2 of 5 C^2 multiply-adds per position and three full-resolution passes saved.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = channels**-0.5
        self.to_qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.to_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        kv = F.conv2d(x, self.to_qkv.weight[c:])
        if kv.is_contiguous(memory_format=torch.channels_last):
            # NHWC in memory: (B, HW, C) views of k and v need no copy; k is transposed once so the
            # softmax runs over a contiguous last axis (a strided softmax is ~7x slower on CUDA).
            k, v = kv.permute(0, 2, 3, 1).reshape(b, h * w, 2 * c).split(c, dim=-1)
            k = torch.softmax(k.transpose(1, 2).contiguous(), dim=-1, dtype=torch.float32).to(v.dtype)
            context = torch.bmm(k, v)  # B x C(k) x C(v)
        else:
            k, v = kv.reshape(b, 2, c, h * w).unbind(1)
            k = torch.softmax(k, dim=-1, dtype=torch.float32).to(v.dtype)
            context = torch.bmm(k, v.transpose(1, 2))
        w_q, w_out = self.to_qkv.weight[:c].reshape(c, c), self.to_out.weight.reshape(c, c)
        m = (w_q.t() * self.scale) @ context @ w_out.t()  # B x C(in) x C(out)
        if x.is_contiguous(memory_format=torch.channels_last):
            out = torch.baddbmm(self.to_out.bias.to(x.dtype), x.permute(0, 2, 3, 1).reshape(b, h * w, c), m)
            return out.reshape(b, h, w, c).permute(0, 3, 1, 2)
        out = torch.baddbmm(self.to_out.bias.to(x.dtype)[:, None], m.transpose(1, 2), x.reshape(b, c, h * w))
        return out.reshape(b, c, h, w)


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
