"""Training benchmark: images/s, data-wait fraction and peak memory of `cdc/train.py` for the tiny and
small presets on this CPU with 1 and 2 processes (real runs, real shards), plus the paper preset's
FLOPs per training step and its projected step time on one H100.

``--compare DEVICE`` runs today's path and the fast path (``train.compile``, ``train.channels_last``;
each alone; with bf16 autocast; with CUDA graphs; at a larger batch with sqrt LR scaling) side by
side through the real trainer, joint phase, rho 0, and prints images/s, achieved TFLOP/s, MFU
(counted FLOPs x images/s / peak), data stall, peak memory, the loss after the run, each export's
bpp and PSNR on two held-out photos, and how far the loss curves at the same batch drift apart:

    python benchmarks/train.py [--steps 60] [--presets tiny,small]
    python benchmarks/train.py --compare cuda --steps 300   # paper preset on a GPU (skipped without one)
    python benchmarks/train.py --compare cpu --steps 100    # small preset on this CPU
    python benchmarks/train.py --compare cpu --steps 2000 --early-steps 0 \
        --runs today,bf16,compile,channels-last,fast,fast-bf16,control   # every CPU lever
    python benchmarks/train.py --compare cuda --runs today,fast-big --early-steps 0   # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import count_ops, matmul_peak, print_table, write_json
from torch.utils.flop_counter import FlopCounterMode

from cdc.config import load_config

REPO = Path(__file__).resolve().parents[1]
H100_BF16_DENSE = 989e12  # FLOP/s, SXM5 datasheet
H100_BF16_MEASURED = 790e12  # an 8192^3 bf16 matmul on the H100 the GPU rows ran on


SKLEARN_PHOTOS = ("china", "flower")
HELD_OUT = SKLEARN_PHOTOS
"""``--compare`` trains without scikit-learn's two sample photos and codes them with each result."""


def build_shards(root: Path, held_out: tuple[str, ...] = ()) -> Path:
    """Shards of the real photos shipped in scikit-image/scikit-learn (but ``held_out``), cut into
    256 px patches."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_image

    from shards.build import build
    from shards.process import BuildConfig

    src = root / "photos"
    src.mkdir(parents=True)
    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    for name in names:
        try:
            Image.fromarray(getattr(data, name)()).save(src / f"{name}.png")
        except Exception as err:  # newer scikit-image releases download some (no network)
            print(f"skipping scikit-image's {name}: {err}")
    for name in (n for n in SKLEARN_PHOTOS if n not in held_out):
        Image.fromarray(load_sample_image(f"{name}.jpg")).save(src / f"{name}.png")
    build([str(src)], root / "shards", BuildConfig(patch_size=256, max_count=16, policy="jpeg-q95"))
    return root / "shards"


class TrainingFailed(RuntimeError):
    """A benchmarked ``cdc/train.py`` run exited non-zero (the message holds its command and stderr)."""


def run_training(preset: str, procs: int, shards: Path, out: Path, steps: int, port: int,
                 overrides: list[str] = (), extra_env: dict | None = None, skip_windows: int = 1,
                 flags: list[str] = ()) -> dict:
    """One real ``cdc/train.py`` run (``flags``: options such as ``--init-from M``, then the config
    ``overrides``); throughput from its ``metrics.jsonl`` windows after the first ``skip_windows``
    (warm-up, compilation)."""
    env = {**os.environ, "CDC_HOME": str(out.parent / "cdc-home"), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    launcher = [sys.executable] if procs == 1 else [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
        str(REPO / "infra/accelerate/cpu.yaml"), "--num_processes", str(procs), "--main_process_port", str(port)]
    cmd = [*launcher, str(REPO / "cdc/train.py"), "--preset", preset, "--shards", str(shards), "--output-dir",
           str(out), "--max-steps", str(steps), *flags, "train.log_every=10", "train.sample_every=0",
           f"train.checkpoint_every={steps}", "train.num_workers=1", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise TrainingFailed(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][skip_windows:]
    summary = json.loads((out / "train_summary.json").read_text())
    return {
        "preset": preset,
        "processes": procs,
        "images_per_s": sum(w["images_per_s"] for w in windows) / len(windows),
        "data_wait_pct": 100 * sum(w["data_wait"] for w in windows) / len(windows),
        "peak_mem_mb_rank0": summary.get("peak_memory_mb"),
        "wall_s": wall,
    }


JOINT = ("train.autoencoder_fraction=0", "train.freeze_latent_fraction=0")
"""Every step in the joint phase: the recipe's cheaper autoencoder phase would flatter images/s."""
PHASES = {"joint": JOINT, "autoencoder": ("train.autoencoder_fraction=1", "train.freeze_latent_fraction=0")}
"""``--phase``: the steps ``--compare`` times (a fine-tune of the family runs 95-97 % of its steps in
the autoencoder phase)."""


