"""Pieces of the training recipe kept out of the loop in ``cdc/train.py``.

* One Adam optimizer for everything (DeepSpeed engines take one): the factorized prior's
  ``quantiles`` train in their own parameter group at 10x the learning rate (CompressAI trains
  them with a separate 1e-3 optimizer; an equal-LR group would leave the medians behind).
* Training phases (the fast-start recipe, chosen by ``benchmarks/recipes.py``): an MSE
  autoencoder phase for the latent, a decoder phase on the frozen latent, then joint training,
  and optionally a final entropy-model refit on the frozen latent;
  optionally some steps at the one-step decode's own input (``one_step_inputs``).
* Learning-rate schedule: linear warm-up, then ``decay ** (step // decay_every)`` with a floor.
  The official code's decay (``scheduler.step()`` every iteration after 100k steps, so the LR hits
  its floor within a few steps) reads like a bug; we apply the decay once every ``decay_every``
  steps, which is what its variable names say.
"""

from __future__ import annotations

import numpy as np
import torch

from cdc.config import TrainConfig
from cdc.models.codec import CDCCodec

QUANTILE_LR_FACTOR = 10.0


def lr_factor(step: int, tc: TrainConfig) -> float:
    """Multiplier of ``tc.lr`` after ``step`` optimizer steps."""
    warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
    return warm * max(tc.lr_decay ** (step // tc.lr_decay_every), tc.lr_floor)


Scheduler = torch.optim.lr_scheduler.LambdaLR


def training_phase(step: int, tc: TrainConfig, fine_tune: bool = False) -> str:
    """The codec ``forward`` phase of optimizer step ``step`` (0-based) of the fast-start recipe.

    From scratch: ``autoencoder`` for ``autoencoder_fraction * max_steps`` steps, then ``decoder``
    (frozen latent) for ``freeze_latent_fraction * max_steps``, then ``joint``. A fine-tune
    (``--init-from``) starts from a trained model and is ``joint`` throughout, unless
    ``tc.finetune_phases``. The last ``tc.entropy_steps()`` steps are ``entropy`` in either case.
    """
    if step >= tc.max_steps - tc.entropy_steps():
        return "entropy"
    autoencoder, frozen = tc.phase_steps()
    if (fine_tune and not tc.finetune_phases) or step >= autoencoder + frozen:
        return "joint"
    return "autoencoder" if step < autoencoder else "decoder"


def one_step_inputs(step: int, tc: TrainConfig, timesteps: int, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """The codec ``forward`` keywords of optimizer step ``step`` (0-based) for ``tc.one_step_fraction``.

    A one-step step feeds the deterministic one-step decode's input (t = T - 1, x_T = 0: DDIM's
    start state ``gamma * N(0, I)`` at gamma = 0) instead of a noised image at a random t; those steps
    are spread evenly (a fraction of 1/4 makes every 4th step one). Other steps get ``{}``.
    """
    fraction = tc.one_step_fraction
    if fraction <= 0 or int((step + 1) * fraction) == int(step * fraction):
        return {}
    t = torch.full((batch.shape[0],), timesteps - 1, dtype=torch.long, device=batch.device)
    return {"t": t, "x_t": torch.zeros_like(batch)}


def build_optimizer(codec: CDCCodec, tc: TrainConfig, fine_tune: bool = False, world_size: int = 1,
                    fused: bool = False) -> tuple[torch.optim.Optimizer, Scheduler]:
    """Adam over every parameter (quantiles in their own group) and the LR schedule; a fine-tune
    (``--init-from``) starts from ``tc.finetune_lr`` when it is set. The rate is scaled for the
    global batch by ``tc.lr_scaling``. ``fused``: one fused Adam kernel for all parameters (CUDA)
    instead of a few launches per parameter tensor."""
    lr = (tc.finetune_lr if fine_tune and tc.finetune_lr else tc.lr) * tc.lr_scale(world_size)
    quantiles = [p for n, p in codec.named_parameters() if n.endswith("quantiles")]
    others = [p for n, p in codec.named_parameters() if not n.endswith("quantiles")]
    optimizer = torch.optim.Adam([
        {"params": others, "lr": lr},
        {"params": quantiles, "lr": lr * QUANTILE_LR_FACTOR},
    ], fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, tc))
    return optimizer, scheduler


@torch.no_grad()
def log_samples(model: CDCCodec, x: torch.Tensor, tracker, step: int) -> float:
    """Compress/decompress ``x`` (1, 3, H, W) through the real bitstream with ``model`` (the EMA
    weights) and log ``original | reconstruction`` as an image; returns the real bpp."""
    from cdc.coding.coder import Coder
    from cdc.images import to_uint8

    model.update(force=True)
    coder = Coder(model)
    encoded = coder.encode(x.float())
    x_hat, _ = coder.decode(encoded.data)
    grid = np.concatenate([to_uint8(x), to_uint8(x_hat.to(x.device))], axis=1)
    tracker.log_image(grid, f"samples/step-{step:08d}-bpp{encoded.bpp:.4f}.png")
    return encoded.bpp


def shards_fingerprint(sources: list[str]) -> str | None:
    """The corpus fingerprint of a manifest source (None for raw shard URLs)."""
    from shards.manifest import Manifest, manifest_path

    if len(sources) != 1:
        return None
    path = manifest_path(sources[0])
    try:
        return Manifest.load(path).fingerprint if path.endswith(".json") else None
    except ValueError:
        return None
