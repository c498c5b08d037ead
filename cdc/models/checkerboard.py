"""Two-pass checkerboard context models of y, and the convolutional one on the mean-scale hyperprior.

He et al., "Checkerboard Context Model for Efficient Learned Image Compression", CVPR 2021: the
latents are split into anchors ((i + j) even) and non-anchors. The anchors are coded first with the
hyperprior's parameters only; the non-anchors then also see the decoded anchors around them. Both
passes are parallel over the whole latent, so decoding costs two parameter passes whatever the image
size (a serial autoregressive context, Minnen et al. 2018, costs one per latent row and column)::

    ẑ ─ h_s ─► hyper (2N: mean, scale of the hyperprior)
    pass 1 (anchors):        (mu, sigma) = P(hyper, 0)
    pass 2 (non-anchors):    (mu, sigma) = P(hyper, C(ŷ ⊙ anchors))

Each pass is one rANS string (compressai's ``GaussianConditional``): a file holds three strings
(z, anchors, non-anchors). ``CheckerboardModel`` owns the passes, training forward and coding;
subclasses give ``h_a``, ``h_s`` and ``_pass_params``.

``CheckerboardHyperprior`` is the convolutional model: the hyperprior's own ``h_a`` and ``h_s``
(same shapes and names as ``MeanScaleHyperprior``, so a trained hyperprior's weights load into it),
C = a 5×5 convolution that reads anchors only (compressai's ``CheckerboardMaskedConv2d``), and
P(hyper, ctx) = hyper + E([hyper, ctx]) with E's last layer zero at initialisation: started from a
trained hyperprior, the model codes exactly as that hyperprior did, and fitting can only add what
the context is worth.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from compressai.layers import CheckerboardMaskedConv2d
from torch import Tensor, nn

from cdc.config import ModelConfig
from cdc.models.entropy import HyperLatentModel, checked_decompress, decoder_values, hyper_transforms


def anchor_mask(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """(1, 1, h, w) float mask of the checkerboard anchors ((i + j) even), decoded first."""
    i = torch.arange(h, device=device).view(-1, 1)
    j = torch.arange(w, device=device).view(1, -1)
    return ((i + j) % 2 == 0).float().view(1, 1, h, w)


class CheckerboardModel(HyperLatentModel):
    """A hyperprior with a two-pass checkerboard context (He et al. 2021): anchors, then the rest."""

    n_strings = 3

    @abstractmethod
    def _pass_params(self, hyper: Tensor, anchors_hat: Tensor | None) -> tuple[Tensor, Tensor]:
        """(mean, scale) of every latent: from ``hyper`` alone (pass 1, ``anchors_hat`` None) or with the
        context of ``anchors_hat`` (pass 2; only its anchor positions may be read)."""

    def forward(self, y: Tensor, noise: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.autocast(y.device.type, enabled=False):
            y = y.float()
            z_hat, z_likelihoods = self._z_forward(y, noise)
            hyper = self.h_s(z_hat)
            mask = anchor_mask(*y.shape[-2:], device=y.device)
            mean1, scale1 = self._pass_params(hyper, None)
            y_tilde = y + torch.empty_like(y).uniform_(-0.5, 0.5) if noise and self.training else None
            anchors_hat = decoder_values(y, y_tilde, mean1, noise, self.training) * mask
            mean2, scale2 = self._pass_params(hyper, anchors_hat)
            mean = mean1 * mask + mean2 * (1 - mask)
            scale = scale1 * mask + scale2 * (1 - mask)
            _, y_likelihoods = self.gaussian_conditional(y, scale, means=mean)
            y_hat = decoder_values(y, y_tilde, mean, noise, self.training)
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    def _code(self, values: Tensor, mean: Tensor, scale: Tensor, sel: Tensor) -> bytes:
        indexes = self.gaussian_conditional.build_indexes(scale[sel].view(1, -1))
        return self.gaussian_conditional.compress(values[sel].view(1, -1), indexes, means=mean[sel].view(1, -1))[0]

    def _decode(self, string: bytes, mean: Tensor, scale: Tensor, sel: Tensor, into: Tensor) -> None:
        indexes = self.gaussian_conditional.build_indexes(scale[sel].view(1, -1))
        values = checked_decompress(self.gaussian_conditional, string, indexes.numel(), indexes,
                                    means=mean[sel].view(1, -1))
        into[sel] = values.view(-1).to(into.dtype)

    def _compress(self, y: Tensor) -> tuple[list[bytes], Tensor]:
        z_string, z_hat = self._z_compress(y)
        hyper = self.h_s(z_hat)
        anchors = anchor_mask(*y.shape[-2:], device=y.device).expand_as(y).bool()
        mean1, scale1 = self._pass_params(hyper, None)
        y_hat = torch.zeros_like(y)
        y_hat[anchors] = (torch.round(y - mean1) + mean1)[anchors]  # exactly what the decoder will rebuild
        mean2, scale2 = self._pass_params(hyper, y_hat)
        y_hat[~anchors] = (torch.round(y - mean2) + mean2)[~anchors]
        strings = [z_string, self._code(y, mean1, scale1, anchors), self._code(y, mean2, scale2, ~anchors)]
        return strings, y_hat

    def _decompress(self, strings: list[bytes], latent_hw: tuple[int, int]) -> Tensor:
        hyper = self.h_s(self._z_decompress(strings, latent_hw))
        h, w = latent_hw
        n = hyper.shape[1] // 2
        anchors = anchor_mask(h, w, device=hyper.device).expand(1, n, h, w).bool()
        y_hat = torch.zeros(1, n, h, w, device=hyper.device, dtype=hyper.dtype)
        mean1, scale1 = self._pass_params(hyper, None)
        self._decode(strings[1], mean1, scale1, anchors, y_hat)
        mean2, scale2 = self._pass_params(hyper, y_hat)
        self._decode(strings[2], mean2, scale2, ~anchors, y_hat)
        return y_hat


class CheckerboardHyperprior(CheckerboardModel):
    """The mean-scale hyperprior plus a convolutional checkerboard context (He et al. 2021).

    Its ``h_a``, ``h_s`` and coders have the names and shapes of ``MeanScaleHyperprior``'s, so
    ``load_state_dict(hyperprior_state, strict=False)`` starts it from a trained hyperprior, coding
    exactly as that one did (the parameter network's last layer starts at zero).
    """

    name = "checkerboard"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n = cfg.latent_channels
        self.h_a, self.h_s = hyper_transforms(cfg)
        self._init_coders(cfg)
        self.context = CheckerboardMaskedConv2d(n, 2 * n, kernel_size=5, padding=2)
        act = nn.LeakyReLU(0.2)
        self.params = nn.Sequential(nn.Conv2d(4 * n, 3 * n, 1), act, nn.Conv2d(3 * n, 3 * n, 1), act,
                                    nn.Conv2d(3 * n, 2 * n, 1))
        nn.init.zeros_(self.params[-1].weight)
        nn.init.zeros_(self.params[-1].bias)

    def _pass_params(self, hyper: Tensor, anchors_hat: Tensor | None) -> tuple[Tensor, Tensor]:
        if anchors_hat is None:
            ctx = torch.zeros_like(hyper)
        else:  # the masked kernel reads opposite-parity neighbours; zeroing non-anchors keeps anchors' own out
            ctx = self.context(anchors_hat * anchor_mask(*anchors_hat.shape[-2:], device=anchors_hat.device))
        mean, scale = (hyper + self.params(torch.cat([hyper, ctx], dim=1))).chunk(2, dim=1)
        return mean, scale
