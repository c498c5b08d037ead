"""Entropy models of the latent y: the interface and the mean-scale hyperprior.

The codec talks to its entropy model through ``LatentEntropyModel`` only, so other models
(e.g. a transformer hyperprior with a context model) plug in by config without special cases.

Mean-scale hyperprior (Minnen, Ballé & Toderici, NeurIPS 2018), as in the official CDC code
(github.com/buggyyang/CDC_compression)::

    y ─ h_a ─► z ─[EntropyBottleneck: factorized prior, medians m]─► ẑ = round(z - m) + m
                                                                      │
    y ─[GaussianConditional N(mu, sigma), sigma >= 0.1]◄── mu, sigma ─ h_s
    └─► ŷ = round(y - mu) + mu      (straight-through in training, mu detached in the offset)

Training uses *mixed quantization*: the rate term sees uniform noise U(-1/2, 1/2) on y and z,
the decoder path sees the rounded values with a straight-through gradient. With ``noise=True``
the decoder path sees the same noisy values as the rate term instead (the additive-noise proxy of
Ballé et al. 2017, CompressAI's default): at initialisation |y| is well below 1/2, so rounding
maps every latent to its mean and the decoder gets no signal to learn from; the noise proxy
does not have that dead start. Likelihoods are always computed in fp32 (fp16 underflows to
bpp = inf).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from cdc.config import ModelConfig

"""Stable ids written into the bitstream header."""


def _ste_round(x: Tensor, offset: Tensor) -> Tensor:
    """``round(x - offset) + offset`` forward, identity gradient w.r.t. x, none w.r.t. offset."""
    offset = offset.detach()
    return x + (torch.round(x - offset) + offset - x).detach()


def decoder_values(x: Tensor, x_tilde: Tensor, offset: Tensor, noise: bool, training: bool) -> Tensor:
    """The decoder path's latent: the coder's noisy ``x_tilde`` (noise proxy, training only) or
    ``round(x - offset) + offset`` with a straight-through gradient."""
    return x_tilde if noise and training else _ste_round(x, offset)


class FactorizedPrior(EntropyBottleneck):
    """compressai's ``EntropyBottleneck`` (Ballé et al. 2018's factorized prior) whose training/eval
    ``forward`` stays on the device.

    compressai's forward permutes by a device tensor: every axis read back costs the host a sync
    (twelve per step on CUDA, so the host cannot queue ahead of the GPU) and breaks ``torch.compile``'s
    graph. This one permutes by Python ints; values, noise draws and state dict are compressai's.
    """

    def forward(self, x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        """(z̃: z + U(-1/2, 1/2) in training, else round(z - m) + m; likelihoods in (0, 1]), z's shape."""
        training = self.training if training is None else training
        values = x.transpose(0, 1).contiguous()  # C x B x ...: one factorized density per channel
        shape = values.shape
        outputs = self.quantize(values.reshape(shape[0], 1, -1), "noise" if training else "dequantize",
                                self._get_medians())
        likelihood, _, _ = self._likelihood(outputs)
        if self.use_likelihood_bound:
            likelihood = self.likelihood_lower_bound(likelihood)
        return (outputs.reshape(shape).transpose(0, 1).contiguous(),
                likelihood.reshape(shape).transpose(0, 1).contiguous())


def scale_table(bound: float, levels: int, maximum: float = 256.0) -> Tensor:
    """``levels`` log-spaced Gaussian scales from ``bound`` to ``maximum`` (the coder's CDF grid).

    Computed in Python's float64 and rounded to float32, so that a model built on any machine has
    the same grid: torch's vectorised float32 ``exp`` rounds differently under AVX2 and AVX-512."""
    lo, hi = math.log(bound), math.log(maximum)
    step = (hi - lo) / max(levels - 1, 1)
    return torch.tensor([math.exp(lo + step * i) for i in range(levels)], dtype=torch.float32)


