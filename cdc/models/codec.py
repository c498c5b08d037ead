"""The CDC codec: transform coding with a conditional diffusion decoder.

Yang & Mandt, "Lossy Image Compression with Conditional Diffusion Models", NeurIPS 2023
(arXiv:2209.06950). A ``CompressionModel`` subclass with CompressAI's method names (``forward``,
``update``, ``aux_loss``, ``compress``, ``decompress``), but not its exact layout: ``compress``
returns one batch-1 image's strings as a flat list (CompressAI: one list per stream, one entry per
batch item) and ``shape`` is y's, not z's; ``decompress`` takes the original image size and decode
parameters. CompressAI's ``eval_model`` cannot drive it as is; ``cdc.coding.coder.Coder`` and the
``.cdc`` container are the supported interface::

            ┌─────┐  y  ┌───────────────┐  ŷ  ┌─────────────────┐ c0..c3
    x ──►───┤ g_a ├──►──┤ entropy model ├──►──┤ context decoder ├───►───┐
    [0,1]   └─────┘     │ (hyperprior)  │     └─────────────────┘       │
                        └───────────────┘                               ▼
                     bits: z then y (rANS)          x_N = γ·ε ──► DDIM × S steps of U-Net(x_t, t/T, c)
                                                                        │
                                                                        ▼ x̂ [0,1]

Images enter in [0, 1] and are mapped to [-1, 1] internally. Any size is accepted: inputs are
replicate-padded to a multiple of 64 (g_a /16, hyperprior /4 more) and outputs cropped back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from compressai.models import CompressionModel
from torch import Tensor, nn

from cdc.config import Config, ModelConfig
from cdc.models.checkerboard import CheckerboardHyperprior
from cdc.models.diffusion import GaussianDiffusion
from cdc.models.entroformer import EntroformerEntropyModel
from cdc.models.entropy import LatentEntropyModel, MeanScaleHyperprior
from cdc.models.gain import GainUnits, level_lambdas
from cdc.models.layers import pad_to_multiple
from cdc.models.sampler import DDIMSampler
from cdc.models.transforms import AnalysisTransform, AuxSynthesis, ContextDecoder
from cdc.models.unet import ConditionalUNet

Refine = Callable[[Tensor, Tensor, tuple[int, int], float | None], Tensor]
"""Encoder effort (``cdc.coding.refine``): ``refine(y, x0, (height, width), level)`` is the latent to code
for the encoder's ``y`` (gain applied at rate ``level`` in a variable-rate model, else level None) of the
padded image ``x0`` (pixels in [-1, 1]) whose top-left ``height`` x ``width`` pixels are the image's own."""

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_entropy_model(cfg: ModelConfig) -> LatentEntropyModel:
    """The entropy model named by ``cfg.entropy_model`` (``hyperprior``, ``checkerboard`` or ``entroformer``)."""
    models = {"hyperprior": MeanScaleHyperprior, "checkerboard": CheckerboardHyperprior,
              "entroformer": EntroformerEntropyModel}
    if cfg.entropy_model not in models:
        raise ValueError(f"unknown entropy model {cfg.entropy_model!r}")
    return models[cfg.entropy_model](cfg)