def training_codec(preset: str, device: str = "cpu", overrides: tuple[str, ...] = ()) -> tuple:
    """(config, codec in train mode, its loss) of ``preset`` on ``device``, rho 0 (no perceptual network)."""
    from cdc.models.codec import CDCCodec
    from cdc.training.losses import RateDistortionPerceptionLoss

    cfg = load_config(preset, ["loss.rho=0", *overrides])
    codec = CDCCodec(cfg).to(device).train()
    return cfg, codec, RateDistortionPerceptionLoss(cfg.loss, codec.diffusion).to(device)


def flops_per_image(preset: str, crop: int = 256, device: str = "cpu") -> float:
    """Counted FLOPs of one joint-phase training step (forward + backward) per image, rho 0, fp32."""
    _, codec, loss_fn = training_codec(preset, device)
    x = torch.rand(2, 3, crop, crop, device=device)
    with FlopCounterMode(display=False) as counter:
        out = codec(x)
        (loss_fn(out, crop * crop)["loss"] + out["aux_loss"]).backward()
    return counter.get_total_flops() / 2



def dispatch_counts(preset: str = "paper") -> list[dict]:
    """ATen operators per eager training step of ``preset`` by stage (batch-size independent): the
    launch count that makes a small-batch step host-bound on a GPU. Adam per parameter tensor vs fused."""
    _, codec, loss_fn = training_codec(preset)
    x = torch.rand(1, 3, 64, 64)
    rows = []

    def count(stage: str, fn) -> None:
        rows.append({"stage": stage, "ops": count_ops(fn)})

    out = {}
    count("forward + loss", lambda: out.update(loss=loss_fn(codec(x), 64 * 64)["loss"] + codec.aux_loss()))
    count("backward", lambda: out["loss"].backward())
    for label, foreach, kwargs in (("per tensor (the CPU default)", False, {"foreach": False}),
                                   ("multi-tensor clip, fused Adam (the trainer on CUDA)", True, {"fused": True})):
        opt = torch.optim.Adam(codec.parameters(), lr=1e-6, **kwargs)
        opt.step()  # the first step creates the state; count a steady-state one
        count(f"grad clip + Adam, {label}", lambda opt=opt, foreach=foreach: (
            torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0, foreach=foreach), opt.step()))
    rows.append({"stage": f"parameter tensors: {sum(1 for _ in codec.parameters())}", "ops": ""})
    return rows


FAST = ("train.compile=true", "train.channels_last=true")
"""The fast path's settings (fused Adam, foreach EMA and sync-free steps are on for every run)."""
BF16 = ("train.mixed_precision=bf16",)
"""bf16 autocast (the entropy model stays fp32); on a CPU, oneDNN's bf16 kernels (AVX-512-BF16, AMX)."""

RUNS = ("today", "control", "bf16", "compile", "channels-last", "fast", "fast-bf16", "fast-graphs", "fast-big")
"""What ``--runs`` may name: today's path; today's again (the control: another summation order);
bf16 autocast, ``torch.compile`` and channels-last alone; the fast path (compile + channels-last),
with bf16 autocast, with CUDA graphs; the fast path at the larger batch (sqrt LR scaling)."""