class LatentEntropyModel(nn.Module, ABC):
    """Contract of an entropy model of y (B x N x h x w, h and w = 1/16 of the padded image)."""

    name: str
    n_strings: int
    """Strings per coded image (or per tile), in decode order."""

    @abstractmethod
    def forward(self, y: Tensor, noise: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """Return (ŷ for the decoder path, likelihoods per latent, each in (0, 1]).

        ``noise``: in training, ŷ = y + U(-1/2, 1/2) (the noise proxy) instead of rounding with a
        straight-through gradient."""

    def __init__(self) -> None:
        super().__init__()
        self._coders: dict[torch.dtype, LatentEntropyModel] = {}  # a dict: its copies are not submodules
        self.register_load_state_dict_pre_hook(_drop_coders)  # new weights: the copies are stale

    @torch.no_grad()
    def compress(self, y: Tensor, portable: bool = True) -> tuple[list[bytes], Tensor]:
        """Entropy-code one image's y (B = 1) on ``coder``. Returns (strings in decode order, ŷ as
        decoded, fp32 on y's device). ``portable=False`` writes what builds before float64 coding wrote."""
        coder = self.coder(portable)
        strings, y_hat = coder._compress(y.detach().cpu().to(coder.dtype))
        return strings, y_hat.to(y.device, torch.float32)

    @torch.no_grad()
    def decompress(self, strings: list[bytes], latent_hw: tuple[int, int], portable: bool = True) -> Tensor:
        """Rebuild ŷ (1 x N x h x w, fp32 on the model's device) from the strings on ``coder``;
        bit-exact with ``compress`` of the same ``portable``."""
        y_hat = self.coder(portable)._decompress(strings, latent_hw)
        return y_hat.to(next(self.parameters()).device, torch.float32)

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype: float32 as trained, float64 in ``coder``'s portable copy."""
        return next(self.parameters()).dtype

    def coder(self, portable: bool = True) -> LatentEntropyModel:
        """The model the entropy coder runs: a float64 CPU copy (``portable``), else this model in
        float32 on the CPU (a CPU copy when it lives on a GPU). Copies are made at first use and
        dropped by ``update``.

        The parameters of y (means, scale indexes) must come out the same at encode and decode, to the
        bit: one scale index that differs derails the rANS decoder for the rest of the string. Float32
        does not give that across machines. GPU convolutions differ from call to call (cuDNN picks
        algorithms per call, some accumulate atomically: on an H100 every decoded file was noise), and
        on CPUs the convolution algorithm (oneDNN's or another's, the thread count) changes the
        rounding: decoded without oneDNN, 3 of ``small-base``'s 374,784 scale indexes over five
        photos moved and 2 of the 5 files derailed (``benchmarks/portability.py``). Float64's rounding
        differences are 2^29 times smaller, next to scale-grid steps 5 % apart; its convolutions
        (not oneDNN's) are slower, but run on the small latent grids (1/16 and 1/64 of the image).
        Float32 stays for files written before float64 coding (their flag says so).
        """
        dtype = torch.float64 if portable else torch.float32
        if dtype == self.dtype and next(self.parameters()).device.type == "cpu":
            return self
        if dtype not in self._coders:
            coders, self._coders = self._coders, {}  # the copy must not carry the other copies
            try:
                coders[dtype] = copy.deepcopy(self).to("cpu", dtype)
            finally:
                self._coders = coders
        return self._coders[dtype]

    @abstractmethod
    def _compress(self, y: Tensor) -> tuple[list[bytes], Tensor]:
        """``compress`` on a CPU model: y (1 x N x h x w) on the CPU in the model's dtype."""

    @abstractmethod
    def _decompress(self, strings: list[bytes], latent_hw: tuple[int, int]) -> Tensor:
        """``decompress`` on a CPU model."""

    def update(self, force: bool = False) -> bool:
        """Build the discrete CDF tables the coder needs (call after training, and after any change of
        the weights: it also drops ``coder``'s copies). Returns whether any table changed."""
        self._coders.clear()
        return self._update_tables(force)

    @abstractmethod
    def _update_tables(self, force: bool) -> bool:
        """``update``'s tables (rebuilt only if missing, unless ``force``)."""

    @torch.no_grad()
    def bits(self, y: Tensor) -> float:
        """The model's estimate of the payload: ``-log2`` likelihoods of ŷ and ẑ summed, in bits."""
        _, likelihoods = self(y)
        return float(sum(-torch.log2(lk).sum() for lk in likelihoods.values()))


PAD_PATTERNS = (b"\x00", b"\x5a")
"""Two fillers after a string: decoded with either, the values agree only if the rANS decoder never
read past the string's end (0x5a, not 0xff: all-ones bytes would keep compressai's bypass loop going)."""


def checked_decompress(model, string: bytes, symbols: int, *args, **kwargs) -> Tensor:
    """compressai's ``model.decompress([string], *args, **kwargs)``, safe for cut or crafted strings.

    compressai's rANS decoder reads its input without bounds: a string shorter than the latent needs
    makes it read whatever memory follows (output that differs between calls, or a SIGSEGV). Here the
    string is followed by enough filler for any read the decoder can make (one 32-bit word per symbol
    and per bypass chunk: at most ``8 * symbols + 16 * len(string)`` bytes), and decoded with two
    fillers; if the results differ, it read past its string.

    Args:
        model: an ``EntropyBottleneck`` or ``GaussianConditional`` with updated tables.
        symbols: how many values the string codes (C·h·w).

    Raises:
        ValueError: the string is too short for its latent.
    """
    pad = 8 * symbols + 16 * len(string) + 1024
    first, second = (model.decompress([string + filler * pad], *args, **kwargs) for filler in PAD_PATTERNS)
    if not torch.equal(first, second):
        raise ValueError("a string ends before its latent does (cut or crafted file)")
    return first


def _drop_coders(module: LatentEntropyModel, *_) -> None:
    module._coders.clear()


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)


