"""One-step distillation of a multi-step diffusion decode (a student that decodes in one DDIM step).

A perceptual member's multi-step decode (9 DDIM steps, γ 0.8) is what earns its bits in ST-LPIPS, and it
costs about six one-step decodes. The student is a copy of the teacher: the same analysis transform,
entropy model and bitstream (its files are the teacher's, byte for byte), whose decoder (auxiliary
synthesis, context decoder, U-Net) is fine-tuned so that its one-step decode (t = T - 1) gives what the
teacher's multi-step decode gives for the same ŷ. With ``student_gamma`` = ``teacher_gamma`` the student
starts from the teacher's own start noise (γ ε, the same seed), so it learns a deterministic map from
(ŷ, ε) to the teacher's sample, as DDIM distillation does; with ``student_gamma`` = 0 it starts from
x_T = 0 and can only learn the mean of the teacher's samples for each ŷ. The loss is
``MSE(student, teacher) + perceptual_weight * d(student, teacher)`` with a frozen perceptual distance ``d``;
judge the student with a network it did not distil with. This is the one-stage form of distilling a
sampler into fewer steps (Salimans & Ho 2022, "Progressive distillation for fast sampling of diffusion
models"); the student regresses the teacher's samples, not the original photos.

The teacher's decode of a training crop costs ``steps`` student steps, so the targets are computed once,
for a fixed set of crops of the training split, and the student trains over them for several epochs. A
further round (``--init``, a student of the same teacher) trains it on new crops (another ``--seed``).

    python -m cdc.training.distill --teacher small-q1-perceptual --shards runs/photos/shards \\
        --output runs/distil/round1 --student-gamma 0.8 --steps 1500
    python -m cdc.training.distill --teacher small-q1-perceptual --shards runs/photos/shards \\
        --output runs/distil/round2 --init runs/distil/round1 --student-gamma 0.8 --seed 1 --steps 1000 --lr 5e-5
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cdc.argtypes import number
from cdc.config import with_updates
from cdc.models.codec import CDCCodec
from cdc.models.perceptual import build_perceptual
from cdc.models.sampler import DDIMSampler

DECODER = ("g_s.", "context.", "unet.")  # the parameters a student trains: the rest is the teacher's


@dataclass(frozen=True)
class DistillConfig:
    """A distillation run.

    Args:
        teacher_steps: DDIM steps of the teacher's decode (>= 2).
        teacher_gamma: its start-noise scale γ (>= 0; 0.8 is the multi-step default).
        student_gamma: the student's start-noise scale (>= 0), its decode's γ: the teacher's γ to start
            from the teacher's noise, 0 to start from x_T = 0.
        crops: training crops whose teacher decodes are the targets (>= batch).
        crop: their side, pixels (a multiple of 64).
        batch: crops per optimizer step.
        steps: optimizer steps.
        lr: Adam's learning rate (after a linear warm-up over the first 5 % of the steps).
        perceptual: the perceptual distance (``stlpips-alex``, ``stlpips-vgg``, ``lpips-*``).
        perceptual_weight: its weight beside the MSE on [-1, 1] pixels (>= 0).
        seed: the crops, the teacher's start noise and the batch order.
    """

    teacher_steps: int = 9
    teacher_gamma: float = 0.8
    student_gamma: float = 0.0
    crops: int = 1024
    crop: int = 128
    batch: int = 8
    steps: int = 1500
    lr: float = 1e-4
    perceptual: str = "stlpips-alex"
    perceptual_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.teacher_steps < 2 or min(self.teacher_gamma, self.student_gamma) < 0:
            raise ValueError(f"the teacher's decode needs >= 2 steps and both γ >= 0, got {self.teacher_steps}, "
                             f"{self.teacher_gamma}, {self.student_gamma}")
        if self.crop % 64 or self.crop <= 0 or not 1 <= self.batch <= self.crops:
            raise ValueError(f"crop must be a positive multiple of 64 and 1 <= batch <= crops, got crop "
                             f"{self.crop}, batch {self.batch}, crops {self.crops}")
        if self.steps < 1 or self.lr <= 0 or self.perceptual_weight < 0:
            raise ValueError(f"steps >= 1, lr > 0 and perceptual_weight >= 0 needed, got {self.steps}, {self.lr}, "
                             f"{self.perceptual_weight}")


def one_step_decode(codec: CDCCodec, y_hat: Tensor, x_start: Tensor | None = None) -> Tensor:
    """The one-step decode of ŷ (t = T - 1) from ``x_start``, differentiable in the decoder.

    Computes what ``codec.reconstruct(y_hat, steps=1, gamma=γ, seed=s)`` returns, in fp32 and with
    gradients, when ``x_start`` is that decode's start noise (γ ε from seed s).

    Args:
        codec: a fixed-rate codec.
        y_hat: (B, C, h, w) decoded latents.
        x_start: (B, 3, 16 h, 16 w) start state; None for x_T = 0 (γ 0).

    Returns:
        (B, 3, 16 h, 16 w) images in [-1, 1].
    """
    x_aux = codec.g_s(y_hat) if codec.config.diffusion.residual else None
    pyramid = codec.context(y_hat)
    b, _, h, w = y_hat.shape
    x_t = torch.zeros(b, 3, h * 16, w * 16, device=y_hat.device) if x_start is None else x_start
    t = torch.full((b,), codec.diffusion.timesteps - 1, dtype=torch.long, device=y_hat.device)
    x0, _ = codec.diffusion.to_x0_eps(codec._predict(codec.unet, x_t, t, pyramid, x_aux), x_t, t)
    return x0.clamp(-1, 1) if codec.config.sampler.clip_x0 else x0


@torch.no_grad()
def teacher_targets(teacher: CDCCodec, crops: Tensor, cfg: DistillConfig) -> tuple[Tensor, Tensor]:
    """ŷ of each crop (entropy-coded as ``compress`` codes it) and the teacher's multi-step decode of it.

    Args:
        teacher: the teacher codec (eval mode, entropy tables built).
        crops: (N, 3, crop, crop) images in [0, 1].
        cfg: the teacher's decode and the seed (crop i decodes with start-noise seed ``seed + i``).

    Returns:
        ``(y_hat, target)``: (N, C, h, w) and (N, 3, crop, crop) in [-1, 1].
    """
    y_hat = torch.cat([teacher.compress(c[None])["y_hat"] for c in crops])
    targets = []
    for start in range(0, len(crops), cfg.batch):
        part = y_hat[start:start + cfg.batch]
        seeds = [cfg.seed + start + i for i in range(len(part))]
        targets.append(teacher.reconstruct(part, cfg.teacher_steps, cfg.teacher_gamma, seeds))
    return y_hat, torch.cat(targets)


def student_noise(codec: CDCCodec, y_hat: Tensor, cfg: DistillConfig) -> Tensor | None:
    """The student's start state for each crop: ``student_gamma`` times the teacher's ε of that crop (the
    same seed, ``seed + i``), or None for x_T = 0. (N, 3, 16 h, 16 w)."""
    if cfg.student_gamma == 0:
        return None
    n, _, h, w = y_hat.shape
    sampler = DDIMSampler(codec.diffusion, steps=1, gamma=cfg.student_gamma)
    return sampler.start_noise((n, 3, h * 16, w * 16), [cfg.seed + i for i in range(n)])


def training_crops(shards: str, cfg: DistillConfig) -> Tensor:
    """``cfg.crops`` random crops of the training split of ``shards`` (a manifest), (N, 3, crop, crop) in [0, 1]."""
    from shards.reader import train_loader, unit_range

    batches, have = [], 0
    for batch in train_loader(shards, cfg.batch, cfg.crop, seed=cfg.seed):
        batches.append(unit_range(batch))
        have += len(batch)
        if have >= cfg.crops:
            break
    return torch.cat(batches)[: cfg.crops]


def same_encoder(teacher: CDCCodec, student: CDCCodec) -> bool:
    """Whether ``student`` has ``teacher``'s analysis transform and entropy model (and so its bitstreams)."""
    mine = {k: v for k, v in student.state_dict().items() if not k.startswith(DECODER)}
    theirs = {k: v for k, v in teacher.state_dict().items() if not k.startswith(DECODER)}
    return mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())


