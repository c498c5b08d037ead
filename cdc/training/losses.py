"""The rate-distortion-perception objective of CDC (Yang & Mandt 2023, eq. for L).

``L = lmbda * bpp + (1 - rho) * L_diffusion + rho * L_perceptual [+ aux_mse * MSE(x_aux, x0)]``

* bpp: ``-log2`` likelihood of the noisy latents (ŷ and ẑ) per image pixel.
* L_diffusion: the min-SNR-weighted regression loss of the configured parameterization.
* L_perceptual: a frozen perceptual distance between x0 and the *one-step* x0 estimate at the
  same random timestep (no sampling chain in training), as in the paper.
* MSE(x_aux, x0): the auxiliary reconstruction's own distortion (our fast-start recipe, not
  in the paper; ``loss.aux_mse = 0`` gives the paper's objective).

The perceptual network belongs to this loss object, never to the codec or its checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cdc.config import LossConfig
from cdc.models.diffusion import GaussianDiffusion
from cdc.models.perceptual import PerceptualDistance, build_perceptual


def bits_per_pixel(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Per-sample ``sum(-log2 p) / num_pixels`` over all latents, shape (B,), fp32."""
    total = sum(-torch.log2(lk.float()).flatten(1).sum(1) for lk in likelihoods.values())
    return total / num_pixels


class RateDistortionPerceptionLoss(nn.Module):
    """CDC's training loss.

    Args:
        cfg: ``lmbda`` (rate weight, >= 0), ``rho`` (perceptual weight in [0, 1]), perceptual net.
        diffusion: the codec's diffusion (for the parameterization and min-SNR weights).
        perceptual: a prebuilt distance (else built from ``cfg`` when ``rho > 0``).

    A variable-rate model's ``forward`` gives each image its own λ (``out["lmbda"]``), which replaces
    ``cfg.lmbda``.

    ``forward(out, x)`` takes the codec's ``forward`` output and returns a dict of scalars:
    ``loss`` (to minimise), ``bpp``, ``diffusion``, ``perceptual`` (0 when rho = 0), ``aux_mse``
    (0 when unused). In the autoencoder phase (no ``output`` in ``out``) only rate and aux_mse count, in
    the entropy phase (no ``x_aux`` either) only the rate.
    """

    def __init__(self, cfg: LossConfig, diffusion: GaussianDiffusion,
                 perceptual: PerceptualDistance | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.diffusion = diffusion
        if cfg.rho > 0 and perceptual is None:
            perceptual = build_perceptual(cfg.perceptual, cfg.random_backbone)
        self.perceptual = perceptual

    def forward(self, out: dict, num_pixels: int) -> dict[str, Tensor]:
        bpp = bits_per_pixel(out["likelihoods"], num_pixels)
        zero = torch.zeros_like(bpp)
        total = out.get("lmbda", self.cfg.lmbda) * bpp  # a variable-rate model: each image's level's λ
        aux = zero
        if self.cfg.aux_mse > 0 and "x_aux" in out:  # absent in the entropy phase
            aux = (out["x_aux"].float() - out["x0"]).square().flatten(1).mean(1)
            total = total + self.cfg.aux_mse * aux
        diff = perc = zero
        if "output" in out:  # absent in the autoencoder phase: no diffusion ran
            diff = self.diffusion.loss(out["output"], out["target"], out["t"])
            total = total + (1 - self.cfg.rho) * diff
            if self.cfg.rho > 0:
                x0_pred = out["x0_pred"]
                if self.diffusion.cfg.prediction == "epsilon":
                    x0_pred = x0_pred.clamp(-1, 1)  # eps -> x0 explodes at high t (official eps-param clamps)
                perc = self.perceptual(x0_pred, out["x0"])
                total = total + self.cfg.rho * perc
        return {"loss": total.mean(), "bpp": bpp.mean(), "diffusion": diff.mean(), "perceptual": perc.mean(),
                "aux_mse": aux.mean()}