def _deconv(c_in: int, c_out: int, k: int = 5) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=k // 2, output_padding=1)


def hyper_transforms(cfg: ModelConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """The mean-scale hyperprior's convolutional ``h_a`` (y -> z, /4) and ``h_s`` (ẑ -> mean and scale
    of y, 2N channels), as in Minnen, Ballé & Toderici 2018 with LeakyReLU activations."""
    n, hc = cfg.latent_channels, cfg.hyper_channels
    act = nn.LeakyReLU(0.2)
    h_a = nn.Sequential(_conv(n, hc, 3), act, _conv(hc, hc, 5, 2), act, _conv(hc, hc, 5, 2))
    h_s = nn.Sequential(_deconv(hc, hc), act, _deconv(hc, hc), act, _conv(hc, 2 * n, 3))
    return h_a, h_s


class HyperLatentModel(LatentEntropyModel):
    """What every model here shares: a hyper-latent z (1/4 of y's resolution) with compressai's
    factorized prior (``FactorizedPrior``), and y coded by a ``GaussianConditional`` (scales >= bound).
    Subclasses provide ``h_a`` (y -> z) and the parameters of y given the decoded ẑ."""

    def _init_coders(self, cfg: ModelConfig) -> None:
        """Create the two coders; subclasses call it after their networks (the RNG order fixes the
        initial weights, and with them the golden bitstream of a seeded model)."""
        self.entropy_bottleneck = FactorizedPrior(cfg.hyper_channels)
        self.gaussian_conditional = GaussianConditional(None, scale_bound=cfg.scale_bound)
        self._table = scale_table(cfg.scale_bound, cfg.scale_levels)

    # compressai's EntropyBottleneck has no public API for these two: the only private calls live here
    def z_medians(self) -> Tensor:
        """The factorized prior's medians m (1, C, 1, 1): ẑ = round(z - m) + m."""
        return self.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)

    def update_quantiles(self) -> None:
        """Recompute the prior's quantiles exactly (bisection) instead of trusting the learned ones."""
        self.entropy_bottleneck._update_quantiles()

    def _z_forward(self, y: Tensor, noise: bool) -> tuple[Tensor, Tensor]:
        """Training/eval pass of z: (ẑ, likelihoods of z); ẑ is noisy or STE-rounded (see ``forward``)."""
        z = self.h_a(y)
        z_tilde, z_likelihoods = self.entropy_bottleneck(z)
        return decoder_values(z, z_tilde, self.z_medians(), noise, self.training), z_likelihoods

    def _z_compress(self, y: Tensor) -> tuple[bytes, Tensor]:
        """Code z of one image; returns its string and ẑ exactly as the decoder rebuilds it."""
        if y.shape[0] != 1:
            raise ValueError("compress codes one image at a time (batch size 1)")
        z = self.h_a(y)
        strings = self.entropy_bottleneck.compress(z)
        return strings[0], self.entropy_bottleneck.decompress(strings, z.shape[-2:])

    def _z_decompress(self, strings: list[bytes], latent_hw: tuple[int, int]) -> Tensor:
        if len(strings) != self.n_strings:
            raise ValueError(f"the {self.name} entropy model expects {self.n_strings} strings, got {len(strings)}")
        size = (math.ceil(latent_hw[0] / 4), math.ceil(latent_hw[1] / 4))
        symbols = self.entropy_bottleneck.channels * size[0] * size[1]
        return checked_decompress(self.entropy_bottleneck, strings[0], symbols, size)

    def _update_tables(self, force: bool) -> bool:
        updated = self.entropy_bottleneck.update(force=force)
        updated |= self.gaussian_conditional.update_scale_table(self._table, force=force)
        return updated


