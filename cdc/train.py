"""Train a CDC codec: the warm-up or one (lambda, rho) cell of the grid.

The same script runs under plain ``python`` (one process) and under ``accelerate launch``
(DDP or DeepSpeed, one to many nodes)::

    # CPU, one process
    python cdc/train.py --preset tiny --shards runs/shards --output-dir runs/tiny --max-steps 200 --lmbda 0.01 --rho 0
    # CPU, 2 gloo processes (accelerate's --cpu launcher would start only one)
    accelerate launch --config_file infra/accelerate/cpu.yaml cdc/train.py --preset small ...
    # one GPU (bf16 autocast for the U-Net; the entropy model stays fp32)
    accelerate launch --config_file infra/accelerate/single-gpu.yaml cdc/train.py --preset paper ...
    # one node x 8 GPUs (DDP)
    accelerate launch --config_file infra/accelerate/multi-gpu.yaml cdc/train.py --preset paper ...
    # N nodes x 8 GPUs: run on every node, R = 0..N-1 (infra/slurm/train.sbatch does this)
    accelerate launch --config_file infra/accelerate/multi-node.yaml --num_machines N --num_processes $((8*N)) \
        --machine_rank R --main_process_ip HEAD --main_process_port 29500 cdc/train.py --preset paper ...
    # DeepSpeed ZeRO-2
    accelerate launch --config_file infra/accelerate/deepspeed-zero2.yaml cdc/train.py --preset paper ...

Recipe: from scratch, the fast-start recipe of the presets (an MSE autoencoder phase, the decoder
on the frozen latent, then joint, with the U-Net refining the autoencoder's reconstruction; see
``cdc.training.training_phase`` and the README); each grid cell is fine-tuned with ``--init-from``
a trained model (a warm-up, or the shipped ``small-base``). ``--recipe paper`` trains the official
way (it needs a long warm-up at ``--lmbda 1e-6``). ``--resume latest`` continues bit-exactly after a
crash or preemption (SIGTERM saves a checkpoint and exits 0). At the end the EMA weights, with the
entropy coder's tables, are exported into ``--output-dir`` itself, so ``cdc compress -m DIR`` works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (`python cdc/train.py`): make `import cdc` resolve to the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from cdc.distributed import prepare_environment

prepare_environment()

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from cdc import __version__  # noqa: E402
from cdc.argtypes import LAMBDA, RHO, TRAIN_STEPS  # noqa: E402
from cdc.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_codec, save_codec  # noqa: E402
from cdc.codec import CDCCodec  # noqa: E402
from cdc.config import RECIPES, Config, ConfigError, load_config  # noqa: E402
from cdc.distributed import LaunchError, check_world_size, make_accelerator, replica_checksums, using_deepspeed  # noqa: E402
from cdc.ema import EMA  # noqa: E402
from cdc.losses import RateDistortionPerceptionLoss  # noqa: E402
from cdc.perceptual import MissingWeightsError  # noqa: E402
from cdc.resolve import ModelNotFoundError, resolve_model  # noqa: E402
from cdc.tracking import RunTracker, code_version  # noqa: E402
from cdc.train_state import DataWatchdog, Preemption, checkpoint_dirs, resume, save_checkpoint  # noqa: E402
from cdc.training import build_optimizer, log_samples, shards_fingerprint, training_phase  # noqa: E402
from shards.reader import ShardError, resolve_shards, train_loader  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags of ``cdc/train.py``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", help="tiny | small | paper, or a YAML config file")
    p.add_argument("--recipe", default="fast", choices=tuple(RECIPES),
                   help="fast (default: autoencoder first, residual diffusion) or paper (the official recipe)")
    p.add_argument("--shards", required=True, nargs="+", help="manifest.json, its directory, or shard URLs")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--max-steps", type=TRAIN_STEPS, help="optimisation steps (train.max_steps)")
    p.add_argument("--lmbda", type=LAMBDA, help="rate weight lambda (loss.lmbda)")
    p.add_argument("--rho", type=RHO, help="perceptual weight rho in [0, 1] (loss.rho)")
    p.add_argument("--prediction", choices=("sample", "epsilon", "v"), help="diffusion.prediction")
    p.add_argument("--init-from", help="model to start from: checkpoint, shipped name (e.g. small-base), "
                   "models:/NAME@ALIAS or best:bpp<=X")
    p.add_argument("--resume", help="'latest' or a checkpoint directory")
    p.add_argument("--overwrite", action="store_true", help="replace a model already exported in --output-dir")
    p.add_argument("--experiment", default="cdc-train", help="MLflow experiment")
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--tag", action="append", default=[], help="MLflow run tag key=value (repeatable)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=1e-4")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    """The preset or YAML with the flags and overrides applied."""
    flags = {"train.max_steps": args.max_steps, "loss.lmbda": args.lmbda, "loss.rho": args.rho,
             "diffusion.prediction": args.prediction}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    return load_config(args.preset, overrides, recipe=args.recipe)


def init_weights(codec: CDCCodec, ref: str) -> None:
    """Load checkpoint ``ref`` (any :mod:`cdc.resolve` form) into ``codec``; the architectures must agree."""
    path = resolve_model(ref)
    source = load_codec(path)
    if source.config.model != codec.config.model:
        diff = {k: (v, getattr(codec.config.model, k)) for k, v in vars(source.config.model).items()
                if getattr(codec.config.model, k) != v}
        raise CheckpointError(f"{path}: architecture differs from this run's preset "
                              + ", ".join(f"model.{k}: checkpoint {a} vs run {b}" for k, (a, b) in diff.items()))
    codec.load_state_dict(source.state_dict())


def check_output_dir(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse an output directory that holds an exported model, unless this run resumes the run that
    made it (``--resume`` with its checkpoints there) or ``--overwrite`` is given."""
    exported = (out / CONFIG_NAME).is_file() or (out / WEIGHTS_NAME).is_file()
    if exported and not overwrite and not (resume and checkpoint_dirs(out)):
        raise CheckpointError(f"{out}: holds an exported model; pass --overwrite to replace it "
                              "(or --resume latest to continue the run that made it)")


