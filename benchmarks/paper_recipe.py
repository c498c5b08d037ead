"""Does the full-size codec learn? The ``paper`` preset with its fast-start recipe (autoencoder phase,
frozen-latent phase, joint; residual decoder) trained on this CPU at small crops, at several learning
rates and the same number of steps, each evaluated on the photo corpus's held-out photos through real
bitstreams (1 DDIM step, γ 0: the decode that measures what the codec learned).

Runs (all from the same seed on the same shards):

* ``as-published``: the preset as the official recipe writes it: lr 5e-5, no warm-up, and an EMA
  of 0.999 every 10 steps whose average has no warm-up (what every earlier ``paper`` run exported);
* ``lr5e-5``, ``lr2e-4``, ``lr5e-4``: the preset with the EMA warm-up (``train.ema_warmup``) and a
  linear learning-rate warm-up of ``--warmup`` steps, at that rate;
* ``staged``: the same phases as two runs, so that each gets its own rate: the autoencoder phase alone
  (``--autoencoder-steps``, or ``--autoencoder-fraction`` of the steps, at ``--autoencoder-lr``; its
  U-Net never runs, and its zero-initialised residual makes the decode exactly the autoencoder's),
  then ``--init-from`` it the decoder phase on the frozen latent (``--frozen-share`` of the rest)
  and the joint phase, at ``--diffusion-lr``. Both stages are rows; the first stage is the
  ``autoencoder-lr*`` run of its rate and length, so stagings that differ only in the second stage
  share it;
* ``autoencoder-lr1e-4``, ``autoencoder-lr2e-4``, ``autoencoder-lr5e-4``: the autoencoder phase alone
  (the staged run's first stage) at that rate, to find the fastest rate the full-size autoencoder
  takes.

    python benchmarks/paper_recipe.py --shards runs/photos/shards/manifest.json --steps 1000 --crop 128
    python benchmarks/paper_recipe.py --runs lr5e-4 --steps 4000      # one rate, longer
    python benchmarks/paper_recipe.py --runs staged --steps 11900 --autoencoder-steps 11000
    python benchmarks/paper_recipe.py --runs staged --steps 12900 --autoencoder-steps 11000  # same first stage
    python benchmarks/paper_recipe.py --runs autoencoder-lr1e-4,autoencoder-lr2e-4,autoencoder-lr5e-4 --steps 2000

Resumable: each finished run (``--work``/<run>-<steps>; a first stage is
``--work``/autoencoder-lr<rate>-<its steps>) is evaluated again but not retrained. Writes
``benchmarks/results/paper-recipe-cpu.json`` (rows and loss curves; rows of other runs or step counts
already there are kept) and ``paper-recipe-curves.png``, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from common import RESULTS, print_table, write_json
from recipes import held_out_images
from train import TrainingFailed, _late_mean, run_training

from cdc.argtypes import BATCH, COUNT, TRAIN_STEPS, number

RESULT = RESULTS / "paper-recipe-cpu.json"
FRACTION = number(float, 0.0, 1.0, "a number")
RATE = number(float, 1e-8, 1.0, "a number")
MIN_STEPS = 20
"""Fewest steps of a stage: throughput skips the first logged window (every 10 steps) as warm-up."""

RUNS = {
    "as-published": ("train.ema_warmup=false",),
    "lr5e-5": ("train.lr=5e-5",),
    "lr2e-4": ("train.lr=2e-4",),
    "lr5e-4": ("train.lr=5e-4",),
    "staged": (),
    **{f"autoencoder-lr{lr}": ("train.autoencoder_fraction=1", "train.freeze_latent_fraction=0", f"train.lr={lr}")
       for lr in ("1e-4", "2e-4", "5e-4")},
}
SWEEP = ("as-published", "lr5e-5", "lr2e-4", "lr5e-4")
"""The learning-rate sweep at equal steps (the default ``--runs``)."""


def rate_name(lr: float) -> str:
    """A learning rate as the run names write it: ``0.0002`` -> ``"2e-4"``."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def held_out_quality(model: Path, images: list[tuple[str, np.ndarray]]) -> dict:
    """Mean bpp and PSNR (dB) of ``images`` through real bitstreams, 1 step, γ 0, and the seconds per image."""
    import time

    from cdc.coding.coder import Coder
    from cdc.evaluation.metrics import psnr
    from cdc.images import from_uint8, to_uint8
    from cdc.zoo.checkpoint import load_codec

    coder = Coder(load_codec(model))
    bpp, quality, seconds = [], [], []
    for _, img in images:
        start = time.perf_counter()
        encoded = coder.encode(from_uint8(img), steps=1, gamma=0.0, seed=0)
        rec = to_uint8(coder.decode(encoded.data)[0])
        seconds.append(time.perf_counter() - start)
        bpp.append(encoded.bpp)
        quality.append(psnr(img, rec))
    return {"held_out_bpp": float(np.mean(bpp)), "held_out_psnr": float(np.mean(quality)),
            "held_out_psnr_min": float(np.min(quality)), "code_s_per_image": float(np.mean(seconds))}