def run_settings(name: str, big_batch: int, cuda: bool) -> tuple[str, list[str], dict]:
    """(label, config overrides, extra environment) of run ``name``."""
    return {
        "today": ("today", [], {}),
        # CUDA: its non-deterministic kernels differ anyway; on the CPU another thread count does it
        "control": ("today again (control)", [], {} if cuda else {"OMP_NUM_THREADS": "1"}),
        "bf16": ("bf16 autocast", list(BF16), {}),
        "compile": ("compiled step", [FAST[0]], {}),
        "channels-last": ("NHWC", [FAST[1]], {}),
        "fast": ("fast (compiled step, NHWC)", list(FAST), {}),
        "fast-bf16": ("fast + bf16 autocast", [*FAST, *BF16], {}),
        "fast-graphs": ("fast + CUDA graphs", [*FAST, "train.compile_mode=reduce-overhead"], {}),
        "fast-big": (f"fast, batch {big_batch}", [*FAST, f"train.batch_size={big_batch}", "train.lr_scaling=sqrt"],
                     {}),
    }[name]


def result_name(device: str, phase: str) -> str:
    """The results file (``results/NAME.json``) of ``--compare device --phase phase``."""
    return f"train-paths-{device}" + ("" if phase == "joint" else f"-{phase}")


def compare_paths(device: str, preset: str, steps: int, big_batch: int, tmp: Path, runs: tuple[str, ...] = RUNS,
                  early_steps: int = 30, phase: str = "joint") -> dict:
    """``runs`` (see ``RUNS``; ``today`` first, the baseline) through the real ``cdc/train.py`` on
    ``device``, every step in ``phase`` (see ``PHASES``), rho 0. The runs at the default batch are
    compared with today's loss curve, over ``steps`` (10-step windows) and over the first
    ``early_steps`` (each step logged, compiled runs drawing eager's random numbers; 0: not run).
    A run that fails is reported with its error and the others go on."""
    shards = build_shards(tmp, HELD_OUT)
    # at the crop the runs train at; counted for the joint step (the autoencoder phase runs no U-Net)
    flops = flops_per_image(preset, load_config(preset).train.crop, device) if phase == "joint" else None
    cuda = device == "cuda"
    name = torch.cuda.get_device_name() if cuda else "CPU"
    # MFU only on a GPU: on this CPU oneDNN's convolutions run above the FMA peak in counted FLOPs
    peak, peak_what = ((H100_BF16_DENSE, "H100 bf16 dense datasheet") if "H100" in name else
                       (matmul_peak(torch.bfloat16, 8192, "cuda"), f"measured bf16 matmul on {name}")) if cuda \
        else (None, "none on a CPU")
    # each run's path as labelled (fast_path off); the GPU machine has 16 cores
    common = ["loss.rho=0", "train.fast_path=off", *PHASES[phase], f"train.num_workers={4 if cuda else 1}"]
    base_env = {} if cuda else {"CUDA_VISIBLE_DEVICES": ""}
    batch = load_config(preset).train.batch_size
    rows, curves = [], {}
    for i, run in enumerate(runs):
        label, extra, env = run_settings(run, big_batch, cuda)
        out = tmp / f"run{i}"
        try:
            row = run_training(preset, 1, shards, out, steps, 29800 + i, [*common, *extra], {**base_env, **env},
                               skip_windows=2)
        except TrainingFailed as err:
            rows.append({"run": run, "path": label, "device": name, "error": str(err)[-2000:]})
            print(f"{label}: FAILED\n{err}", flush=True)
            continue
        windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        curves[run] = {w["step"]: w["loss"] for w in windows}
        tflops = flops * row["images_per_s"] / 1e12 if flops else "n/a"
        rows.append({"run": run, "path": label, "device": name, "batch": big_batch if run == "fast-big" else batch,
                     **row, "tflops": tflops, "mfu_pct": 100 * tflops * 1e12 / peak if peak and flops else "n/a",
                     "second_half_loss": _late_mean(curves[run], 0.5), "last_tenth_loss": _late_mean(curves[run], 0.1),
                     **held_out_quality(out)})
        print(f"{label}: {row['images_per_s']:.1f} images/s, {row['wall_s']:.0f} s wall", flush=True)
        write_json(result_name(device, phase), {"partial": True, "device": name, "rows": rows})  # kept if cut off
    base = rows[0].get("images_per_s")
    for row in rows:
        if base and "images_per_s" in row:
            row["speedup"] = row["images_per_s"] / base
    same_batch = [r for r in runs[1:] if r != "fast-big" and r in curves and "today" in curves]
    early = {}
    for i, run in enumerate(["today", *same_batch] if early_steps else []):  # where do the curves part?
        label, extra, env = run_settings(run, big_batch, cuda)
        out = tmp / f"early{i}"
        run_training(preset, 1, shards, out, early_steps, 29810 + i,
                     [*common, *extra, "train.log_every=1", "train.compile_eager_rng=true"], {**base_env, **env},
                     skip_windows=0)
        early[run] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    agreement = []
    for run in same_batch:
        rel = [abs(a / b - 1) for a, b in zip(early[run], early["today"], strict=True)] if early else []
        agreement.append({
            "pair": f"today vs {run_settings(run, big_batch, cuda)[0]}",
            "max_rel_diff_first10": max(rel[:10]) if rel else "n/a",
            "first_step_over_1e-3": next((n + 1 for n, r in enumerate(rel) if r > 1e-3), "none") if rel else "n/a",
            "max_window_diff_pct": 100 * max(abs(curves[run][s] / curves["today"][s] - 1) for s in curves["today"]),
            "second_half_mean_diff_pct": 100 * (_late_mean(curves[run], 0.5) / _late_mean(curves["today"], 0.5) - 1)})
    return {"device": name, "preset": preset, "phase": phase, "steps": steps, "flops_per_image": flops,
            "peak_flops": peak, "peak_source": peak_what, "rows": rows, "loss_curves": curves, "early_losses": early,
            "early_steps": early_steps, "agreement": agreement}


