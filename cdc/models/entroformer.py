"""Entroformer-style entropy model: transformer hyperprior + bidirectional checkerboard context.

Qian et al., "Entroformer: A Transformer-based Entropy Model for Learned Image Compression", ICLR
2022 (the entropy model the CDC paper uses); parallel two-pass checkerboard decoding after He et
al., "Checkerboard Context Model for Efficient Learned Image Compression", CVPR 2021::

    y ─ conv ─ TBlock ─ conv↓ ─ TBlock ─ conv↓ ─► z ─[EntropyBottleneck]─► ẑ
    ẑ ─ TBlock ─ conv↑ ─ TBlock ─ conv↑ ─► hyper (2N)
    pass 1 (anchors, (i + j) even):     (mu, sigma) = EP(hyper, 0)
    pass 2 (the others):                 (mu, sigma) = EP(hyper, CM(ŷ ⊙ anchors))
       CM = conv 5x5 ─ TBlock with keys restricted to anchors (bidirectional: every direction)

TBlock = pre-norm neighbourhood self-attention (radius r, learned 2-D relative position bias per
head, Entroformer's relative position encoding restricted to a window so cost stays linear in the
number of latents) + MLP. The two passes, their training forward and their three rANS strings (z,
anchors, non-anchors) are ``cdc.models.checkerboard.CheckerboardModel``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdc.config import ModelConfig
from cdc.models.checkerboard import CheckerboardModel, anchor_mask
from cdc.models.layers import ChannelLayerNorm


class NeighbourhoodAttention(nn.Module):
    """Multi-head self-attention over the (2r+1)^2 neighbourhood of every position, with a learned
    relative-position bias per head and offset. ``key_mask`` (B, 1, H, W; 1 = visible) restricts
    which positions may be attended to."""

    def __init__(self, dim: int, heads: int, radius: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.radius = heads, radius
        self.window = (2 * radius + 1) ** 2
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)
        self.bias = nn.Parameter(torch.zeros(heads, self.window))

    def _neighbours(self, t: Tensor) -> Tensor:
        b, c, h, w = t.shape
        cols = F.unfold(t, 2 * self.radius + 1, padding=self.radius)  # B, C*K, HW
        return cols.view(b, self.heads, c // self.heads, self.window, h * w)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        q = q.reshape(b, self.heads, c // self.heads, 1, h * w)
        logits = (q * self._neighbours(k)).sum(2) * self.scale + self.bias.view(1, self.heads, -1, 1)
        visible = torch.ones(b, 1, h, w, device=x.device, dtype=x.dtype) if key_mask is None else key_mask.to(x.dtype)
        visible = F.unfold(visible, 2 * self.radius + 1, padding=self.radius).view(b, 1, self.window, h * w)
        logits = logits.masked_fill(visible == 0, float("-inf"))
        attn = torch.nan_to_num(logits.softmax(dim=2), nan=0.0)  # a query with no visible key gets zeros
        out = (attn.unsqueeze(2) * self._neighbours(v)).sum(3)  # B, heads, d, HW
        return self.out(out.reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    """Pre-norm neighbourhood attention + MLP, both residual."""

    def __init__(self, dim: int, heads: int, radius: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = ChannelLayerNorm(dim), ChannelLayerNorm(dim)
        self.attn = NeighbourhoodAttention(dim, heads, radius)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class _Seq(nn.Module):
    """Convs and transformer blocks in sequence (blocks get the key mask)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, key_mask) if isinstance(layer, TransformerBlock) else layer(x)
        return x


class EntroformerEntropyModel(CheckerboardModel):
    """Transformer hyperprior with a two-pass bidirectional checkerboard context model."""

    name = "entroformer"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n, hc = cfg.latent_channels, cfg.hyper_channels
        d, heads, r = cfg.attn_dim or hc, cfg.attn_heads, cfg.attn_radius
        block = lambda: TransformerBlock(d, heads, r)  # noqa: E731
        self.h_a = _Seq(nn.Conv2d(n, d, 3, padding=1), block(), nn.Conv2d(d, d, 5, 2, 2), block(),
                        nn.Conv2d(d, hc, 5, 2, 2))
        self.h_s = _Seq(nn.Conv2d(hc, d, 3, padding=1), block(), nn.ConvTranspose2d(d, d, 5, 2, 2, 1), block(),
                        nn.ConvTranspose2d(d, 2 * n, 5, 2, 2, 1))
        self.context = _Seq(nn.Conv2d(n, d, 5, padding=2), block(), nn.Conv2d(d, 2 * n, 1))
        self.params = nn.Sequential(nn.Conv2d(4 * n, 3 * n, 1), nn.GELU(), nn.Conv2d(3 * n, 2 * n, 1))
        self._init_coders(cfg)

    def _pass_params(self, hyper: Tensor, anchors_hat: Tensor | None) -> tuple[Tensor, Tensor]:
        """(mean, scale) everywhere: from the hyperprior alone (pass 1) or with the anchors' context."""
        if anchors_hat is None:
            ctx = torch.zeros_like(hyper)
        else:
            mask = anchor_mask(*anchors_hat.shape[-2:], device=anchors_hat.device)
            ctx = self.context(anchors_hat * mask, key_mask=mask.expand(anchors_hat.shape[0], -1, -1, -1))
        mean, scale = self.params(torch.cat([hyper, ctx], dim=1)).chunk(2, dim=1)
        return mean, scale
