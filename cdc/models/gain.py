"""Gain units: one model for a continuum of rates (Cui et al., "Asymmetric Gained Deep Image
Compression With Continuous Rate Adaptation", CVPR 2021).

A variable-rate codec (``model.rate_lambdas``) learns one gain vector ``g_l`` and one inverse gain
vector ``g'_l`` over the latent's channels per rate level ``l``, each level trained at its own λ::

    y = g_a(x)  ──►  y · g_l  ──► entropy model (codes the scaled latent)  ──►  ŷ · g'_l  ──► decoder

A larger gain means a finer quantisation of y (rounding stays at step 1 on the scaled latent), so
more bits. Between two trained levels the vectors are interpolated geometrically (``level`` is a
real number in [0, L - 1]: ``g = g_i^(1-a) · g_(i+1)^a`` for ``level = i + a``), which gives a
continuous rate: that is what rate control (``cdc compress --bpp``) bisects over. Level 0 is the
lowest rate (the largest λ), level L - 1 the highest.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cdc.config import ModelConfig

DEFAULT_QUALITY = 75.0
"""The quality a variable-rate model codes at when none is asked for (Pillow's JPEG default)."""


def quality_level(quality: float, levels: int) -> float:
    """The rate level (in [0, levels - 1]) of a quality in [0, 100]: linear, 0 the lowest rate."""
    if not (isinstance(quality, (int, float)) and math.isfinite(quality) and 0 <= quality <= 100):
        raise ValueError(f"quality {quality!r} outside [0, 100]")
    return quality / 100 * (levels - 1)


def level_lambdas(rate_lambdas: tuple[float, ...], level: Tensor) -> Tensor:
    """λ at each (real) level, geometric between the trained levels' λ; ``level`` in [0, L - 1]."""
    logs = torch.log(torch.tensor(rate_lambdas, dtype=torch.float32, device=level.device))
    return torch.exp(_interpolate(logs, level.float()))


def _interpolate(table: Tensor, level: Tensor) -> Tensor:
    """Rows of ``table`` (L, ...) linearly interpolated at real ``level`` (B,) in [0, L - 1]: (B, ...)."""
    last = table.shape[0] - 1
    level = level.clamp(0, last)
    low = level.floor().long().clamp(max=max(last - 1, 0))
    frac = (level - low).view(-1, *([1] * (table.dim() - 1)))
    high = (low + 1).clamp(max=last)
    return table[low] * (1 - frac) + table[high] * frac


class GainUnits(nn.Module):
    """Per-level channel gains of the latent and their inverses (log-parameterised: always > 0).

    The gains start at ``(λ_ref / λ_l)^(1/2)`` (``λ_ref``: the geometric mean of the levels' λ), the
    quantisation step a mean-squared-error codec's rate-distortion balance gives at high rate
    (step² ∝ λ), and the inverse gains at their reciprocals: a fixed-rate model trained near
    ``λ_ref`` that gets gain units starts as itself at that level and as a rescaled copy elsewhere.

    Args:
        cfg: ``rate_lambdas`` (L >= 2 values, decreasing: level 0 is the lowest rate) and
            ``latent_channels``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        lambdas = torch.tensor(cfg.rate_lambdas, dtype=torch.float64)
        reference = lambdas.log().mean()
        start = (0.5 * (reference - lambdas.log())).float()
        self.levels = len(cfg.rate_lambdas)
        self.log_gain = nn.Parameter(start[:, None].repeat(1, cfg.latent_channels))
        self.log_inverse = nn.Parameter(-start[:, None].repeat(1, cfg.latent_channels))

    def forward(self, y: Tensor, level: Tensor) -> Tensor:
        """The latent to code: ``y`` (B, C, h, w) scaled by each image's gain at ``level`` (B,)."""
        return y * self._vector(self.log_gain, level, y)

    def inverse(self, y_hat: Tensor, level: Tensor) -> Tensor:
        """The decoder's latent: the decoded ``y_hat`` scaled back by the inverse gain at ``level`` (B,)."""
        return y_hat * self._vector(self.log_inverse, level, y_hat)

    def _vector(self, table: Tensor, level: Tensor, like: Tensor) -> Tensor:
        level = level.to(like.device).reshape(-1).expand(like.shape[0])
        return torch.exp(_interpolate(table, level)).to(like.dtype)[..., None, None]

    def check_level(self, level: float) -> float:
        """``level`` if it is a real number in [0, L - 1], else a ``ValueError`` naming the range."""
        if not (isinstance(level, (int, float)) and math.isfinite(level) and 0 <= level <= self.levels - 1):
            raise ValueError(f"rate level {level!r} outside [0, {self.levels - 1}]")
        return float(level)