class MeanScaleHyperprior(HyperLatentModel):
    """Mean-scale hyperprior on compressai's ``EntropyBottleneck`` and ``GaussianConditional``.

    z has ``hyper_channels`` channels at 1/4 of y's resolution (1/64 of the image).
    """

    name = "hyperprior"
    n_strings = 2

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.h_a, self.h_s = hyper_transforms(cfg)
        self._init_coders(cfg)

    def _params(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        mean, scale = self.h_s(z_hat).chunk(2, dim=1)
        return mean, scale

    def forward(self, y: Tensor, noise: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.autocast(y.device.type, enabled=False):
            y = y.float()
            z_hat, z_likelihoods = self._z_forward(y, noise)
            mean, scale = self._params(z_hat)
            y_tilde, y_likelihoods = self.gaussian_conditional(y, scale, means=mean)
            y_hat = decoder_values(y, y_tilde, mean, noise, self.training)
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    def relaxed(self, y: Tensor, temperature: float) -> tuple[Tensor, dict[str, Tensor]]:
        """ŷ relaxed by stochastic Gumbel annealing (Yang, Bamler & Mandt 2020, sec. 3.2), for
        refining y at encode time (``cdc.coding.refine``): each latent becomes a random soft mix of the
        integers below and above it (relative to its mean), the nearer one likelier, turning into
        rounding as ``temperature`` (> 0) goes to 0; differentiable in y. Returns (ŷ relaxed,
        likelihoods of it and of z); z as in training (noisy rate, rounded values) when this model is
        in training mode. The gradient does not reach y through z: the coder rounds z, and a latent
        refined through the means and scales it predicts was measured to code worse.
        """
        z_hat, z_likelihoods = self._z_forward(y.detach(), noise=False)
        mean, scale = self._params(z_hat)
        offset = y - mean
        below = torch.floor(offset).detach()
        above_by = (offset - below).clamp(1e-6, 1 - 1e-6)  # distance to the integer below, in (0, 1)
        logits = torch.stack((-torch.atanh(above_by), -torch.atanh(1 - above_by)), dim=-1)
        up = nn.functional.gumbel_softmax(logits, tau=temperature)[..., 1]
        y_relaxed = mean + below + up
        likelihoods = self.gaussian_conditional._likelihood(y_relaxed, scale, means=mean)
        if self.gaussian_conditional.use_likelihood_bound:
            likelihoods = self.gaussian_conditional.likelihood_lower_bound(likelihoods)
        return y_relaxed, {"y": likelihoods, "z": z_likelihoods}

    def _compress(self, y: Tensor) -> tuple[list[bytes], Tensor]:
        z_string, z_hat = self._z_compress(y)
        mean, scale = self._params(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scale)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=mean)
        y_hat = self.gaussian_conditional.quantize(y, "dequantize", mean)
        return [z_string, y_strings[0]], y_hat

    def _decompress(self, strings: list[bytes], latent_hw: tuple[int, int]) -> Tensor:
        mean, scale = self._params(self._z_decompress(strings, latent_hw))
        indexes = self.gaussian_conditional.build_indexes(scale)
        return checked_decompress(self.gaussian_conditional, strings[1], indexes.numel(), indexes, means=mean)