class CDCCodec(CompressionModel):
    """Conditional-diffusion image codec.

    Args:
        config: the codec sections (``model``, ``diffusion``, ``sampler``) are used; the
            ``sampler`` section gives the default decode parameters.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.g_a = AnalysisTransform(config.model)
        self.entropy = build_entropy_model(config.model)
        self.gain = GainUnits(config.model) if config.model.rate_lambdas else None
        self.context = ContextDecoder(config.model)
        self.unet = ConditionalUNet(config.model)
        self.g_s = AuxSynthesis(config.model) if config.model.aux_synthesis else None
        if config.diffusion.residual:  # start exactly at x_aux: the U-Net's first output is zero
            nn.init.zeros_(self.unet.head[-1].weight)
            nn.init.zeros_(self.unet.head[-1].bias)
        self.diffusion = GaussianDiffusion(config.diffusion)
        self.compiled_decoder = False
        self._decode_unets: dict[tuple, tuple] = {}  # (dtype, device, compiled) -> (U-Net, denoiser); not submodules

    @property
    def rate_levels(self) -> int:
        """Rate levels of a variable-rate model (``model.rate_lambdas``); 0 for a fixed-rate one."""
        return 0 if self.gain is None else self.gain.levels

    def coded_latent(self, y: Tensor, level: float | Tensor | None = None) -> Tensor:
        """The latent the entropy model codes: ``y`` itself, or scaled by the gain at ``level`` (a
        variable-rate model: a real number in [0, L - 1], or one per image; it needs one)."""
        if self.gain is None:
            if level is not None:
                raise ValueError("a fixed-rate model takes no rate level")
            return y
        return self.gain(y, self._levels(level, y))

    def decoder_latent(self, y_hat: Tensor, level: float | Sequence[float] | Tensor | None = None) -> Tensor:
        """What the decoder is conditioned on: the decoded ``y_hat``, scaled back by the inverse gain
        at ``level`` in a variable-rate model."""
        return y_hat if self.gain is None else self.gain.inverse(y_hat, self._levels(level, y_hat))

    def _levels(self, level: float | Sequence[float] | Tensor | None, like: Tensor) -> Tensor:
        if level is None:
            raise ValueError(f"a variable-rate model needs a rate level in [0, {self.rate_levels - 1}]")
        if isinstance(level, Tensor):
            return level
        values = [level] if isinstance(level, (int, float)) else list(level)
        return torch.tensor([self.gain.check_level(v) for v in values], device=like.device)

    @property
    def downsampling_factor(self) -> int:
        """Padded input sizes are multiples of this (64: g_a /16 times the hyperprior's /4)."""
        return max(64, self.unet.multiple)

    # ------------------------------------------------------------------ training
    PHASES = ("joint", "decoder", "autoencoder", "entropy")

    def forward(self, x: Tensor, t: Tensor | None = None, noise: Tensor | None = None,
                phase: str = "joint", x_t: Tensor | None = None, level: Tensor | None = None) -> dict[str, Tensor]:
        """One training/evaluation pass at a random timestep (no sampling chain).

        Args:
            x: images in [0, 1], (B, 3, H, W) with H, W multiples of 64.
            t: integer timesteps in [0, T) (uniform if omitted).
            noise: the diffusion noise eps (standard normal if omitted).
            phase: ``joint`` (everything trains), ``decoder`` (g_a and the entropy model run
                without gradients: the latent is frozen) or ``autoencoder`` (no diffusion: only
                the auxiliary reconstruction; needs ``model.aux_synthesis``) or ``entropy`` (only
                the entropy model runs with gradients, on the frozen latent: rate terms only).
            x_t: the denoiser's input itself, in [-1, 1] scale (B, 3, H, W), instead of
                ``q_sample(x0, t, noise)``: e.g. the sampler's start state at t = T - 1, which trains
                exactly what a one-step decode computes (needs ``t``; ``noise`` is unused and the
                regression target is the output that x0 implies at ``x_t``).
            level: a variable-rate model's rate level per image (B,), reals in [0, L - 1]; uniform
                if omitted. Its λ is returned as ``lmbda`` (B,), the rate weight of each image.

        Returns:
            ``likelihoods``: {"y", "z"}; ``x0``: the clean image in [-1, 1]; ``aux_loss``: the
            prior's quantile loss (returned here so DDP/DeepSpeed see every parameter used in
            forward); ``x_aux``: the auxiliary reconstruction in [-1, 1] (with aux synthesis).
            The entropy phase returns only ``likelihoods``, ``x0`` and ``aux_loss``.
            Except in the autoencoder phase also ``output``/``target``: the network output and its
            regression target, ``t``, ``x0_pred``: the one-step x0 estimate in [-1, 1]. ``x_hat``:
            that estimate (or x_aux in the autoencoder phase) in [0, 1], unclamped.
        """
        if x.shape[-1] % self.downsampling_factor or x.shape[-2] % self.downsampling_factor:
            raise ValueError(f"training inputs must be multiples of {self.downsampling_factor}, got {tuple(x.shape)}")
        if phase not in self.PHASES:
            raise ValueError(f"phase must be one of {self.PHASES}, got {phase!r}")
        x0 = x * 2 - 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and phase not in ("decoder", "entropy")):
            # NCHW into the entropy model even for a channels-last network: its noise proxy (compressai's
            # uniform_ over memory order) then draws the same noise for either layout. It is small.
            y = self.g_a(x0).contiguous()
            rate = {}
            if self.gain is not None:  # the gains belong to the latent: frozen with it
                if level is None:
                    level = torch.rand(x.shape[0], device=x.device) * (self.gain.levels - 1)
                y = self.gain(y, level)
                rate = {"lmbda": level_lambdas(self.config.model.rate_lambdas, level)}
        if phase == "entropy":
            _, likelihoods = self.entropy(y)
            return {"likelihoods": likelihoods, "x0": x0, "aux_loss": self.aux_loss(), **rate}
        with torch.set_grad_enabled(torch.is_grad_enabled() and phase != "decoder"):
            # the autoencoder phase trains with the noise proxy (see cdc.models.entropy): no dead start
            y_hat, likelihoods = self.entropy(y, noise=phase == "autoencoder")
        if self.gain is not None:
            y_hat = self.gain.inverse(y_hat, level)
        out = {"likelihoods": likelihoods, "x0": x0, "aux_loss": self.aux_loss(), **rate}
        x_aux = self.g_s(y_hat) if self.g_s is not None else None
        if x_aux is not None:
            out["x_aux"] = x_aux
        if phase == "autoencoder":
            if x_aux is None:
                raise ValueError("the autoencoder phase needs model.aux_synthesis")
            return {**out, "x_hat": (x_aux + 1) / 2}
        pyramid = self.context(y_hat)
        if x_t is not None and t is None:
            raise ValueError("a given x_t needs its timesteps t")
        if t is None:
            t = self.diffusion.sample_timesteps(x.shape[0], x.device)
        if x_t is None:
            if noise is None:  # drawn in NCHW order (randn_like follows memory order): same noise in either layout
                noise = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device).to(memory_format=_layout(x0))
            x_t = self.diffusion.q_sample(x0, t, noise)
            target = self.diffusion.target(x0, noise, t)
        else:  # the output that x0 implies at this x_t (x0 itself for the sample parameterization)
            target = self.diffusion.from_x0(x0, x_t, t)
        output = self._predict(self.unet, x_t, t, pyramid, x_aux)
        x0_pred, _ = self.diffusion.to_x0_eps(output, x_t, t)
        return {**out, "x_hat": (x0_pred + 1) / 2, "output": output, "target": target,
                "t": t, "x0_pred": x0_pred}

    def _predict(self, unet: ConditionalUNet, x_t: Tensor, t: Tensor, pyramid: list, x_aux: Tensor | None,
                 conditioned: bool = False) -> Tensor:
        """The denoiser's output in fp32. With ``diffusion.residual`` the U-Net predicts a correction
        to what x_aux implies (x_aux itself for the sample parameterization), added in fp32 so a
        bf16 U-Net does not round the reconstruction to bf16. ``conditioned``: ``pyramid`` is
        ``ConditionalUNet.condition``'s."""
        output = unet(x_t, t.float() / self.diffusion.timesteps, pyramid, conditioned).float()
        if not self.config.diffusion.residual:
            return output
        return output + self.diffusion.from_x0(x_aux.float(), x_t.float(), t)

    def update(self, scale_table: Tensor | None = None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the entropy coder's CDF tables (after training, before ``compress``)."""
        if update_quantiles:
            self.entropy.update_quantiles()
        self._decode_unets.clear()
        return self.entropy.update(force=force)

    # ------------------------------------------------------------------ coding
    @torch.no_grad()
    def compress(self, x: Tensor, refine: Refine | None = None, level: float | None = None) -> dict:
        """Entropy-code one image.

        Args:
            x: (1, 3, H, W) in [0, 1], any H, W >= 1.
            refine: encoder effort: maps the encoder's latent to the one coded (see ``cdc.coding.refine``).
            level: a variable-rate model's rate level, a real number in [0, L - 1] (``cdc.models.gain``).

        Returns:
            ``strings`` (list of bytes, decode order), ``shape`` (h, w of y), ``y`` (the coded latent,
            gain applied) and ``y_hat`` (as coded).
        """
        xp = pad_to_multiple(x.float() * 2 - 1, self.downsampling_factor)
        y = self.coded_latent(self.g_a(xp), level)
        if refine is not None:
            y = refine(y, xp, tuple(x.shape[-2:]), level)
        strings, y_hat = self.entropy.compress(y)
        return {"strings": strings, "shape": tuple(y.shape[-2:]), "y": y, "y_hat": y_hat}

    @torch.no_grad()
    def decompress(
        self,
        strings: list[bytes],
        shape: tuple[int, int],
        image_size: tuple[int, int] | None = None,
        steps: int | None = None,
        gamma: float | None = None,
        seed: int | None = None,
        precision: str = "fp32",
        progress: Callable[[int], None] | None = None,
        portable: bool = True,
        level: float | None = None,
    ) -> dict[str, Tensor]:
        """Decode strings from ``compress``; unset decode parameters come from the config.
        ``portable=False`` decodes strings coded with float32 entropy parameters (older files);
        ``level``: the rate level they were coded at (variable-rate models).

        Returns ``x_hat`` in [0, 1] cropped to ``image_size`` and the decoded ``y_hat`` (as coded).
        """
        y_hat = self.entropy.decompress(strings, shape, portable)
        x = self.reconstruct(y_hat, steps, gamma, seed, precision, progress, level=level)
        if image_size is not None:
            x = x[..., : image_size[0], : image_size[1]]
        return {"x_hat": (x + 1) / 2, "y_hat": y_hat}

    @torch.no_grad()
    def reconstruct(
        self,
        y_hat: Tensor,
        steps: int | None = None,
        gamma: float | None = None,
        seed: int | Sequence[int] | None = None,
        precision: str = "fp32",
        progress: Callable[[int], None] | None = None,
        x_start: Tensor | None = None,
        level: float | Sequence[float] | None = None,
    ) -> Tensor:
        """Run the diffusion decoder conditioned on ŷ (B, C, h, w, as entropy-decoded); returns the padded
        images in [-1, 1].

        ``seed``: one for the batch, or one per image (each image then decodes as it would alone).
        ``x_start``: the start state (see ``cdc.models.sampler.DDIMSampler.sample``), else drawn from ``seed``.
        ``level``: a variable-rate model's rate level, one for the batch or one per image.
        """
        y_hat = self.decoder_latent(y_hat, level)
        cfg = self.config.sampler
        sampler = DDIMSampler(
            self.diffusion,
            steps=cfg.steps if steps is None else steps,
            gamma=cfg.gamma if gamma is None else gamma,
            clip_x0=cfg.clip_x0,
        )
        dtype = PRECISIONS[precision]
        module, unet = self._unet_for(dtype)
        x_aux = self.g_s(y_hat.float()) if self.config.diffusion.residual else None
        # the context's share of every step, computed once for all of them
        conditioned = module.condition([c.to(dtype).contiguous(memory_format=torch.channels_last)
                                        for c in self.context(y_hat.float())])

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            x_t = x_t.to(dtype).contiguous(memory_format=torch.channels_last)
            return self._predict(unet, x_t, t, conditioned, x_aux, conditioned=True)

        b, _, h, w = y_hat.shape
        shape = (b, 3, h * 16, w * 16)
        return sampler.sample(denoise, shape, cfg.seed if seed is None else seed, y_hat.device, progress, x_start)

    def compile_decoder(self, enabled: bool = True) -> CDCCodec:
        """Decode with a ``torch.compile``-d U-Net (inductor kernels; on CUDA also CUDA graphs, mode
        ``reduce-overhead``, so a DDIM step is one graph replay instead of hundreds of launches).

        The first decode of each (image size, precision) compiles (tens of seconds); later ones reuse
        it. Outputs match the eager U-Net to float rounding (tested on CPU). Returns ``self``.
        """
        self.compiled_decoder = enabled
        return self

    def _unet_for(self, dtype: torch.dtype) -> tuple[ConditionalUNet, Callable[..., Tensor]]:
        """The decoding U-Net: fp32 as trained, or a channels-last copy in ``dtype`` (bf16 convolutions
        run ~2x faster than fp32 on CPUs with AVX-512-BF16, more with AMX and on GPUs; entropy coding and
        the sampler state keep their own precision); and what runs its steps: itself, or compiled when
        ``compile_decoder`` asked for it."""
        device = next(self.unet.parameters()).device
        key = (dtype, device, self.compiled_decoder)
        if key not in self._decode_unets:
            unet = self.unet
            if dtype != torch.float32:
                unet = copy.deepcopy(unet).to(dtype=dtype, memory_format=torch.channels_last).eval()
            self._decode_unets[key] = (unet, _compiled(unet) if self.compiled_decoder else unet)
        return self._decode_unets[key]

    def train(self, mode: bool = True) -> CDCCodec:
        self._decode_unets.clear()  # weights may change while training: drop the bf16 / compiled snapshots
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True):
        self._decode_unets.clear()
        return super().load_state_dict(state_dict, strict=strict)

    def aux_loss(self) -> Tensor:
        """Quantile (median) loss of the factorized prior on z; trains only its quantiles."""
        return self.entropy.entropy_bottleneck.loss()


def _layout(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def _compiled(unet: ConditionalUNet) -> Callable[..., Tensor]:
    """``unet`` under ``torch.compile`` (static shapes); on CUDA with CUDA graphs, whose output buffers
    the next replay overwrites: each call marks a new step and returns a copy."""
    if next(unet.parameters()).device.type != "cuda":
        return torch.compile(unet, dynamic=False)
    graphed = torch.compile(unet, mode="reduce-overhead", dynamic=False)

    def denoise(*args: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return graphed(*args).clone()

    return denoise