def train(args: argparse.Namespace, cfg: Config) -> dict:
    tc = cfg.train
    out: Path = args.output_dir
    check_output_dir(out, args.resume, args.overwrite)
    urls = resolve_shards(args.shards, "train", skip_missing=tc.skip_bad_shards)  # fail fast on missing shards
    phased = not args.init_from and any(tc.phase_steps())
    # phases leave parts of the model without gradients for a while: DDP must look for them
    accelerator = make_accelerator(tc.mixed_precision, out, tc.batch_size, tc.grad_clip, find_unused=bool(phased))
    check_world_size(accelerator.num_processes)
    main = accelerator.is_main_process
    torch.manual_seed(tc.seed)

    codec = CDCCodec(cfg)
    if args.init_from:
        init_weights(codec, args.init_from)
    if main:  # only now that every check passed
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).unlink(missing_ok=True)  # an old export must not look like this run's
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    loss_fn = RateDistortionPerceptionLoss(cfg.loss, codec.diffusion).to(accelerator.device)
    optimizer, scheduler = build_optimizer(codec, tc, fine_tune=bool(args.init_from))
    ema = EMA(codec, tc.ema_decay, tc.ema_every, tc.ema_start)
    ema.shadow.to(accelerator.device)
    codec, optimizer, scheduler = accelerator.prepare(codec, optimizer, scheduler)
    accelerator.register_for_checkpointing(ema)
    raw = accelerator.unwrap_model(codec)

    meta = resume(accelerator, out, args.resume) if args.resume else None
    step = meta["step"] if meta else 0
    launch = {"world_size": accelerator.num_processes, "num_workers": tc.num_workers, "seed": tc.seed}
    if meta and any(meta.get(k) != v for k, v in launch.items()):
        accelerator.print(f"warning: resuming with {launch} but the checkpoint was made with "
                          f"{ {k: meta.get(k) for k in launch} }: the data order will differ")
    loader = train_loader(urls, tc.batch_size, tc.crop, rank=accelerator.process_index,
                          world_size=accelerator.num_processes, seed=tc.seed, num_workers=tc.num_workers,
                          shuffle_buffer=tc.shuffle_buffer, epoch_batches=tc.checkpoint_every, start_batch=step,
                          skip_bad=tc.skip_bad_shards)
    tracker = RunTracker(main, args.experiment, args.run_name, run_id=meta.get("mlflow_run_id") if meta else None,
                         tags=dict(t.split("=", 1) for t in args.tag))
    tracker.log_params({**cfg.flat(), "launch.world_size": accelerator.num_processes,
                        "launch.distributed_type": str(accelerator.distributed_type),
                        "launch.mixed_precision": accelerator.mixed_precision, "launch.deepspeed": using_deepspeed(),
                        "init_from": args.init_from or "", "shards": " ".join(args.shards)})
    tracker.set_tags({"code_version": code_version(), "perceptual": cfg.loss.perceptual if cfg.loss.rho > 0 else "none",
                      "perceptual_pretrained": loss_fn.perceptual.pretrained if loss_fn.perceptual else "n/a"})
    preemption = Preemption()
    watchdog = DataWatchdog(tc.data_timeout_s, " ".join(args.shards))
    ckpt_meta = {**launch, "mlflow_run_id": tracker.run_id}
    metrics_file = out / "metrics.jsonl"
    data_iter = iter(loader)
    window = {"start": time.perf_counter(), "wait": 0.0, "images": 0}
    last: dict = {}
    bar = tqdm(total=tc.max_steps, initial=step, disable=not main, desc="train", unit="step")
    codec.train()
    while step < tc.max_steps:
        t0 = time.perf_counter()
        batch = next(data_iter).to(accelerator.device, non_blocking=True)
        watchdog.fed()
        window["wait"] += time.perf_counter() - t0
        phase = training_phase(step, tc, fine_tune=bool(args.init_from))
        with accelerator.autocast():
            outputs = codec(batch, phase=phase)
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
        if step % tc.log_every == 0 or step == tc.max_steps:
            names = ("loss", "bpp", "diffusion", "perceptual", "aux_mse")
            values = torch.stack([terms[k].detach().float() for k in names] + [outputs["aux_loss"].detach().float()])
            values = accelerator.reduce(values, reduction="mean").tolist()
            elapsed = time.perf_counter() - window["start"]
            last = {"step": step, **dict(zip((*names, "aux"), values, strict=True)),
                    "lr": scheduler.get_last_lr()[0], "images_per_s": window["images"] / elapsed,
                    "data_wait": window["wait"] / elapsed, "phase": CDCCodec.PHASES.index(phase)}
            window = {"start": time.perf_counter(), "wait": 0.0, "images": 0}
            if main:
                with metrics_file.open("a") as f:
                    f.write(json.dumps(last) + "\n")
                tracker.log_metrics({k: v for k, v in last.items() if k != "step"}, step)
                bar.set_postfix(loss=f"{last['loss']:.4f}", bpp=f"{last['bpp']:.3f}")
        if tc.sample_every and step % tc.sample_every == 0 and main:
            log_samples(ema.shadow, batch[:1], tracker, step)
        bar.update(1)
        stop = preemption.requested(accelerator)
        if step % tc.checkpoint_every == 0 or stop or step == tc.max_steps:
            save_checkpoint(accelerator, out, step, ckpt_meta, tc.keep_checkpoints)
        if stop:
            watchdog.stop()
            accelerator.print(f"preempted: checkpoint saved at step {step}; rerun with --resume latest")
            tracker.end(status="KILLED")
            return {"step": step, "preempted": True}
    bar.close()
    watchdog.stop()
    checksums = replica_checksums(accelerator, raw)
    summary = {"step": step, "preempted": False, "final": last, "world_size": accelerator.num_processes,
               "replica_checksums": checksums, "replicas_in_sync": len(set(checksums)) == 1,
               "mlflow_run_id": tracker.run_id}
    if main:
        log_samples(ema.shadow, batch[:1], tracker, step)
        fingerprint = save_export(ema.shadow, out, cfg, args, tracker.run_id, loss_fn)
        summary.update({"model": str(out), "fingerprint": fingerprint,
                        "peak_memory_mb": peak_memory_mb(accelerator.device)})
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        tracker.log_artifact(out / "train_summary.json")
        tracker.log_artifact(out / "train_config.json")
        tracker.end()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def save_export(model: CDCCodec, out: Path, cfg: Config, args: argparse.Namespace, run_id: str | None,
                loss_fn: RateDistortionPerceptionLoss) -> str:
    """Export the EMA weights (CDFs updated) as a codec checkpoint in ``out``; returns its fingerprint."""
    from cdc.checkpoint import read_checkpoint_info

    metadata = {"trained_steps": cfg.train.max_steps, "lmbda": cfg.loss.lmbda, "rho": cfg.loss.rho,
                "prediction": cfg.diffusion.prediction, "preset": cfg.preset,
                "perceptual": cfg.loss.perceptual if cfg.loss.rho > 0 else "none",
                "perceptual_pretrained": bool(loss_fn.perceptual.pretrained) if loss_fn.perceptual else None,
                "init_from": str(args.init_from) if args.init_from else None,
                "shards_fingerprint": shards_fingerprint(args.shards), "mlflow_run_id": run_id,
                "code_version": code_version(), "cdc_version": __version__}
    save_codec(model.cpu(), out, metadata=metadata)
    return read_checkpoint_info(out)["fingerprint"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations, else the resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
        summary = train(args, cfg)
    except (ConfigError, ShardError, MissingWeightsError, LaunchError, CheckpointError, FileNotFoundError,
            ModelNotFoundError) as exc:
        # a DataLoader worker's error arrives wrapped with its traceback: keep its last line
        line = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        print(f"cdc train: error: {line.removeprefix('shards.reader.ShardError: ')}", file=sys.stderr)
        return 2
    if not summary.get("preempted") and summary.get("model"):
        print(f"model: {summary['model']} (fingerprint {summary['fingerprint'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
