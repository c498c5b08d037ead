"""The training loop of one run (``cdc.training.run_spec.RunSpec``) under accelerate: DDP or DeepSpeed,
CPU (gloo) or GPU (NCCL), bf16 autocast on GPU, EMA, checkpoints, preemption, MLflow tracking and
the final export. ``cdc/train.py`` is its command line; the grid's launchers run that.

Per step: a batch from the shard loader, the training phase of the recipe
(``cdc.training.phases.training_phase``), the rate-distortion-perception loss, one optimizer step and
an EMA update; every ``log_every`` steps the mean of the loss terms over those steps and the ranks goes to
``metrics.jsonl`` and MLflow; every ``checkpoint_every`` steps (and on SIGTERM) a resumable
checkpoint. At the end the EMA weights, with the entropy coder's tables, are exported into the
output directory itself, so ``cdc compress -m DIR`` works.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cdc import __version__
from cdc.config import Config, ConfigError, with_updates
from cdc.models.codec import CDCCodec
from cdc.models.perceptual import MissingWeightsError
from cdc.registry.resolve import ModelNotFoundError, resolve_model
from cdc.registry.tracking import RunTracker, code_version
from cdc.training.distributed import (
    LaunchError,
    check_world_size,
    make_accelerator,
    replica_checksums,
    step_path,
    stop_unused_search,
    using_deepspeed,
)
from cdc.training.ema import EMA
from cdc.training.losses import RateDistortionPerceptionLoss
from cdc.training.outputs import check_output_dir
from cdc.training.phases import build_optimizer, log_samples, one_step_inputs, shards_fingerprint, training_phase
from cdc.training.run_spec import RunSpec
from cdc.training.state import DataWatchdog, Preemption, resume, save_checkpoint
from cdc.zoo.checkpoint import CheckpointError, load_codec, save_codec
from shards.locks import DirectoryBusyError, exclusive_dir
from shards.reader import ShardError, resolve_shards, train_loader, unit_range


class DivergedError(RuntimeError):
    """The loss or the weights became non-finite: the run stops, keeping its last good checkpoint."""

    def __init__(self, step: int, out: Path) -> None:
        super().__init__(f"{out}: training diverged by step {step} (non-finite loss or weights; lower train.lr "
                         "or loss.lmbda); its last checkpoint and any earlier export are kept")


TRAINING_ERRORS = (DivergedError, ConfigError, ShardError, MissingWeightsError, LaunchError, CheckpointError,
                   FileNotFoundError, ModelNotFoundError, DirectoryBusyError)
"""What a run reports as one line (exit 2) instead of a traceback."""


LOGGED = ("loss", "bpp", "diffusion", "perceptual", "aux_mse")
"""Loss terms written to ``metrics.jsonl`` and MLflow (with ``aux``), each the mean over the
``log_every`` steps since the last log and over the ranks."""


def new_window() -> dict:
    """A logging window: its start time, data wait (s), images and device-side sum of the loss terms."""
    return {"start": time.perf_counter(), "wait": 0.0, "images": 0, "sum": None, "steps": 0}


def init_weights(codec: CDCCodec, ref: str) -> None:
    """Load checkpoint ``ref`` (any ``cdc.registry.resolve`` form) into ``codec``; the architectures must
    agree, except that a ``hyperprior`` model may start a ``checkerboard`` one (which then codes as the
    hyperprior did until its context is trained: ``cdc.models.checkerboard``) and a fixed-rate model a
    variable-rate one (its gain units keep their initial values: ``cdc.models.gain``)."""
    path = resolve_model(ref)
    source = load_codec(path)
    model = codec.config.model
    upgrades = {}  # what the run's model may add to the checkpoint's, and the weights that brings
    if (source.config.model.entropy_model, model.entropy_model) == ("hyperprior", "checkerboard"):
        upgrades["entropy_model"] = ("entropy.context.", "entropy.params.")
    if not source.config.model.rate_lambdas and model.rate_lambdas:
        upgrades["rate_lambdas"] = ("gain.",)
    upgraded = with_updates(source.config, model={k: getattr(model, k) for k in upgrades}).model
    if upgraded != model:
        diff = {k: (v, getattr(model, k)) for k, v in vars(source.config.model).items() if getattr(model, k) != v}
        raise CheckpointError(f"{path}: architecture differs from this run's preset "
                              + ", ".join(f"model.{k}: checkpoint {a} vs run {b}" for k, (a, b) in diff.items()))
    missing, unexpected = codec.load_state_dict(source.state_dict(), strict=not upgrades)
    new = tuple(prefix for prefixes in upgrades.values() for prefix in prefixes)
    if unexpected or not all(k.startswith(new) for k in missing):
        raise CheckpointError(f"{path}: weights do not fit this run's model: {unexpected or missing}")


def warn_objective_change(out: Path, cfg: Config) -> None:
    """On resume: say which loss settings differ from those the run was started with (a resumed run
    with another λ or ρ silently trains a different model)."""
    try:
        before = json.loads((out / "train_config.json").read_text())["loss"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    now = cfg.to_dict()["loss"]
    changed = [f"loss.{k}={now[k]} (was {before[k]})" for k in sorted(now) if k in before and before[k] != now[k]]
    if changed:
        print(f"cdc train: warning: resuming {out} with another objective: {', '.join(changed)}", file=sys.stderr)


def train(spec: RunSpec) -> dict:
    """Run ``spec`` to the end (or to a preemption); returns the summary written to ``train_summary.json``.

    The output directory is locked for the run (``shards.locks.exclusive_dir``, by the main
    process): a second run into it fails with one line.
    """
    out = Path(spec.output_dir)
    if not is_main_launch():
        return _train(spec)
    with exclusive_dir(out, "training run"):
        return _train(spec)


def is_main_launch() -> bool:
    """True in the launch's rank-0 process (or a single process): the one that holds the lock."""
    return int(os.environ.get("RANK", "0")) == 0


