"""Gaussian diffusion: noise schedules, the forward process and parameterization conversions.

Forward marginal (Ho et al. 2020): ``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps`` with
x0 in [-1, 1]. The denoiser predicts one of (diffusers' vocabulary):

* ``sample``  — x0 itself; CDC's X-parameterization (Yang & Mandt 2023), few-step decoding.
* ``epsilon`` — the noise eps; CDC's original parameterization.
* ``v``       — ``sqrt(abar) * eps - sqrt(1 - abar) * x0`` (Salimans & Ho 2022).

The training loss is weighted by min-SNR-gamma (Hang et al. 2023), expressed for each target so
that all three equal ``min(SNR, gamma) * ||x0 - x0_hat||^2`` for the L2 loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cdc.config import DiffusionConfig


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> Tensor:
    """abar_t for t = 0..T-1 of the cosine schedule (Nichol & Dhariwal 2021), betas clipped at 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos(((steps / timesteps) + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(timesteps: int) -> Tensor:
    """abar_t of DDPM's linear betas rescaled to T steps: 1e-4*(1000/T) to 0.02*(1000/T)."""
    scale = 1000 / timesteps
    betas = torch.linspace(1e-4 * scale, 0.02 * scale, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class GaussianDiffusion(nn.Module):
    """Schedule buffers plus the algebra between x0, eps, v and the network output.

    Buffers are float64 (the tails of the cosine schedule underflow float32 ratios) and are cast
    to the input's dtype when gathered. They are derived from the config, so they are not part
    of any checkpoint.
    """

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        make = cosine_alphas_cumprod if cfg.schedule == "cosine" else linear_alphas_cumprod
        abar = make(cfg.timesteps)
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.register_buffer("snr", abar / (1 - abar), persistent=False)

    @property
    def timesteps(self) -> int:
        return self.cfg.timesteps

    def _coefs(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        abar = self.alphas_cumprod.to(like.device)[t].reshape(-1, *([1] * (like.ndim - 1)))
        return abar.sqrt().to(like.dtype), (1 - abar).sqrt().to(like.dtype)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x0) for integer timesteps ``t`` in [0, T)."""
        a, s = self._coefs(t, x0)
        return a * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target of the configured parameterization."""
        if self.cfg.prediction == "sample":
            return x0
        if self.cfg.prediction == "epsilon":
            return noise
        a, s = self._coefs(t, x0)
        return a * noise - s * x0

    def from_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The configured parameterization's output implied by an x0 estimate at (x_t, t).

        sample: x0; epsilon: ``(x_t - a x0) / s``; v: ``a eps - s x0`` (a, s = sqrt(abar), sqrt(1 - abar)).
        The residual decoder adds the U-Net's output to this for x0 = x_aux.
        """
        if self.cfg.prediction == "sample":
            return x0
        a, s = self._coefs(t, x_t)
        eps = (x_t - a * x0) / s
        return eps if self.cfg.prediction == "epsilon" else a * eps - s * x0

    def to_x0_eps(self, output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Convert a network output at (x_t, t) to the implied (x0, eps) pair."""
        a, s = self._coefs(t, x_t)
        pred = self.cfg.prediction
        if pred == "sample":
            return output, (x_t - a * output) / s
        if pred == "epsilon":
            return (x_t - s * output) / a, output
        return a * x_t - s * output, s * x_t + a * output

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-sample weight for the configured target (ones when min_snr_gamma is 0).

        The x0-equivalent weight is ``clamp(SNR, snr_floor, gamma)``: min-SNR-gamma (Hang et al.
        2023) with an optional floor, so high-noise steps still teach the decoder to use the
        latent; it is converted to the eps and v targets so that all three weigh x0 errors alike.
        """
        snr = self.snr.to(t.device)[t]
        gamma = self.cfg.min_snr_gamma
        if gamma <= 0:
            return torch.ones_like(snr, dtype=torch.float32)
        clipped = snr.clamp(min=self.cfg.snr_floor, max=gamma)
        weight = {"sample": clipped, "epsilon": clipped / snr, "v": clipped / (snr + 1)}[self.cfg.prediction]
        return weight.float()

    def loss(self, output: Tensor, target: Tensor, t: Tensor) -> Tensor:
        """Per-sample weighted L1/L2 between ``output`` and ``target``, shape (B,)."""
        diff = output.float() - target.float()
        per_pixel = diff.abs() if self.cfg.loss == "l1" else diff.square()
        return per_pixel.flatten(1).mean(1) * self.loss_weight(t)

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """Uniform integer timesteps in [0, T)."""
        return torch.randint(0, self.timesteps, (batch,), device=device, generator=generator)