def held_out_quality(model: Path) -> dict:
    """Mean bpp and PSNR (dB) of the ``HELD_OUT`` photos through real bitstreams, 1-step decode, γ 0."""
    import numpy as np
    from sklearn.datasets import load_sample_image

    from cdc.coding.coder import Coder
    from cdc.evaluation.metrics import psnr
    from cdc.images import from_uint8, to_uint8
    from cdc.zoo.checkpoint import load_codec

    coder = Coder(load_codec(model))
    bpp, quality = [], []
    for name in HELD_OUT:
        img = load_sample_image(f"{name}.jpg")
        data = coder.encode(from_uint8(img), steps=1, gamma=0.0).data
        bpp.append(8 * len(data) / (img.shape[0] * img.shape[1]))
        quality.append(psnr(img, to_uint8(coder.decode(data)[0])))
    return {"held_out_bpp": float(np.mean(bpp)), "held_out_psnr": float(np.mean(quality))}


def _late_mean(curve: dict[int, float], tail: float) -> float:
    """Mean logged loss over the last ``tail`` of a run (single-batch losses at random timesteps are noisy)."""
    late = [v for step, v in curve.items() if step > (1 - tail) * max(curve)]
    return sum(late) / len(late)


def print_compare(result: dict) -> str:
    peak = f"{result['peak_flops'] / 1e12:.0f} TFLOP/s ({result['peak_source']})" if result["peak_flops"] else "n/a"
    flops = f"{result['flops_per_image'] / 1e9:.1f} GFLOP" if result["flops_per_image"] else "FLOPs not counted"
    print(f"\n{result['preset']} preset on {result['device']}, {result.get('phase', 'joint')} phase: {flops} per "
          f"image and step; MFU against {peak}")
    table = print_table(result["rows"], [
        ("path", "path"), ("batch", "batch"), ("images_per_s", "images/s"), ("speedup", "x today"),
        ("tflops", "TFLOP/s"), ("mfu_pct", "MFU %"), ("data_wait_pct", "data stall %"),
        ("peak_mem_mb_rank0", "peak MiB"), ("second_half_loss", "loss, 2nd half mean"),
        ("last_tenth_loss", "loss, last tenth"), ("held_out_bpp", "held-out bpp"),
        ("held_out_psnr", "held-out PSNR dB")])
    for row in result["rows"]:
        if "error" in row:
            print(f"{row['path']}: failed: {row['error'].strip().splitlines()[-1]}")
    early = f"the first {result['early_steps']} steps (each logged), then " if result["early_steps"] else ""
    print(f"loss curves at batch {result['rows'][0].get('batch')}: {early}{result['steps']} steps "
          "(means over 10-step windows)")
    table += "\n\n" + print_table(result["agreement"], [
        ("pair", "pair"), ("max_rel_diff_first10", "max rel. difference, steps 1-10"),
        ("first_step_over_1e-3", "first step > 1e-3"), ("max_window_diff_pct", "max window difference %"),
        ("second_half_mean_diff_pct", "2nd-half mean difference %")])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--compare", choices=("cpu", "cuda"),
                        help="only today's path against the fast path (compile, channels-last, larger batch)")
    parser.add_argument("--preset", help="preset of --compare (default: paper on cuda, small on cpu)")
    parser.add_argument("--batch", type=int, help="the fast path's larger batch (default: 32 on cuda, 8 on cpu)")
    parser.add_argument("--runs", help=f"runs of --compare, today's first, from {','.join(RUNS)} (default: all; "
                        "fast-graphs only on cuda)")
    parser.add_argument("--phase", choices=tuple(PHASES), default="joint",
                        help="--compare: the training phase every step runs in (default: %(default)s)")
    parser.add_argument("--early-steps", type=int, default=30,
                        help="--compare: steps of the step-by-step loss comparison (0: none)")
    args = parser.parse_args()
    if args.compare:
        if args.compare == "cuda" and not torch.cuda.is_available():
            print("no CUDA device on this machine: the GPU comparison is skipped "
                  "(run `python benchmarks/train.py --compare cuda` on a machine with one; `--compare cpu` runs here)")
            return
        cuda = args.compare == "cuda"
        runs = tuple(args.runs.split(",")) if args.runs else tuple(r for r in RUNS if cuda or r != "fast-graphs")
        if runs[0] != "today" or not set(runs) <= set(RUNS):
            parser.error(f"--runs: today first, then any of {','.join(RUNS[1:])}")
        with tempfile.TemporaryDirectory() as tmp:
            result = compare_paths(args.compare, args.preset or ("paper" if cuda else "small"), args.steps,
                                   args.batch or (32 if cuda else 8), Path(tmp), runs, args.early_steps, args.phase)
        result["table"] = print_compare(result)
        write_json(result_name(args.compare, args.phase), result)
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shards(Path(tmp))
        for i, preset in enumerate(args.presets.split(",")):
            for procs in (1, 2):
                runs.append(run_training(preset, procs, shards, Path(tmp) / f"{preset}-{procs}", args.steps,
                                         29700 + 10 * i + procs, JOINT))
    table = print_table(runs, [("preset", "preset"), ("processes", "processes"), ("images_per_s", "images/s"),
                               ("data_wait_pct", "data wait %"), ("peak_mem_mb_rank0", "peak MiB (rank 0)"),
                               ("wall_s", "wall s")])
    flops = 4 * flops_per_image("paper")
    projection = [{"assumed_efficiency": eta, "step_ms": 1e3 * flops / (H100_BF16_DENSE * eta),
                   "images_per_s": 4 * H100_BF16_DENSE * eta / flops} for eta in (0.2, 0.4, 790 / 989)]
    print(f"\npaper preset: {flops / 1e12:.2f} TFLOP per training step (batch 4 x 256^2, forward + backward)")
    proj_table = print_table(projection, [("assumed_efficiency", "fraction of 989 TFLOP/s"),
                                          ("step_ms", "projected ms/step"), ("images_per_s", "images/s")])
    print("\npaper preset: ATen operators (eager: kernel launches) per training step")
    ops = dispatch_counts("paper")
    ops_table = print_table(ops, [("stage", "stage"), ("ops", "operators")])
    write_json("train", {"steps": args.steps, "runs": runs, "table": table, "paper_flops_per_step": flops,
                         "h100_projection": projection, "projection_table": proj_table,
                         "dispatch_counts": ops, "dispatch_table": ops_table,
                         "goal": "data wait < 5 % of step time"})


if __name__ == "__main__":
    main()
