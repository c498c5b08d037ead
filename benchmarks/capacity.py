"""Capacity chosen by measurement: which width and allocation of a CPU-sized CDC codec codes held-out
photos best for the same training time?

Every candidate is the ``small`` preset with other widths, trained from scratch through the real
``cdc/train.py`` for the same wall-clock budget (steps per phase from seconds per step measured first,
in this process, as in ``benchmarks/recipes.py``) on the photo corpus (``python -m shards.photocorpus``),
at one λ; by default all of it in the fast recipe's autoencoder phase (see ``SHARES``). CompressAI's
``MeanScaleHyperprior(128, 192)`` trains with the same budget and data as the distortion anchor. All
are evaluated on the held-out photos through real bitstreams (γ = 0, 1 DDIM step), next to JPEG at the
same bpp on the same photos.

Candidates stay within the shipped-model limit (≤ 10 MB as float32 safetensors, about 2.3 M
parameters):

* ``small``: today's preset (g_a/g_s widths 16-64, U-Net width 16);
* ``wider-ae``: CompressAI's N = 96 for g_a and g_s, 96 latent and 48 hyper-latent channels, U-Net
  width 8: most of the parameters move from the U-Net to the autoencoder.

    python benchmarks/capacity.py --budget-min 7          # ≈ 30 min on 2 cores
    python benchmarks/capacity.py --quick                 # the script end to end (tiny, seconds)

Writes ``benchmarks/results/capacity.json``; resumable (runs and evaluations kept under ``--work``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from common import print_table, write_json
from recipes import (
    ANCHOR,
    Candidate,
    Stage,
    cached_eval,
    calibrate,
    evaluate_anchor,
    evaluate_cdc,
    held_out_images,
    run_candidate,
    train_anchor,
)

from cdc.argtypes import COUNT, LAMBDA, number
from cdc.evaluation.baselines import build_baseline
from cdc.evaluation.metrics import psnr

CANDIDATES = {
    "small": (),
    "wider-ae": ("model.transform_dim=96", "model.latent_channels=96", "model.hyper_channels=48", "model.unet_dim=8"),
}
QUICK = {"tiny": (), "tiny-wide": ("model.transform_dim=16",)}
SHARES = (1.0, 0.0, 0.0)
"""Default wall-clock shares of the autoencoder, frozen-latent decoder and joint phases: the whole
budget on the autoencoder. At γ = 0 and one step the decode is x_aux plus the U-Net's correction, and
that correction is exactly 0 at initialisation (zero-initialised output) and stays ~0 after the
family's recipe (``small-q4``: 27.40 dB both ways on 8 held-out photos), so held-out PSNR measures
the analysis/synthesis allocation. With (0.8, 0.05, 0.15) the 130-200 joint steps from scratch at
lr 3e-4 blew up (diffusion loss 0.008 → 0.27, the autoencoder's MSE ×4) and every candidate decoded
at 14-16 dB: a from-scratch joint phase needs a lower rate or a longer warm-up than 7 minutes allow."""


def jpeg_curve(images) -> list[dict]:
    """Mean bpp and PSNR of JPEG (Pillow, 4:2:0) over the held-out images, per quality."""
    jpeg = build_baseline("jpeg")
    points = []
    for quality in (5, 10, 15, 20, 30, 40, 50, 60, 75, 85, 95):
        rows = []
        for _, img in images:
            data = jpeg.encode(img, quality)
            rows.append((8 * len(data) / (img.shape[0] * img.shape[1]), psnr(img, jpeg.decode(data))))
        points.append({"quality": quality, "bpp": float(np.mean([r[0] for r in rows])),
                       "psnr-rgb": float(np.mean([r[1] for r in rows]))})
    return points


def jpeg_at(points: list[dict], bpp: float) -> float | None:
    """JPEG's PSNR at ``bpp`` (linear in log-rate between qualities; None outside JPEG's range)."""
    rates, quality = np.log([p["bpp"] for p in points]), [p["psnr-rgb"] for p in points]
    return float(np.interp(np.log(bpp), rates, quality)) if rates[0] <= np.log(bpp) <= rates[-1] else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default="runs/photos/shards", help="photo corpus (python -m shards.photocorpus)")
    p.add_argument("--work", type=Path, default=Path("runs/capacity"))
    p.add_argument("--budget-min", type=number(float, 0.01, 10**6, "a number"), default=7.0,
                   help="wall-clock minutes of training per candidate")
    p.add_argument("--lmbda", type=LAMBDA, default=0.005)
    p.add_argument("--limit", type=COUNT, default=0, help="held-out photos (0: all)")
    p.add_argument("--threads", type=number(int, 1, 1024, "an integer"), default=2)
    p.add_argument("--shares", type=number(float, 0.0, 1.0, "a number"), nargs=3, default=SHARES,
                   metavar=("AE", "FROZEN", "JOINT"), help="wall-clock shares of the fast recipe's phases (sum 1)")
    p.add_argument("--quick", action="store_true", help="tiny preset, seconds of budget: checks the script")
    args = p.parse_args(argv)
    if abs(sum(args.shares) - 1) > 1e-6:
        p.error(f"--shares must sum to 1, not {sum(args.shares):g}")
    if not (Path(args.shards) / "manifest.json").is_file() and not Path(args.shards).is_file():
        p.error(f"--shards {args.shards}: no shard manifest (python -m shards.photocorpus builds the photo corpus)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    preset, candidates = ("tiny", QUICK) if args.quick else ("small", CANDIDATES)
    budget = 10.0 if args.quick else args.budget_min * 60
    work = args.work / "quick" if args.quick else args.work
    limit = args.limit or (2 if args.quick else 0)
    work.mkdir(parents=True, exist_ok=True)
    timing_file = work / "timing.json"
    if not timing_file.is_file():  # measured before any training, so that no other run shares the cores
        steps = 3 if args.quick else 15
        timing = {name: calibrate(preset, args.shards, steps, ("fast-autoencoder", "fast-joint"), extra=arch)
                  for name, arch in candidates.items()}
        timing[ANCHOR] = calibrate(preset, args.shards, steps, (ANCHOR,))[ANCHOR]
        timing_file.write_text(json.dumps(timing, indent=2))
    timing = json.loads(timing_file.read_text())
    print("[capacity] seconds per step:", timing, flush=True)

    images = held_out_images(args.shards, limit)
    from cdc.evaluation.metrics import MetricSuite

    suite = MetricSuite(metrics=("psnr-rgb", "ms-ssim-rgb", "stlpips-alex"))
    jpeg = jpeg_curve(images)
    rows = []
    for name, arch in candidates.items():
        candidate = Candidate(name, "fast recipe", (Stage(1.0, arch),), phased=True)
        trained = run_candidate(candidate, work / ("shares-" + "-".join(f"{x:g}" for x in args.shares)), preset,
                                args.shards, args.lmbda, budget, timing[name], shares=tuple(args.shares))
        evals = cached_eval(Path(trained["model"]), evaluate_cdc, trained["model"], images, suite, [(1, 0.0)])
        from cdc.zoo.checkpoint import read_checkpoint_info

        params = read_checkpoint_info(trained["model"])["parameters"]
        rows.append({"candidate": name, "parameters_m": params / 1e6, "steps": trained["steps"],
                     "minutes": trained["seconds"] / 60, **evals["steps1-gamma0"]})
    out = work / f"{ANCHOR}-lmbda{args.lmbda:g}"
    summary = train_anchor(out, args.shards, preset, args.lmbda, round(budget / timing[ANCHOR]))
    anchor = cached_eval(out, evaluate_anchor, out / "anchor.pt", images, suite)["autoencoder"]
    anchor_params = sum(v.numel() for v in torch.load(out / "anchor.pt", weights_only=True).values())
    rows.append({"candidate": "MeanScaleHyperprior(128, 192)", "parameters_m": anchor_params / 1e6,
                 "steps": summary["steps"], "minutes": summary["seconds"] / 60, **anchor})
    for row in rows:
        row["jpeg_psnr"] = jpeg_at(jpeg, row["bpp"])
        row["vs_jpeg_db"] = None if row["jpeg_psnr"] is None else row["psnr-rgb"] - row["jpeg_psnr"]
        row["rd_cost"] = args.lmbda * row["bpp"] + 4 * row["mse"]
    table = print_table(rows, [("candidate", "candidate"), ("parameters_m", "params (M)"), ("steps", "steps"),
                               ("minutes", "train min"), ("bpp", "bpp"), ("psnr-rgb", "PSNR dB"),
                               ("jpeg_psnr", "JPEG dB @bpp"), ("vs_jpeg_db", "Δ JPEG dB"),
                               ("stlpips-alex", "ST-LPIPS-Alex"), ("rd_cost", "λ·bpp+MSE")])
    winner = min((r for r in rows if r["candidate"] in candidates), key=lambda r: r["rd_cost"])
    print(f"\nlowest held-out λ·bpp + MSE: {winner['candidate']}")
    write_json("capacity-quick" if args.quick else "capacity",
               {"lmbda": args.lmbda, "budget_min": budget / 60, "held_out_images": len(images),
                "shards": args.shards, "shares": list(args.shares),
                "candidates": {k: list(v) for k, v in candidates.items()},
                "rows": rows, "jpeg": jpeg, "winner": winner["candidate"], "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
