"""Encoder effort: refine the latent of one image at encode time.

An amortised encoder ``g_a`` maps every image to a latent in one pass; the latent that minimises
the model's own rate-distortion objective *for this image* is usually elsewhere (the amortisation
gap). Encoder-side refinement searches for it by gradient descent on y, with the decoder and the
entropy model frozen, then codes the refined y as usual: the bitstream format and the decoder are
unchanged, and any decoder reads the file (Campos et al. 2019, "Content adaptive optimization for
neural image compression"; Yang, Bamler & Mandt 2020, "Improving inference for neural image
compression", NeurIPS).

The objective is ``lmbda * bpp + distortion * MSE(x_aux, x0)``: the rate of the latent and the
mean squared error of the auxiliary reconstruction ``x_aux = g_s(ŷ)`` on the image's own pixels
(pixels in [-1, 1], padding excluded; the one-step decode of the shipped models is x_aux refined,
so a better x_aux is a better decode). Rounding is relaxed by stochastic Gumbel annealing (Yang,
Bamler & Mandt 2020): a soft, random choice between the two nearest integers that hardens into
rounding over the iterations (``cdc.models.entropy.MeanScaleHyperprior.relaxed``). The noise comes
from a fixed seed: the same image, model and effort give the same file on the same machine.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from cdc.limits import MAX_EFFORT
from cdc.models.codec import Refine
from cdc.models.gain import level_lambdas

EFFORTS = {0: 0, 1: 30, 2: 100, 3: 300}
"""Encoder effort level (0 to ``cdc.limits.MAX_EFFORT``) -> refinement iterations (0: the
encoder's latent as it is)."""
assert sorted(EFFORTS) == list(range(MAX_EFFORT + 1))

class RefineError(ValueError):
    """An effort level the codec cannot refine with (out of range, or no auxiliary synthesis)."""


@dataclass(frozen=True)
class RefineSettings:
    """How the latent is refined.

    Attributes:
        iterations: Adam steps on y (0: none).
        lr: Adam's step size, in latent units (the latent is quantized to integers).
        distortion: weight of the MSE against the rate term ``lmbda * bpp``. Not 1 (the auxiliary
            loss's weight in training): training also weights distortion through the diffusion
            loss, and the family's rate-distortion curves fall about 3x less steeply than ``lmbda``
            (MSE per bpp); 3 moves each model along its own curve's slope.
        seed: seed of the rate proxy's uniform noise.
    """

    iterations: int
    lr: float = 0.02
    distortion: float = 3.0
    seed: int = 0

    @classmethod
    def for_effort(cls, effort: int) -> RefineSettings:
        """The settings of an effort level in ``EFFORTS``.

        Raises:
            RefineError: an unknown level.
        """
        if effort not in EFFORTS:
            raise RefineError(f"effort {effort!r} is not a level (an integer in 0-{MAX_EFFORT})")
        return cls(EFFORTS[effort])


class LatentRefiner:
    """Refines latents for one codec (which it never modifies).

    Args:
        codec: a ``cdc.models.codec.CDCCodec`` with ``model.aux_synthesis`` (the distortion's decoder).

    Raises:
        RefineError: the codec has no auxiliary synthesis.
    """

    def __init__(self, codec) -> None:
        if codec.g_s is None:
            raise RefineError("encoder effort needs a model with an auxiliary synthesis (model.aux_synthesis)")
        if not hasattr(codec.entropy, "relaxed"):
            raise RefineError(f"encoder effort needs the hyperprior entropy model, not {codec.entropy.name}")
        # private frozen copies (small beside the U-Net): the entropy model in training mode returns
        # the noisy latent's likelihoods (the rate proxy), and a service decoding on the shared codec
        # meanwhile sees no change of mode or of requires_grad
        self.entropy = copy.deepcopy(codec.entropy).train().requires_grad_(False)
        self.g_s = copy.deepcopy(codec.g_s).eval().requires_grad_(False)
        self.gain = None if codec.gain is None else copy.deepcopy(codec.gain).requires_grad_(False)
        self.lmbda = codec.config.loss.lmbda
        self.rate_lambdas = codec.config.model.rate_lambdas

    def refine(self, y: Tensor, x0: Tensor, size: tuple[int, int], settings: RefineSettings,
               level: float | None = None) -> Tensor:
        """The refined latent.

        Args:
            y: the latent to code, (1, C, h, w) (a variable-rate model's: gain applied).
            x0: the padded image in [-1, 1], (1, 3, 16h, 16w).
            size: (height, width) of the image's own pixels in ``x0`` (the rest is padding).
            settings: iterations, step size and noise seed.
            level: a variable-rate model's rate level: its λ and inverse gain enter the objective.

        Returns:
            y after ``settings.iterations`` Adam steps on ``lmbda * bpp + MSE(x_aux, x0)``, detached.
        """
        if settings.iterations == 0:
            return y
        height, width = size
        target = x0[..., :height, :width].float()
        lmbda, levels = self.lmbda, None
        if self.gain is not None:
            levels = torch.tensor([float(level)], device=y.device)
            lmbda = float(level_lambdas(self.rate_lambdas, levels))
        y = y.detach().float().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([y], lr=settings.lr)
        devices = [y.device] if y.device.type == "cuda" else []  # the caller's random state is left as it was
        with torch.enable_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(settings.seed)
            for i in range(settings.iterations):
                # annealed geometrically from 0.5 to 0.05: soft early (smooth objective), near rounding late
                temperature = 0.5 * 0.1 ** (i / max(settings.iterations - 1, 1))
                y_hat, likelihoods = self.entropy.relaxed(y, temperature)
                if levels is not None:
                    y_hat = self.gain.inverse(y_hat, levels)
                x_aux = self.g_s(y_hat)[..., :height, :width]
                bits = sum(-torch.log2(p).sum() for p in likelihoods.values())
                loss = lmbda * bits / (height * width)
                loss = loss + settings.distortion * (x_aux - target).square().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return y.detach()

    def for_settings(self, settings: RefineSettings) -> Refine:
        """The ``Refine`` function of ``settings``, as ``cdc.models.codec.CDCCodec.compress`` takes it."""
        return lambda y, x0, size, level=None: self.refine(y, x0, size, settings, level)
