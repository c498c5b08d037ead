"""Are models trained on the fast path as good? Quality, not speed: the shipped ``small-base`` is
fine-tuned for the same steps through the real ``cdc/train.py`` on today's path (eager, NCHW) and on
the fast path (``train.compile``: the whole step compiled, drawing inductor's own random numbers;
``train.channels_last``), then each model and ``small-base`` itself code the offline development
corpus's held-out photos through real bitstreams (1 DDIM step, gamma 0): mean bpp, PSNR, MS-SSIM,
ST-LPIPS. Training seconds include compilation.

    python scripts/offline_corpus.py -o runs/devcorpus     # once (the corpus)
    python benchmarks/fast_path_quality.py [--steps 300]   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import print_table, write_json
from recipes import evaluate_cdc, held_out_images
from train import FAST, REPO, run_training

from cdc.evaluation.metrics import DEFAULT_METRICS, MetricSuite

BASE = REPO / "cdc/zoo/weights/small-base.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=str(REPO / "runs/devcorpus/shards/manifest.json"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lmbda", type=float, default=0.004)
    parser.add_argument("--limit", type=int, default=0, help="held-out images (0: all)")
    args = parser.parse_args()
    if not Path(args.shards).is_file():
        sys.exit(f"{args.shards}: no development corpus; build it with scripts/offline_corpus.py -o runs/devcorpus")
    images = held_out_images(args.shards, args.limit)
    suite = MetricSuite(metrics=DEFAULT_METRICS)
    rows = [{"model": "small-base (no fine-tuning)", "steps": 0,
             **evaluate_cdc(str(BASE), images, suite, [(1, 0.0)])["steps1-gamma0"]}]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra) in enumerate((("today (eager, NCHW)", ()), ("fast (compiled step, NHWC)", FAST))):
            out = Path(tmp) / f"run{i}"
            start = time.perf_counter()
            run_training("small", 1, Path(args.shards), out, args.steps, 29900 + i,
                         [f"loss.lmbda={args.lmbda}", "loss.rho=0", "train.fast_path=off", *extra],
                         {"CUDA_VISIBLE_DEVICES": ""},
                         flags=["--init-from", str(BASE)])
            seconds = time.perf_counter() - start
            metrics = evaluate_cdc(str(out), images, suite, [(1, 0.0)])["steps1-gamma0"]
            rows.append({"model": f"fine-tuned, {label}", "steps": args.steps, "train_s": seconds, **metrics})
            print(f"{label}: trained in {seconds:.0f} s, {metrics['bpp']:.4f} bpp, {metrics['psnr-rgb']:.2f} dB",
                  flush=True)
    table = print_table(rows, [("model", "model"), ("steps", "steps"), ("train_s", "train s (compile included)"),
                               ("bpp", "bpp"), ("psnr-rgb", "PSNR dB"), ("ms-ssim-rgb", "MS-SSIM"),
                               ("stlpips-alex", "ST-LPIPS-Alex")])
    write_json("fast-path-quality", {"shards": args.shards, "held_out_images": [n for n, _ in images],
                                     "lmbda": args.lmbda, "decode": "1 DDIM step, gamma 0", "rows": rows,
                                     "table": table})


if __name__ == "__main__":
    main()