def distil(teacher: CDCCodec, y_hat: Tensor, targets: Tensor, cfg: DistillConfig,
           log_every: int = 100, init: CDCCodec | None = None) -> tuple[CDCCodec, list[dict]]:
    """Train a student (a copy of ``teacher``) whose one-step decode of ``y_hat`` matches ``targets``.

    Only the decoder trains (``g_s``, ``context``, ``unet``); the analysis transform and the entropy model
    stay the teacher's, so the student reads and writes the teacher's bitstreams. ``init``, a student of the
    same teacher, is trained further instead of a fresh copy (new crops: a second round of distillation).

    Returns:
        The student (eval mode; its config's default decode is 1 step, γ ``student_gamma``) and the loss
        curve: one dict per ``log_every`` steps (``step``, ``loss``, ``mse``, ``perceptual``, ``seconds``).
    """
    if init is not None and not same_encoder(teacher, init):
        raise ValueError("the student to continue has another encoder or entropy model than the teacher")
    student = copy.deepcopy(teacher if init is None else init).train()
    student.requires_grad_(False)
    decoder = [p for name, p in student.named_parameters() if name.startswith(DECODER)]
    for p in decoder:
        p.requires_grad_(True)
    distance = build_perceptual(cfg.perceptual)
    optimizer = torch.optim.Adam(decoder, lr=cfg.lr)
    warmup = max(1, cfg.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    noise = student_noise(student, y_hat, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(y_hat), generator=generator)
    position, curve, sums, start = 0, [], {"loss": 0.0, "mse": 0.0, "perceptual": 0.0}, time.perf_counter()
    for step in range(cfg.steps):
        if position + cfg.batch > len(order):  # a new epoch in a new order
            order, position = torch.randperm(len(y_hat), generator=generator), 0
        index = order[position:position + cfg.batch]
        position += cfg.batch
        out = one_step_decode(student, y_hat[index], None if noise is None else noise[index])
        mse = F.mse_loss(out, targets[index])
        perceptual = distance(out, targets[index]).mean()
        loss = mse + cfg.perceptual_weight * perceptual
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        for key, value in (("loss", loss), ("mse", mse), ("perceptual", perceptual)):
            sums[key] += value.item()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            n = (step % log_every) + 1
            curve.append({"step": step + 1, **{k: v / n for k, v in sums.items()},
                          "seconds": time.perf_counter() - start})
            sums = dict.fromkeys(sums, 0.0)
            print(f"[distil] step {step + 1}/{cfg.steps} loss {curve[-1]['loss']:.4f} mse {curve[-1]['mse']:.5f} "
                  f"{cfg.perceptual} {curve[-1]['perceptual']:.4f} ({curve[-1]['seconds']:.0f} s)", flush=True)
    student.config = with_updates(student.config, sampler={"steps": 1, "gamma": cfg.student_gamma})
    return student.eval(), curve


def main(argv: list[str] | None = None) -> int:
    """``python -m cdc.training.distill``: distil a model's multi-step decode into a one-step student."""
    from cdc.zoo.checkpoint import load_codec, save_codec
    from cdc.zoo.pretrained import resolve_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="a checkpoint or a shipped model name")
    p.add_argument("--shards", required=True, help="a shard manifest; its training split gives the crops")
    p.add_argument("--output", type=Path, required=True, help="the student's checkpoint directory")
    p.add_argument("--init", help="a student of the same teacher (checkpoint or shipped name) to train further "
                   "(default: a copy of the teacher)")
    defaults = DistillConfig()
    for name, kind, meaning in (
            ("teacher_steps", int, "DDIM steps of the teacher's decode"),
            ("teacher_gamma", float, "the teacher's start-noise scale γ"),
            ("student_gamma", float, "the student's γ: the teacher's to start from its noise, 0 for x_T = 0"),
            ("crops", int, "training crops whose teacher decodes are the targets"),
            ("crop", int, "their side in pixels (a multiple of 64)"),
            ("batch", int, "crops per optimizer step"),
            ("steps", int, "optimizer steps"),
            ("lr", float, "Adam's learning rate after a 5 %% warm-up"),
            ("perceptual", str, "the perceptual distance to the teacher's output (stlpips-alex, stlpips-vgg, lpips-*)"),
            ("perceptual_weight", float, "its weight beside the MSE on [-1, 1] pixels"),
            ("seed", int, "the crops, the teacher's start noise and the batch order")):
        what = "an integer" if kind is int else "a number"
        p.add_argument(f"--{name.replace('_', '-')}", default=getattr(defaults, name),
                       type=kind if kind is str else number(kind, 0, 10**9, what),
                       help=f"{meaning} (default: %(default)s)")
    p.add_argument("--threads", type=number(int, 1, 1024, "an integer"), default=2,
                   help="CPU threads for the teacher's decodes and the training (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        cfg = DistillConfig(**{k: getattr(args, k) for k in asdict(defaults)})
        teacher = load_codec(resolve_checkpoint(args.teacher)).eval()
        teacher.update(force=True)  # the entropy tables compress uses, as the students' checkpoints hold them
        init = None if args.init is None else load_codec(resolve_checkpoint(args.init))
        if init is not None and not same_encoder(teacher, init):
            raise ValueError(f"--init {args.init}: not a student of {args.teacher} (another encoder or entropy model)")
    except (ValueError, OSError) as exc:
        p.error(str(exc))
    if teacher.rate_levels:
        p.error(f"--teacher {args.teacher}: a variable-rate model; distillation takes a fixed-rate one")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    crops = training_crops(args.shards, cfg)
    y_hat, targets = teacher_targets(teacher, crops, cfg)
    target_s = time.perf_counter() - start
    print(f"[distil] {len(crops)} teacher decodes ({cfg.teacher_steps} steps, γ {cfg.teacher_gamma:g}) in "
          f"{target_s:.0f} s", flush=True)
    student, curve = distil(teacher, y_hat, targets, cfg, init=init)
    provenance = {"distilled_from": str(args.teacher), "distill": asdict(cfg), "shards": args.shards,
                  "init": args.init}
    save_codec(student, args.output, metadata=provenance)
    (args.output / "distill.json").write_text(json.dumps({**provenance, "target_seconds": target_s,
                                                          "curve": curve}, indent=2) + "\n")
    print(f"[distil] wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
