"""The ``paper`` preset with the fast-start recipe on a GPU, beside the CPU numbers.

Two halves, because the GPU machine has neither the ST-LPIPS weights nor room to send a 55 M-parameter
model back:

    # on the GPU machine: calibrate, train for the budget, decode the held-out split there
    python benchmarks/gpu_paper.py train --budget-min 20 --out OUT
    # here: ST-LPIPS / MS-SSIM of the returned reconstructions; prints the table, writes JSON
    python benchmarks/gpu_paper.py score OUT [OUT ...]

``train`` measures the seconds per step of each phase in-process (bf16 autocast, as ``cdc/train.py``
runs on CUDA), trains the ``d-residual`` candidate of ``benchmarks/recipes.py`` (the default recipe)
through the real ``cdc/train.py`` for the budget, then encodes every held-out image through the real
bitstream and decodes it on the GPU at γ = 0 (1 and 4 DDIM steps) and γ = 0.8 (the preset's steps).
It writes ``OUT/gpu-paper-raw.json`` (bpp, PSNR, step times, training summary) and one tar of PNG
reconstructions per decode setting. ``score`` compares them with the held-out originals and writes
``benchmarks/results/gpu-paper.json``, with the CPU rows of ``benchmarks/results/recipes.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from recipes import CANDIDATES, RESULTS, calibrate, held_out_images, print_table, run_candidate, write_json

from cdc.coding.coder import Coder
from cdc.config import load_config
from cdc.images import from_uint8, to_uint8
from cdc.models.codec import CDCCodec
from cdc.zoo.checkpoint import load_codec

CANDIDATE = next(c for c in CANDIDATES if c.name == "d-residual")


def _settings(preset: str) -> list[tuple[int, float]]:
    return [(1, 0.0), (4, 0.0), (load_config(preset).sampler.steps, 0.8)]


def _key(steps: int, gamma: float) -> str:
    return f"steps{steps}-gamma{gamma:g}"


def phase_step_times(model_dir: Path, batch: int) -> dict[str, float]:
    """Median seconds per step of each training phase, from ``metrics.jsonl``."""
    by_phase: dict[int, list[float]] = {}
    for line in (model_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("images_per_s"):
            by_phase.setdefault(int(row.get("phase", 0)), []).append(batch / row["images_per_s"])
    return {CDCCodec.PHASES[k]: float(np.median(v)) for k, v in sorted(by_phase.items())}


def train(args: argparse.Namespace) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    extra = tuple(args.overrides)
    timing = calibrate(args.preset, args.shards, args.calibration_steps, ("fast-autoencoder", "fast-joint"), device,
                       extra)
    print(f"[gpu-paper] {device}: seconds per step {timing}", flush=True)
    trained = run_candidate(CANDIDATE, args.work, args.preset, args.shards, args.lmbda, args.budget_min * 60, timing,
                            workers=args.workers, extra=extra)
    model = Path(trained["model"])
    print(f"[gpu-paper] trained {trained['steps']} steps in {trained['seconds']:.0f} s", flush=True)
    coder = Coder(load_codec(model, device))
    rows: dict[str, list[dict]] = {}
    for steps, gamma in _settings(args.preset):
        key = _key(steps, gamma)
        with tarfile.open(args.out / f"recon-{key}.tar", "w") as tar:
            for name, img in held_out_images(args.shards, args.limit):
                x = from_uint8(img, device)
                encoded = coder.encode(x, steps=steps, gamma=gamma, seed=0)
                rec = to_uint8(coder.decode(encoded.data)[0].cpu())
                mse = float(np.mean(((img.astype(np.float64) - rec) / 255) ** 2))
                rows.setdefault(key, []).append({"image": name, "bpp": encoded.bpp, "mse": mse,
                                                 "psnr-rgb": float(-10 * np.log10(max(mse, 1e-12)))})
                buf = io.BytesIO()
                Image.fromarray(rec).save(buf, format="PNG")
                info = tarfile.TarInfo(f"{Path(name).stem}.png")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
        print(f"[gpu-paper] {key}: PSNR {np.mean([r['psnr-rgb'] for r in rows[key]]):.2f} dB", flush=True)
    cfg = load_config(args.preset, extra)
    raw = {"overrides": extra, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "preset": args.preset, "lmbda": args.lmbda, "budget_minutes": args.budget_min,
           "calibration_seconds_per_step": timing,
           "phase_seconds_per_step": phase_step_times(model, cfg.train.batch_size), **trained,
           "train_summary": json.loads((model / "train_summary.json").read_text()),
           "wall_seconds": time.perf_counter() - start, "heldout": rows}
    (args.out / "gpu-paper-raw.json").write_text(json.dumps(raw, indent=2))
    return 0


def _scored(out: Path, originals: dict[str, np.ndarray], suite) -> tuple[dict, list[dict]]:
    """One ``train`` output folder: its raw results and a table row per decode setting."""
    scored = out / "gpu-paper-scored.json"  # kept: scoring is the slow part on a CPU
    raw = json.loads((scored if scored.is_file() else out / "gpu-paper-raw.json").read_text())
    cfg = load_config(raw["preset"], tuple(raw.get("overrides", ())))
    table = []
    for key, rows in raw["heldout"].items():
        with tarfile.open(out / f"recon-{key}.tar") as tar:
            for row in (r for r in rows if "stlpips-vgg" not in r):
                rec = np.asarray(Image.open(tar.extractfile(f"{Path(row['image']).stem}.png")).convert("RGB"))
                row.update(suite.pair(originals[Path(row["image"]).stem], rec))
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "image"}
        table.append({"where": raw["device"], "preset": raw["preset"], "batch": cfg.train.batch_size,
                      "lr": cfg.train.lr, "decode": key, "steps": raw["steps"], "minutes": raw["seconds"] / 60,
                      "joint_s": raw["phase_seconds_per_step"].get("joint"), **mean})
    scored.write_text(json.dumps(raw, indent=2))
    return raw, table


def score(args: argparse.Namespace) -> int:
    from cdc.evaluation.metrics import PER_IMAGE_METRICS, MetricSuite

    originals = {Path(n).stem: img for n, img in held_out_images(args.shards)}
    suite = MetricSuite(metrics=PER_IMAGE_METRICS)
    runs, table = [], []
    for out in args.out:
        raw, rows = _scored(out, originals, suite)
        runs.append({k: v for k, v in raw.items() if k != "heldout"})
        table += rows
    cpu = RESULTS / "recipes.json"
    if cpu.is_file():  # the same recipe, small preset, 20 minutes on 2 CPU cores (benchmarks/recipes.py)
        recipes = json.loads(cpu.read_text())
        cfg = load_config(recipes["preset"])
        for run in recipes["runs"]:
            if run["candidate"] == CANDIDATE.name and run["lmbda"] == runs[0]["lmbda"]:
                table += [{"where": "2 CPU cores", "preset": recipes["preset"], "batch": cfg.train.batch_size,
                           "lr": cfg.train.lr, "decode": key, "steps": run["steps"], "minutes": run["seconds"] / 60,
                           "joint_s": recipes["timing_seconds_per_step"]["fast-joint"], **point}
                          for key, point in run["heldout"].items()]
    markdown = print_table(table, [("where", "trained on"), ("preset", "preset"), ("batch", "batch"), ("lr", "lr"),
                                   ("decode", "decode"), ("steps", "train steps"), ("minutes", "train min"),
                                   ("joint_s", "s/step (joint)"), ("bpp", "bpp"), ("psnr-rgb", "PSNR dB"),
                                   ("ms-ssim-rgb", "MS-SSIM"), ("stlpips-vgg", "ST-LPIPS-VGG")])
    write_json("gpu-paper", {"runs": runs, "table": table, "markdown": markdown})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("train", "score"))
    p.add_argument("out", type=Path, nargs="+", help="train: the output folder; score: one or more of them")
    p.add_argument("--preset", default="paper")
    p.add_argument("--shards", default="runs/devcorpus/shards")
    p.add_argument("--work", type=Path, default=Path("runs/gpu-paper"))
    p.add_argument("--budget-min", type=float, default=20.0)
    p.add_argument("--lmbda", type=float, default=0.01, help="the CPU benchmark's λ, for a like-for-like row")
    p.add_argument("--limit", type=int, default=0, help="held-out images (0: all)")
    p.add_argument("--workers", type=int, default=4, help="data-loader processes")
    p.add_argument("--calibration-steps", type=int, default=20)
    p.add_argument("--override", dest="overrides", action="append", default=[],
                   help="config override for every run (repeatable), e.g. train.batch_size=16")
    args = p.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    if args.mode == "train":
        (args.out,) = args.out
        return train(args)
    return score(args)


if __name__ == "__main__":
    sys.exit(main())