def plot_curves(curves: dict[str, dict], path: Path, smooth: int = 20) -> None:
    """Training loss against step (a moving median over ``smooth`` logged windows: single-batch losses are
    noisy; log scales), a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        steps = sorted(curve, key=int)
        values = np.array([curve[s] for s in steps])
        if len(values) > smooth:
            values = np.median(np.lib.stride_tricks.sliding_window_view(values, smooth), axis=1)
            steps = steps[smooth - 1:]
        ax.plot([int(s) for s in steps], values, label=name, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (median of {smooth} logged steps)")
    ax.set_title("paper preset on 2 CPU cores, 128 px crops, batch 4")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default="runs/photos/shards/manifest.json",
                   help="training shards with a val split (python -m shards.photocorpus -o runs/photos)")
    p.add_argument("--work", type=Path, default=Path("runs/paper-recipe"))
    p.add_argument("--runs", default=",".join(SWEEP),
                   help=f"comma-separated, of: {', '.join(RUNS)} (default: the 1,000-step sweep)")
    p.add_argument("--steps", type=TRAIN_STEPS, default=1000)
    p.add_argument("--crop", type=number(int, 64, 4096, "an integer"), default=128,
                   help="training crop side, pixels (multiple of 64)")
    p.add_argument("--batch", type=BATCH, default=4)
    p.add_argument("--warmup", type=COUNT, default=100, help="learning-rate warm-up steps of the swept runs")
    p.add_argument("--autoencoder-fraction", type=FRACTION, default=0.8,
                   help="share of the steps in the autoencoder phase (on a CPU a joint step costs ~14 of them)")
    p.add_argument("--autoencoder-steps", type=COUNT,
                   help="staged: steps of the first stage (default: --autoencoder-fraction of --steps)")
    p.add_argument("--autoencoder-lr", type=RATE, default=2e-4, help="staged: the autoencoder stage's rate")
    p.add_argument("--diffusion-lr", type=RATE, default=5e-5, help="staged: the decoder and joint phases' rate")
    p.add_argument("--frozen-share", type=FRACTION, default=0.7,
                   help="staged: share of the second stage in the decoder phase (frozen latent); the rest is joint")
    p.add_argument("--images", type=COUNT, default=4, help="held-out photos evaluated (whole, ~768x512)")
    args = p.parse_args(argv)
    names = [r for r in args.runs.split(",") if r]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {list(RUNS)}")
    first = args.autoencoder_steps or round(args.autoencoder_fraction * args.steps)
    if "staged" in names and min(first, args.steps - first) < MIN_STEPS:
        p.error(f"staged: each stage needs at least {MIN_STEPS} steps (--steps {args.steps} with a first "
                f"stage of {first} leaves {args.steps - first})")
    shards = Path(args.shards)
    if not shards.is_file():
        print(f"paper_recipe: error: {shards}: no shard manifest (python -m shards.photocorpus -o runs/photos)",
              file=sys.stderr)
        return 2
    images = held_out_images(str(shards), args.images)
    common = [f"train.crop={args.crop}", f"train.batch_size={args.batch}", "loss.rho=0"]
    previous = RESULT.is_file() and json.loads(RESULT.read_text())
    rows = [r for r in (previous or {}).get("rows", []) if (r["run"], r.get("steps")) not in
            {(n, args.steps) for n in names} | {(f"{n} (autoencoder stage)", args.steps) for n in names}]
    curves = (previous or {}).get("loss_curves", {})
    for i, name in enumerate(names):
        out = args.work / f"{name}-{args.steps}"
        warmup = [] if name == "as-published" else [f"train.warmup_steps={args.warmup}"]
        if name == "staged":
            rate = rate_name(args.autoencoder_lr)
            stages = [(args.work / f"autoencoder-lr{rate}-{first}", first, [
                "train.autoencoder_fraction=1", "train.freeze_latent_fraction=0", f"train.lr={rate}"],
                [], f"{name} (autoencoder stage)")]
            stages.append((out, args.steps - first, [
                "train.finetune_phases=true", "train.autoencoder_fraction=0",
                f"train.freeze_latent_fraction={args.frozen_share}", f"train.finetune_lr={args.diffusion_lr}"],
                ["--init-from", str(stages[0][0])], name))
        else:
            own = name.startswith("autoencoder-")  # these set their own phases
            fraction = [] if own else [f"train.autoencoder_fraction={args.autoencoder_fraction}"]
            stages = [(out, args.steps, [*fraction, *RUNS[name]], [], name)]
        offset = 0
        for j, (where, steps, overrides, flags, label) in enumerate(stages):
            settings = [*overrides, *warmup]
            timing = where / "bench_run.json"
            if not timing.is_file():
                try:
                    done = run_training("paper", 1, shards, where, steps, 29900 + 10 * i + j, [*common, *settings],
                                        flags=flags)
                    timing.write_text(json.dumps(done))
                except TrainingFailed as err:
                    rows.append({"run": label, "steps": args.steps, "error": str(err)[-2000:]})
                    print(f"{label}: FAILED\n{err}", flush=True)
                    break
            windows = [json.loads(line) for line in (where / "metrics.jsonl").read_text().splitlines()]
            curve = {w["step"] + offset: w["loss"] for w in windows}
            curves[f"{label}@{args.steps}"] = curve
            rows.append({"run": label, "overrides": " ".join(settings), "steps": args.steps,
                         "stage_steps": steps, "train_s": json.loads(timing.read_text())["wall_s"],
                         "last_tenth_loss": _late_mean(curve, 0.1), **held_out_quality(where, images)})
            print(f"{label}: {rows[-1]['held_out_psnr']:.2f} dB at {rows[-1]['held_out_bpp']:.3f} bpp", flush=True)
            write_json("paper-recipe-cpu", {"partial": True, "rows": rows, "loss_curves": curves})
            offset += steps
    table = print_table(rows, [("run", "run"), ("overrides", "settings"), ("steps", "steps"),
                               ("stage_steps", "stage steps"), ("train_s", "train s"),
                               ("last_tenth_loss", "loss (last tenth)"), ("held_out_bpp", "bpp"),
                               ("held_out_psnr", "PSNR dB"), ("held_out_psnr_min", "worst PSNR dB")])
    write_json("paper-recipe-cpu", {"preset": "paper", "crop": args.crop, "batch": args.batch,
                                    "warmup": args.warmup, "held_out_images": [n for n, _ in images],
                                    "decode": "1 step, gamma 0, real bitstreams", "rows": rows,
                                    "loss_curves": curves, "table": table})
    plot_curves(curves, RESULTS / "paper-recipe-curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
