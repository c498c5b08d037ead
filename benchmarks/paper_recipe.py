"""Does the full-size codec learn? The ``paper`` preset with its fast-start recipe (autoencoder phase,
frozen-latent phase, joint; residual decoder) trained on this CPU at small crops, at several learning
rates and the same number of steps, each evaluated on the photo corpus's held-out photos through real
bitstreams (1 DDIM step, γ 0: the decode that measures what the codec learned).

Runs (all from the same seed on the same shards):

* ``as-published``: the preset as the official recipe writes it: lr 5e-5, no warm-up, and an EMA
  of 0.999 every 10 steps whose average has no warm-up (what every earlier ``paper`` run exported);
* ``lr5e-5``, ``lr2e-4``, ``lr5e-4``: the preset with the EMA warm-up (``train.ema_warmup``) and a
  linear learning-rate warm-up of ``--warmup`` steps, at that rate.

    python benchmarks/paper_recipe.py --shards runs/photos/shards/manifest.json --steps 1000 --crop 128
    python benchmarks/paper_recipe.py --runs lr5e-4 --steps 4000      # one rate, longer

Resumable: each finished run (``--work``/<run>) is evaluated again but not retrained. Writes
``benchmarks/results/paper-recipe-cpu.json`` (rows and loss curves) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from common import print_table, write_json
from recipes import held_out_images
from train import TrainingFailed, _late_mean, run_training

RUNS = {
    "as-published": ("train.ema_warmup=false",),
    "lr5e-5": ("train.lr=5e-5",),
    "lr2e-4": ("train.lr=2e-4",),
    "lr5e-4": ("train.lr=5e-4",),
}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default="runs/photos/shards/manifest.json",
                   help="training shards with a val split (python -m shards.photocorpus -o runs/photos)")
    p.add_argument("--work", type=Path, default=Path("runs/paper-recipe"))
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of: {', '.join(RUNS)}")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--crop", type=int, default=128, help="training crop side, pixels (multiple of 64)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps of the swept runs")
    p.add_argument("--autoencoder-fraction", type=float, default=0.8,
                   help="share of the steps in the autoencoder phase (on a CPU a joint step costs ~14 of them)")
    p.add_argument("--images", type=int, default=4, help="held-out photos evaluated (whole, ~768x512)")
    args = p.parse_args(argv)
    names = [r for r in args.runs.split(",") if r]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {list(RUNS)}")
    shards = Path(args.shards)
    if not shards.is_file():
        print(f"paper_recipe: error: {shards}: no shard manifest (python -m shards.photocorpus -o runs/photos)",
              file=sys.stderr)
        return 2
    images = held_out_images(str(shards), args.images)
    common = [f"train.crop={args.crop}", f"train.batch_size={args.batch}", "loss.rho=0",
              f"train.autoencoder_fraction={args.autoencoder_fraction}"]
    rows, curves = [], {}
    for i, name in enumerate(names):
        out = args.work / name
        warmup = [] if name == "as-published" else [f"train.warmup_steps={args.warmup}"]
        timing = out / "bench_run.json"
        if not timing.is_file():
            try:
                done = run_training("paper", 1, shards, out, args.steps, 29900 + i, [*common, *warmup, *RUNS[name]])
                timing.write_text(json.dumps(done))
            except TrainingFailed as err:
                rows.append({"run": name, "error": str(err)[-2000:]})
                print(f"{name}: FAILED\n{err}", flush=True)
                continue
        windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        curves[name] = {w["step"]: w["loss"] for w in windows}
        rows.append({"run": name, "overrides": " ".join([*warmup, *RUNS[name]]), "steps": args.steps,
                     "train_s": json.loads(timing.read_text())["wall_s"],
                     "last_tenth_loss": _late_mean(curves[name], 0.1),
                     **held_out_quality(out, images)})
        print(f"{name}: {rows[-1]['held_out_psnr']:.2f} dB at {rows[-1]['held_out_bpp']:.3f} bpp", flush=True)
        write_json("paper-recipe-cpu", {"partial": True, "rows": rows})
    table = print_table(rows, [("run", "run"), ("overrides", "settings"), ("steps", "steps"),
                               ("last_tenth_loss", "loss (last tenth)"), ("held_out_bpp", "bpp"),
                               ("held_out_psnr", "PSNR dB"), ("held_out_psnr_min", "worst PSNR dB")])
    write_json("paper-recipe-cpu", {"preset": "paper", "crop": args.crop, "batch": args.batch, "steps": args.steps,
                                    "warmup": args.warmup, "autoencoder_fraction": args.autoencoder_fraction,
                                    "held_out_images": [n for n, _ in images],
                                    "decode": "1 step, gamma 0, real bitstreams", "rows": rows,
                                    "loss_curves": curves, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
