"""Typed, frozen configuration for the CDC codec and its training.

One YAML file per preset (``cdc/presets/{tiny,small,paper}.yaml``) fills a tree of frozen
dataclasses; ``a.b=value`` overrides are coerced to the declared field type, so a typo or a wrong
type fails at load time with the offending key in the message.

Naming follows the CDC paper (Yang & Mandt, NeurIPS 2023), not CompressAI: ``lmbda`` weights the
*rate* (``loss = lmbda * bpp + (1 - rho) * L_diffusion + rho * L_perceptual``), so a larger
``lmbda`` gives a *lower* bitrate.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

PRESETS_DIR = Path(__file__).with_name("presets")
PRESETS = ("tiny", "small", "paper")
Prediction = Literal["sample", "epsilon", "v"]
Schedule = Literal["cosine", "linear"]
DiffusionLoss = Literal["l2", "l1"]
Perceptual = Literal["lpips-vgg", "lpips-alex", "stlpips-vgg", "stlpips-alex"]
EntropyModel = Literal["hyperprior", "checkerboard", "entroformer"]
Analysis = Literal["resnet", "gdn"]
MixedPrecision = Literal["auto", "bf16", "no"]
LrScaling = Literal["none", "sqrt", "linear"]
CompileMode = Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead"]
FastPath = Literal["auto", "on", "off"]

RECIPES: dict[str, tuple[str, ...]] = {
    # the presets' default: the fast-start recipe chosen by benchmarks/recipes.py
    "fast": (),
    # the official code's recipe and architecture: ResBlock encoder, no auxiliary
    # synthesis, min-SNR-5 x0 loss without a floor, no phases (it needs a long high-rate warm-up)
    "paper": ("model.analysis=resnet", "model.aux_synthesis=false", "diffusion.residual=false",
              "diffusion.snr_floor=0", "loss.aux_mse=0", "train.autoencoder_fraction=0",
              "train.freeze_latent_fraction=0"),
}
"""Training recipes: override bundles applied before any other override (``--recipe NAME``)."""


MAX_TRAIN_STEPS = 10**9
"""The most optimisation steps a run may ask for (CLI flags, overrides and job files alike)."""


MAX_CROP = 4096
"""Largest training crop (pixels a side): a 4096² crop is 200 MB per image in float32."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choices(section: Any, prefix: str) -> None:
    """Refuse a value outside its ``Literal`` field's choices (dataclasses do not check types)."""
    for name, hint in typing.get_type_hints(type(section)).items():
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            _check(getattr(section, name) in choices, f"{prefix}.{name} must be one of {choices}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the codec (the paper preset is the official code's X-param model).

    Attributes:
        enc_dim: width of the analysis transform g_a and of the context decoder.
        analysis: g_a's layers: ``resnet`` (ResBlocks, the official code) or ``gdn`` (conv + GDN,
            Ballé et al. 2018; the paper leaves the encoder unspecified).
        transform_dim: hidden width of the ``gdn`` analysis and of g_s (CompressAI's N); 0 uses
            ``enc_dim * enc_mults`` per stage, like the ``resnet`` analysis.
        aux_synthesis: add a light synthesis transform g_s (conv + inverse GDN) giving an
            auxiliary reconstruction x_aux of ŷ in [-1, 1]. Not in the official code; it lets the
            latent be pretrained as an MSE autoencoder (the HiFiC / MS-ILLM habit) and the U-Net
            refine x_aux (``diffusion.residual``).
        latent_channels: channels of y (256 in the paper).
        enc_mults: width multipliers of g_a's four stride-2 stages (the last is replaced by
            ``latent_channels``); four stages give the latent at 1/16 resolution.
        hyper_channels: channels of the hyper-latent z at 1/64 resolution.
        entropy_model: ``hyperprior`` (mean-scale, the official code's choice), ``checkerboard``
            (the same plus a two-pass convolutional checkerboard context, He et al. 2021) or
            ``entroformer`` (transformer hyperprior + two-pass checkerboard context, the paper's choice).
        scale_bound: lower bound of the Gaussian scales sigma of y (0.1 in the official code).
        scale_levels: number of log-spaced scales in the Gaussian coder's CDF table; more levels
            means less real-vs-estimated rate overhead and a larger checkpoint.
        unet_dim: base width of the conditional U-Net.
        unet_mults: U-Net width multipliers, one per resolution level (at least 4: the context
            pyramid is concatenated at the four finest levels).
        attn_dim: width of the entroformer's attention blocks (0: ``hyper_channels``).
        attn_heads: attention heads of the entroformer (must divide ``attn_dim``).
        attn_radius: neighbourhood radius r of its attention ((2r+1)^2 keys per query).
        rate_lambdas: a variable-rate model (gain units on the latent, ``cdc.models.gain``): the λ
            each rate level is trained at, from the lowest rate (largest λ) to the highest; at least
            2, strictly decreasing. Empty: a fixed-rate model (its λ is ``loss.lmbda``).
    """

    enc_dim: int = 64
    analysis: Analysis = "resnet"
    transform_dim: int = 0
    aux_synthesis: bool = False
    latent_channels: int = 256
    enc_mults: tuple[int, ...] = (1, 2, 3, 4)
    hyper_channels: int = 256
    entropy_model: EntropyModel = "hyperprior"
    scale_bound: float = 0.1
    scale_levels: int = 160
    unet_dim: int = 64
    unet_mults: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    attn_dim: int = 0
    attn_heads: int = 4
    attn_radius: int = 3
    rate_lambdas: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check(len(self.enc_mults) == 4, "model.enc_mults must have 4 entries (g_a downsamples by 16)")
        _check(len(self.unet_mults) >= 4, "model.unet_mults needs at least 4 levels")
        _check(min(self.enc_dim, self.latent_channels, self.hyper_channels, self.unet_dim) > 0,
               "model widths must be positive")
        _check_choices(self, "model")
        _check(self.transform_dim >= 0, "model.transform_dim must be >= 0")
        _check(self.attn_heads >= 1, "model.attn_heads must be >= 1")
        _check((self.attn_dim or self.hyper_channels) % self.attn_heads == 0,
               "model.attn_dim (or hyper_channels) must be divisible by model.attn_heads")
        _check(self.attn_radius >= 1, "model.attn_radius must be >= 1")
        _check(0 < self.scale_bound < 1, "model.scale_bound must be in (0, 1)")
        _check(16 <= self.scale_levels <= 1024, "model.scale_levels must be in [16, 1024]")
        lambdas = self.rate_lambdas
        _check(not lambdas or (len(lambdas) >= 2 and all(v > 0 for v in lambdas)
                               and all(a > b for a, b in itertools.pairwise(lambdas))),
               "model.rate_lambdas must be empty or at least 2 positive values, strictly decreasing")


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process and training target of the denoiser (Yang & Mandt 2023, sec. 3).

    Attributes:
        prediction: ``sample`` (x0, the paper's X-parameterization), ``epsilon`` or ``v``.
        schedule: ``cosine`` (Nichol & Dhariwal 2021, s=0.008) or ``linear`` (DDPM, rescaled to T).
        timesteps: number of training timesteps T (8193 for X-param, 20000 for epsilon-param).
        loss: ``l2`` or ``l1`` distance between prediction and target.
        min_snr_gamma: min-SNR-gamma weighting (Hang et al. 2023); 0 disables weighting.
        snr_floor: lower bound of the x0-equivalent loss weight, ``clamp(SNR, snr_floor,
            min_snr_gamma)``. With the paper's 0, the x0 loss at high noise (SNR -> 0, where only
            the latent can help) has almost no weight, which is why X-param models trained from
            scratch decode to grey; 1 trains those steps like a plain MSE decoder.
        residual: the U-Net predicts a correction to what the auxiliary reconstruction implies
            (x0 = ``x_aux + U-Net output`` for ``sample``; the eps / v implied by x0 = x_aux for the
            others; needs ``model.aux_synthesis``): the one-step decode starts at x_aux instead
            of at grey.
    """

    prediction: Prediction = "sample"
    schedule: Schedule = "cosine"
    timesteps: int = 8193
    loss: DiffusionLoss = "l2"
    min_snr_gamma: float = 5.0
    snr_floor: float = 0.0
    residual: bool = False

    def __post_init__(self) -> None:
        _check_choices(self, "diffusion")
        _check(self.timesteps >= 2, "diffusion.timesteps must be >= 2")
        _check(self.min_snr_gamma >= 0, "diffusion.min_snr_gamma must be >= 0")
        _check(0 <= self.snr_floor <= (self.min_snr_gamma or float("inf")),
               "diffusion.snr_floor must be in [0, min_snr_gamma]")


@dataclass(frozen=True)
class SamplerConfig:
    """Default DDIM decode parameters, written into every bitstream's header.

    Attributes:
        steps: DDIM steps S in [1, T] (17 in the paper's headline, 65 in the official test script).
        gamma: start-noise scale: x_N = gamma * N(0, I); 0 gives a deterministic decoder.
        seed: seed of the start noise (an explicit ``torch.Generator``).
        clip_x0: clamp each x0 estimate to [-1, 1] (the official X-param decoder does).
    """

    steps: int = 17
    gamma: float = 0.8
    seed: int = 0
    clip_x0: bool = True

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "sampler.steps must be >= 1")
        _check(0 <= self.gamma <= 65.535, "sampler.gamma must be in [0, 65.535]")
        _check(0 <= self.seed < 2**63, "sampler.seed must be in [0, 2**63)")


@dataclass(frozen=True)
class LossConfig:
    """Rate-distortion-perception objective ``lmbda*bpp + (1-rho)*L_diff + rho*L_perc``.

    Attributes:
        lmbda: rate weight (CDC's ``beta``); larger means fewer bits. Warm-up uses ~1e-6.
        rho: perceptual weight in [0, 1] (CDC's ``lpips_weight``): 0 or 0.9 in the paper.
        perceptual: frozen perceptual network: ``lpips-vgg`` (the paper), ``lpips-alex``,
            ``stlpips-vgg`` or ``stlpips-alex`` (weights ship in the ``stlpips-pytorch`` wheel).
        random_backbone: TEST ONLY: use an untrained backbone instead of failing when the
            pretrained weights are missing. Never set it for a model you report numbers for.
        aux_mse: weight of ``MSE(x_aux, x0)`` (pixels in [-1, 1]), the auxiliary reconstruction's
            own loss (needs ``model.aux_synthesis``); 0 disables it.
    """

    lmbda: float = 0.0064
    rho: float = 0.0
    perceptual: Perceptual = "lpips-vgg"
    random_backbone: bool = False
    aux_mse: float = 0.0

    def __post_init__(self) -> None:
        _check(self.lmbda >= 0, "loss.lmbda must be >= 0")
        _check(0 <= self.rho <= 1, "loss.rho must be in [0, 1]")
        _check_choices(self, "loss")
        _check(self.aux_mse >= 0, "loss.aux_mse must be >= 0")


LR_SCALING = {"none": lambda ratio: 1.0, "sqrt": lambda ratio: ratio**0.5, "linear": lambda ratio: ratio}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe (the paper's and the official code's, where a preset follows them).

    Attributes:
        batch_size: images per process per step.
        crop: side of the random square training crops, pixels (multiple of 64).
        lr: Adam learning rate.
        lr_decay: multiplicative decay applied every ``lr_decay_every`` steps ...
        lr_floor: ... never below ``lr_floor * lr`` (we read the official step decay as
            "x0.8 every 100k steps, floor 0.2", not its per-iteration drop after 100k).
        lr_decay_every: steps between decays.
        warmup_steps: linear learning-rate warm-up from 0, steps.
        grad_clip: global gradient-norm clip (1.0 for X-param); 0 disables.
        ema_decay: EMA decay of the weights (0.999); 0 disables EMA.
        ema_every: EMA update period, steps.
        ema_start: steps before the EMA starts tracking (it copies the weights until then).
        ema_warmup: the n-th average uses decay ``min(ema_decay, (1 + n) / (10 + n))``, so that a
            run of a few thousand steps exports recent weights, not those at ``ema_start``
            (``cdc.training.ema``); runs longer than ~9,000 averages are unaffected.
        max_steps: optimisation steps.
        seed: global seed (weights init, data order, timesteps, noise).
        checkpoint_every: steps between ``save_state`` checkpoints.
        keep_checkpoints: retention limit of training-state checkpoints.
        log_every: steps between metric logs.
        sample_every: steps between logged sample reconstructions (0: only at the end).
        num_workers: data-loader worker processes per rank.
        shuffle_buffer: WebDataset sample shuffle buffer.
        mixed_precision: ``auto`` (bf16 on CUDA, none on CPU), ``bf16`` or ``no``.
        autoencoder_fraction: first phase of a run from scratch, as a fraction of ``max_steps``:
            g_a, the entropy model and the auxiliary synthesis train as an MSE autoencoder
            (``lmbda * bpp + aux_mse * MSE``, noise proxy for quantization); the U-Net does not
            run, so these steps are several times cheaper. Skipped by ``--init-from``.
        freeze_latent_fraction: second phase, fraction of ``max_steps``: the decoder (context
            decoder, U-Net, g_s) trains on the frozen latent (g_a and the entropy model get no
            gradient); then everything trains jointly. Skipped by ``--init-from``.
        one_step_fraction: share of the steps, in [0, 1], spread evenly over the run, trained at
            the input of the one-step deterministic decode (1 DDIM step, γ = 0: t = T - 1 from the
            start state x_T = 0) instead of a noised image at a uniform random t (0: the paper).
            The perceptual term then shapes the image users decode, not x0 estimates at random t.
            The autoencoder phase runs no diffusion and ignores it.
        entropy_fraction: last phase, fraction of ``max_steps`` in [0, 1], in a fine-tune too: only
            the entropy model trains, on the rate alone (``lmbda * bpp`` and the prior's quantile
            loss) of the frozen transform's latents; nothing else runs. A model trained at small
            crops codes large images with a hyperprior that saw mostly borders (at 128² crops z is
            2 × 2): refitting it at ``crop=256`` saves 15-24 % of the shipped family's bits at
            unchanged PSNR (``benchmarks/context_model.py``), in minutes on a CPU.
        finetune_phases: run the two phases above in a fine-tune too (``--init-from``): a new λ or a
            new corpus first refits the latent at the autoencoder's cheap steps, then the U-Net
            adapts to it (how the shipped family derives its rates, ``scripts/train_family.py``).
        finetune_lr: learning rate of a run that starts from a trained model (``--init-from``);
            None: ``lr``. A fresh Adam at the from-scratch rate knocks a trained model off its
            optimum (``small``: 200 fine-tune steps at 5e-4 cost its base up to 3 dB and made two
            seeds differ by 2.5 dB; at 1e-4, the rate its own schedule ended at, neither happened).
        skip_bad_shards: skip missing or damaged shards with a warning (default: the run fails
            naming the shard, so that no run silently trains on part of its data).
        data_timeout_s: the run fails (one line; resume from its last checkpoint) when the loader
            delivers no batch for this many seconds (a stalled mount or object store); 0 disables.
        lr_scaling: how ``lr`` follows the global batch (``batch_size`` x processes) relative to
            ``lr_reference_batch``: ``none`` (the paper's recipe as written), ``sqrt`` (Adam's
            usual rule, Malladi et al. 2022) or ``linear`` (Goyal et al. 2017). Applies to
            ``finetune_lr`` too; the schedule's factors are unchanged.
        lr_reference_batch: the global batch ``lr`` was tuned at (4: the paper's single-GPU recipe).
        compile: ``torch.compile`` the codec's whole training forward (encoder, entropy model,
            context decoder, U-Net) and the loss, each one graph without breaks (inductor; each
            training phase compiles once, about a minute, later steps run fused kernels; the step
            needs no host sync). Weights, checkpoints and exports are unchanged.
        compile_mode: ``torch.compile``'s mode: ``default``, ``max-autotune-no-cudagraphs`` or
            ``reduce-overhead`` (CUDA graphs replay the compiled step: no per-kernel launch cost
            on the host, which bounds small-batch steps on a GPU; ignored on a CPU).
        compile_eager_rng: compiled steps draw eager's random numbers (inductor's
            ``fallback_random``: unfused random kernels). Off, they draw others from the same
            distributions; on, a compiled run follows an eager run of the same seed step by step.
        channels_last: keep the model and the batches in NHWC memory (faster convolutions on
            GPUs and oneDNN CPUs; the blocks have NHWC paths for LayerNorm and attention).
        fast_path: ``on``: the compiled step and channels-last, with bf16 autocast where
            ``mixed_precision`` is ``auto`` and the CPU computes bf16 natively (AVX-512-BF16 or
            AMX); ``off``: as ``compile``, ``channels_last`` and ``mixed_precision`` say; ``auto``:
            ``on`` for runs of at least 2,000 steps on a CPU without DeepSpeed, else ``off``. On
            the small preset's joint step on 2 cores it trains 3.2x faster at the same loss, 1.3x
            in the autoencoder phase; compiling costs 0.5-1 min per training phase, which a short
            run does not earn back (``benchmarks/train.py --compare cpu``).
    """

    batch_size: int = 4
    crop: int = 256
    lr: float = 5e-5
    lr_decay: float = 0.8
    lr_floor: float = 0.2
    lr_decay_every: int = 100_000
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_every: int = 10
    ema_start: int = 100
    ema_warmup: bool = True
    max_steps: int = 1_000_000
    seed: int = 0
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    log_every: int = 50
    sample_every: int = 5000
    num_workers: int = 2
    shuffle_buffer: int = 1000
    mixed_precision: MixedPrecision = "auto"
    autoencoder_fraction: float = 0.0
    freeze_latent_fraction: float = 0.0
    one_step_fraction: float = 0.0
    entropy_fraction: float = 0.0
    finetune_lr: float | None = None
    finetune_phases: bool = False
    skip_bad_shards: bool = False
    data_timeout_s: float = 600.0
    lr_scaling: LrScaling = "none"
    lr_reference_batch: int = 4
    compile: bool = False
    compile_mode: CompileMode = "default"
    compile_eager_rng: bool = False
    channels_last: bool = False
    fast_path: FastPath = "auto"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check_choices(self, "train")
        _check(self.lr_reference_batch >= 1, "train.lr_reference_batch must be >= 1")
        _check(self.data_timeout_s >= 0, "train.data_timeout_s must be >= 0")
        _check(self.finetune_lr is None or self.finetune_lr > 0, "train.finetune_lr must be > 0")
        _check(self.crop >= 64 and self.crop % 64 == 0, "train.crop must be a multiple of 64")
        _check(self.crop <= MAX_CROP, f"train.crop must be <= {MAX_CROP} (pixels a side)")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables clipping)")
        _check(self.ema_start >= 0, "train.ema_start must be >= 0")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(0 < self.lr_decay <= 1 and 0 < self.lr_floor <= 1, "train.lr_decay/lr_floor in (0, 1]")
        _check(self.lr_decay_every >= 1, "train.lr_decay_every must be >= 1")
        _check(0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)")
        _check(self.ema_every >= 1, "train.ema_every must be >= 1")
        _check(1 <= self.max_steps <= MAX_TRAIN_STEPS, f"train.max_steps must be in [1, {MAX_TRAIN_STEPS}]")
        _check(self.log_every >= 1, "train.log_every must be >= 1")
        _check(self.sample_every >= 0, "train.sample_every must be >= 0")
        _check(self.num_workers >= 0, "train.num_workers must be >= 0")
        _check(self.shuffle_buffer >= 1, "train.shuffle_buffer must be >= 1")
        _check(0 <= self.seed < 2**63, "train.seed must be in [0, 2**63)")
        _check(self.checkpoint_every >= 1 and self.keep_checkpoints >= 1,
               "train.checkpoint_every and train.keep_checkpoints must be >= 1")
        _check(self.autoencoder_fraction >= 0 and self.freeze_latent_fraction >= 0
               and self.autoencoder_fraction + self.freeze_latent_fraction <= 1,
               "train.autoencoder_fraction and train.freeze_latent_fraction must be >= 0 with a sum <= 1")
        _check(0 <= self.one_step_fraction <= 1, "train.one_step_fraction must be in [0, 1]")
        _check(0 <= self.entropy_fraction <= 1, "train.entropy_fraction must be in [0, 1]")

    def lr_scale(self, world_size: int) -> float:
        """Factor on ``lr`` for a run with ``world_size`` processes (see ``lr_scaling``)."""
        return LR_SCALING[self.lr_scaling](self.batch_size * world_size / self.lr_reference_batch)

    def entropy_steps(self) -> int:
        """Steps of the final entropy-only phase (``entropy_fraction``)."""
        return round(self.entropy_fraction * self.max_steps)

    def phase_steps(self) -> tuple[int, int]:
        """(autoencoder steps, frozen-latent steps) of a run from scratch."""
        return round(self.autoencoder_fraction * self.max_steps), round(self.freeze_latent_fraction * self.max_steps)


@dataclass(frozen=True)
class Config:
    """The whole configuration: codec (model, diffusion, sampler), objective and training."""

    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(self.sampler.steps <= self.diffusion.timesteps,
               "sampler.steps must not exceed diffusion.timesteps")
        needs_aux = {"diffusion.residual": self.diffusion.residual, "loss.aux_mse": self.loss.aux_mse > 0,
                     "train.autoencoder_fraction": self.train.autoencoder_fraction > 0}
        for key, used in needs_aux.items():
            _check(not used or self.model.aux_synthesis, f"{key} needs model.aux_synthesis: true")
        _check(not self.train.autoencoder_fraction or self.loss.aux_mse > 0,
               "train.autoencoder_fraction needs loss.aux_mse > 0 (the autoencoder's distortion term)")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples become lists): YAML/JSON and MLflow friendly."""
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """``{"model.unet_dim": 64, ...}``: one entry per leaf, for MLflow params."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if isinstance(values, dict):
                out.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                out[section] = values
        return out

    def codec_dict(self) -> dict[str, Any]:
        """The sections a codec checkpoint needs to rebuild the model (no training settings)."""
        d = self.to_dict()
        if not d["model"]["rate_lambdas"]:  # fixed-rate: keep the fingerprints from before the field existed
            del d["model"]["rate_lambdas"]
        return {k: d[k] for k in ("preset", "model", "diffusion", "sampler")}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the declared field type, or raise naming the key."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    try:
        if origin is tuple:
            if isinstance(value, str):
                value = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
            (item_type, _ellipsis) = typing.get_args(hint)
            return tuple(item_type(v) for v in value)
        if hint is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                _check(lowered in ("true", "false", "1", "0", "yes", "no"), f"{key}: not a boolean: {value!r}")
                return lowered in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)  # a job's ``true`` is not one step
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return number
        if hint is str or origin is Literal:  # a Literal's choices are checked by its section
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    raise ConfigError(f"{key}: unsupported type {hint}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    _check(not unknown, f"unknown config key(s): {', '.join(sorted(prefix + k for k in unknown))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        hint, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            _check(isinstance(data[f.name], dict), f"{key}: expected a mapping")
            kwargs[f.name] = _build(hint, data[f.name], key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], hint, key)
    return cls(**kwargs)


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    _check(bool(sep) and bool(key), f"override {override!r} is not of the form a.b=value")
    _set(data, key, value.strip())


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        _check(isinstance(node, dict), f"override {key!r}: {part!r} is not a section")
    node[leaf] = value


def config_from_dict(data: dict[str, Any], overrides: typing.Iterable[str] = (),
                     settings: typing.Mapping[str, Any] | None = None) -> Config:
    """Build a ``Config`` from nested dicts, then typed ``settings`` (dotted key -> value, e.g.
    ``{"loss.rho": 0.5}``), then ``a.b=value`` string overrides."""
    data = _plain(data)
    for key, value in (settings or {}).items():
        _set(data, key, value)
    for override in overrides:
        _apply_override(data, override)
    try:
        return _build(Config, data)
    except TypeError as exc:  # dataclass __init__ rejected a value
        raise ConfigError(str(exc)) from exc


def load_config(preset_or_path: str | Path = "paper", overrides: typing.Iterable[str] = (),
                recipe: str = "fast", settings: typing.Mapping[str, Any] | None = None) -> Config:
    """Load a preset name (``tiny``/``small``/``paper``) or a YAML file, then apply the recipe's
    overrides (``RECIPES``), typed ``settings`` and ``overrides``.

    A YAML file may start from a preset with ``preset: small`` and override any subset of keys.
    """
    _check(recipe in RECIPES, f"unknown recipe {recipe!r} (one of {', '.join(RECIPES)})")
    path = Path(preset_or_path)
    if str(preset_or_path) in PRESETS:
        path = PRESETS_DIR / f"{preset_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"{preset_or_path}: no such preset ({', '.join(PRESETS)}) or YAML file")
    data = yaml.safe_load(path.read_text()) or {}
    _check(isinstance(data, dict), f"{path}: top level must be a mapping")
    base = data.get("preset")
    if path.parent != PRESETS_DIR and base in PRESETS:
        merged = yaml.safe_load((PRESETS_DIR / f"{base}.yaml").read_text())
        _deep_update(merged, data)
        data = merged
    for override in RECIPES[recipe]:
        _apply_override(data, override)
    return config_from_dict(data, overrides, settings)


def _deep_update(base: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def with_updates(config: Config, **sections: dict[str, Any]) -> Config:
    """Return ``config`` with some fields of some sections replaced (validated again)."""
    changes = {name: replace(getattr(config, name), **values) for name, values in sections.items()}
    return replace(config, **changes)


__all__ = [
    "PRESETS",
    "RECIPES",
    "Config",
    "ConfigError",
    "DiffusionConfig",
    "LossConfig",
    "ModelConfig",
    "SamplerConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "with_updates",
]
