"""Deterministic DDIM sampler (Song et al. 2021, eta = 0) as its own, seedable object.

CDC decodes with a handful of DDIM steps started from ``x_N = gamma * N(0, I)`` (the
official code): gamma = 0.8 in the released test scripts, gamma = 0 gives a fully deterministic decoder.
The start noise is drawn on the CPU from an explicit ``torch.Generator`` so that a seed means
the same noise on every device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cdc.models.diffusion import GaussianDiffusion

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``f(x_t, t) -> network output``; t is an int64 tensor of shape (B,)."""


class SamplerError(ValueError):
    """Invalid decode parameters (e.g. steps out of range)."""


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """The S training timesteps visited, ascending: ``floor(linspace(0, T-1, S))``.

    With T = 8193 and S in {17, 65, 129} these are exact multiples of 512/128/64, as in the
    official code. S = 1 visits t = T-1 only (a single jump from noise to x0).
    """
    if not 1 <= steps <= timesteps:
        raise SamplerError(f"steps must be in [1, {timesteps}], got {steps}")
    if steps == 1:
        return [timesteps - 1]
    return torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).floor().long().tolist()


@dataclass(frozen=True)
class DDIMSampler:
    """DDIM with eta = 0 over ``steps`` evenly spaced timesteps.

    Args:
        diffusion: schedule and parameterization algebra.
        steps: number of denoiser evaluations S in [1, T].
        gamma: start-noise scale (>= 0).
        clip_x0: clamp every x0 estimate to [-1, 1] and re-derive eps from it (official X-param).
    """

    diffusion: GaussianDiffusion
    steps: int
    gamma: float = 0.8
    clip_x0: bool = True

    def __post_init__(self) -> None:
        ddim_timesteps(self.diffusion.timesteps, self.steps)  # validates steps
        if self.gamma < 0:
            raise SamplerError(f"gamma must be >= 0, got {self.gamma}")

    def start_noise(self, shape: Iterable[int], seed: int | Sequence[int]) -> Tensor:
        """``gamma * N(0, I)`` drawn from ``torch.Generator().manual_seed(seed)`` on the CPU (fp32).

        A sequence of seeds (one per batch item) draws each item as a batch of one would: a batch of
        images decodes exactly like the images one by one.
        """
        shape = tuple(shape)
        if isinstance(seed, int):
            return self.gamma * torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        if len(seed) != shape[0]:
            raise SamplerError(f"{len(seed)} seeds for a batch of {shape[0]}")
        return torch.cat([self.start_noise((1, *shape[1:]), s) for s in seed])

    @torch.no_grad()
    def sample(
        self,
        denoise: Denoiser,
        shape: tuple[int, ...],
        seed: int | Sequence[int],
        device: torch.device | str = "cpu",
        progress: Callable[[int], None] | None = None,
        x_start: Tensor | None = None,
    ) -> Tensor:
        """Run the reverse process; returns x0 in [-1, 1] (fp32, clamped when ``clip_x0``).

        Args:
            denoise: network wrapper; may compute in a lower precision, the state stays fp32.
            shape: (B, 3, H, W) of the padded image.
            seed: start-noise seed, or one per batch item (see ``start_noise``).
            device: where the state lives.
            progress: called with 1 after every step (e.g. ``tqdm.update``).
            x_start: the start state x_N itself (``shape``), instead of ``start_noise`` (``seed``
                unused); tiled decoding draws it per block (``cdc.coding.tiling.block_noise``).
        """
        diff = self.diffusion
        ts = ddim_timesteps(diff.timesteps, self.steps)
        abar = dict(zip(ts, diff.alphas_cumprod[ts].tolist(), strict=True))  # one host sync, not two per step
        x = (self.start_noise(shape, seed) if x_start is None else x_start.float()).to(device)
        for i in reversed(range(len(ts))):
            t = torch.full((shape[0],), ts[i], dtype=torch.long, device=device)
            out = denoise(x, t).float()
            x0, eps = diff.to_x0_eps(out, x, t)
            if self.clip_x0:
                x0 = x0.clamp(-1, 1)
                a_t = abar[ts[i]]
                eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5
            if i == 0:
                x = x0
            else:
                a_prev = abar[ts[i - 1]]
                x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
            if progress is not None:
                progress(1)
        return x.clamp(-1, 1) if self.clip_x0 else x