def _train(spec: RunSpec) -> dict:
    cfg = spec.config()
    tc = cfg.train
    out = Path(spec.output_dir)
    check_output_dir(out, spec.resume, spec.overwrite)
    urls = resolve_shards(list(spec.shards), "train", skip_missing=tc.skip_bad_shards)  # fail fast: missing shards
    fine_tune = bool(spec.init_from)
    phased = (not fine_tune or tc.finetune_phases) and any(tc.phase_steps())
    # the autoencoder and decoder phases leave parts of the model without gradients: DDP must look
    # for them until the joint phase, where every parameter has one (see stop_unused_search); a final
    # entropy phase leaves most of the model without gradients again, so DDP looks throughout
    path = step_path(tc)
    find_unused = bool(phased) or tc.entropy_steps() > 0
    accelerator = make_accelerator(path.mixed_precision, out, tc.batch_size, tc.grad_clip, find_unused=find_unused)
    searching_unused = bool(phased) and not tc.entropy_steps()
    check_world_size(accelerator.num_processes, spec.world_size)
    main = accelerator.is_main_process
    torch.manual_seed(tc.seed)

    codec = CDCCodec(cfg)
    if spec.init_from:
        init_weights(codec, spec.init_from)
    if main:  # only now that every check passed; an earlier export stays usable until this run's replaces it
        if spec.resume:
            warn_objective_change(out, cfg)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        spec.save(out / "run_spec.json")
    loss_fn = RateDistortionPerceptionLoss(cfg.loss, codec.diffusion).to(accelerator.device)
    on_cuda = accelerator.device.type == "cuda"
    accelerator.print(f"cdc train: {path.why}")
    if path.channels_last:
        codec.to(memory_format=torch.channels_last)
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed crops: pick the fastest convolution algorithms once
    optimizer, scheduler = build_optimizer(codec, tc, fine_tune=fine_tune, world_size=accelerator.num_processes,
                                           fused=on_cuda)
    ema = EMA(codec, tc.ema_decay, tc.ema_every, tc.ema_start, tc.ema_warmup)
    ema.shadow.to(accelerator.device)
    graphed = path.compile and tc.compile_mode == "reduce-overhead" and on_cuda
    if path.compile:  # in place (nn.Module.compile): parameter names, checkpoints and the EMA copy are unchanged
        from torch._inductor import config as inductor_config

        inductor_config.fallback_random = tc.compile_eager_rng
        for module in (codec, loss_fn):
            module.compile(dynamic=False, mode=None if tc.compile_mode == "default" else tc.compile_mode)
    codec, optimizer, scheduler = accelerator.prepare(codec, optimizer, scheduler)
    accelerator.register_for_checkpointing(ema)
    raw = accelerator.unwrap_model(codec)

    meta = resume(accelerator, out, spec.resume) if spec.resume else None
    step = meta["step"] if meta else 0
    launch = {"world_size": accelerator.num_processes, "num_workers": tc.num_workers, "seed": tc.seed}
    if meta and any(meta.get(k) != v for k, v in launch.items()):
        accelerator.print(f"warning: resuming with {launch} but the checkpoint was made with "
                          f"{ {k: meta.get(k) for k in launch} }: the data order will differ")
    loader = train_loader(urls, tc.batch_size, tc.crop, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, seed=tc.seed, num_workers=tc.num_workers,
                          shuffle_buffer=tc.shuffle_buffer, epoch_batches=tc.checkpoint_every, start_batch=step,
                          skip_bad=tc.skip_bad_shards, pin_memory=on_cuda)
    tracker = RunTracker(main, spec.experiment, spec.run_name, run_id=meta.get("mlflow_run_id") if meta else None,
                         tags=spec.tags)
    tracker.log_params({**cfg.flat(), "launch.world_size": accelerator.num_processes,
                        "launch.distributed_type": str(accelerator.distributed_type),
                        "launch.mixed_precision": accelerator.mixed_precision, "launch.deepspeed": using_deepspeed(),
                        "launch.compile": path.compile, "launch.channels_last": path.channels_last,
                        "launch.lr_scale": tc.lr_scale(accelerator.num_processes),
                        "init_from": spec.init_from or "", "shards": " ".join(spec.shards)})
    tracker.set_tags({"code_version": code_version(), "perceptual": cfg.loss.perceptual if cfg.loss.rho > 0 else "none",
                      "perceptual_pretrained": loss_fn.perceptual.pretrained if loss_fn.perceptual else "n/a"})
    preemption = Preemption()
    watchdog = DataWatchdog(tc.data_timeout_s, " ".join(spec.shards))
    ckpt_meta = {**launch, "mlflow_run_id": tracker.run_id}
    metrics_file = out / "metrics.jsonl"
    data_iter = iter(loader)
    window = new_window()
    last: dict = {}
    batch = None  # a run resumed from its last step's checkpoint takes none: it only exports
    bar = tqdm(total=tc.max_steps, initial=step, disable=not main, desc="train", unit="step")
    codec.train()
    try:  # an error ends the progress bar's line first: its one-line message stands alone
        while step < tc.max_steps:
            t0 = time.perf_counter()
            batch = unit_range(next(data_iter).to(accelerator.device, non_blocking=True))
            if path.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            watchdog.fed()
            window["wait"] += time.perf_counter() - t0
            phase = training_phase(step, tc, fine_tune=fine_tune)
            if searching_unused and phase == "joint":
                codec = stop_unused_search(accelerator, codec)
                searching_unused = False
            if graphed:  # the last step's graph outputs are dead: their memory may be reused
                torch.compiler.cudagraph_mark_step_begin()
            with accelerator.autocast():
                outputs = codec(batch, phase=phase, **one_step_inputs(step, tc, raw.diffusion.timesteps, batch))
                terms = loss_fn(outputs, num_pixels=tc.crop * tc.crop)
                total = terms["loss"] + outputs["aux_loss"]
            accelerator.backward(total)
            if tc.grad_clip > 0 and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(codec.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            ema.update(raw, step)
            window["images"] += batch.shape[0] * accelerator.num_processes
            # summed on the device (no host sync): the logged terms are means over the window's steps
            step_terms = torch.stack([terms[k].detach().float() for k in LOGGED]
                                     + [outputs["aux_loss"].detach().float()])
            window["sum"] = step_terms if window["sum"] is None else window["sum"] + step_terms
            window["steps"] += 1
            if step % tc.log_every == 0 or step == tc.max_steps:
                values = accelerator.reduce(window["sum"] / window["steps"], reduction="mean").tolist()
                if not all(map(math.isfinite, values)):
                    raise DivergedError(step, out)
                elapsed = time.perf_counter() - window["start"]
                last = {"step": step, **dict(zip((*LOGGED, "aux"), values, strict=True)),
                        "lr": scheduler.get_last_lr()[0], "images_per_s": window["images"] / elapsed,
                        "data_wait": window["wait"] / elapsed, "phase": CDCCodec.PHASES.index(phase)}
                window = new_window()
                if main:
                    with metrics_file.open("a") as f:
                        f.write(json.dumps(last) + "\n")
                    tracker.log_metrics({k: v for k, v in last.items() if k != "step"}, step)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", bpp=f"{last['bpp']:.3f}")
            if tc.sample_every and step % tc.sample_every == 0 and main:
                log_samples(ema.shadow, batch[:1], tracker, step)
            bar.update(1)
            stop = preemption.requested(accelerator, step)
            if step % tc.checkpoint_every == 0 or stop or step == tc.max_steps:
                if not all(bool(torch.isfinite(p).all()) for p in raw.parameters()):  # never save a diverged model
                    raise DivergedError(step, out)
                save_checkpoint(accelerator, out, step, ckpt_meta, tc.keep_checkpoints)
            if stop:
                watchdog.stop()
                accelerator.print(f"preempted: checkpoint saved at step {step}; rerun with --resume latest")
                tracker.end(status="KILLED")
                return {"step": step, "preempted": True}
    finally:
        bar.close()
    watchdog.stop()
    checksums = replica_checksums(accelerator, raw)
    summary = {"step": step, "preempted": False, "final": last, "world_size": accelerator.num_processes,
               "replica_checksums": checksums, "replicas_in_sync": len(set(checksums)) == 1,
               "mlflow_run_id": tracker.run_id}
    if main:
        if batch is not None:
            log_samples(ema.shadow, batch[:1], tracker, step)
        fingerprint = save_export(ema.shadow, out, cfg, spec, tracker.run_id, loss_fn)
        summary.update({"model": str(out), "fingerprint": fingerprint,
                        "peak_memory_mb": peak_memory_mb(accelerator.device)})
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        tracker.log_artifact(out / "train_summary.json")
        tracker.log_artifact(out / "train_config.json")
        tracker.end()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def save_export(model: CDCCodec, out: Path, cfg: Config, spec: RunSpec, run_id: str | None,
                loss_fn: RateDistortionPerceptionLoss) -> str:
    """Export the EMA weights (CDFs updated) as a codec checkpoint in ``out``; returns its fingerprint."""
    from cdc.zoo.checkpoint import read_checkpoint_info

    metadata = {"trained_steps": cfg.train.max_steps, "lmbda": cfg.loss.lmbda, "rho": cfg.loss.rho,
                "prediction": cfg.diffusion.prediction, "preset": cfg.preset,
                "perceptual": cfg.loss.perceptual if cfg.loss.rho > 0 else "none",
                "perceptual_pretrained": bool(loss_fn.perceptual.pretrained) if loss_fn.perceptual else None,
                "init_from": spec.init_from, "shards_fingerprint": shards_fingerprint(list(spec.shards)),
                "mlflow_run_id": run_id,
                "code_version": code_version(), "cdc_version": __version__}
    save_codec(model.cpu(), out, metadata=metadata)
    return read_checkpoint_info(out)["fingerprint"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations, else the resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
