"""Entropy-model benchmark: `entroformer` vs `hyperprior` trained with the same budget on the same
shards, evaluated on the same held-out images: BD-rate (real bytes, PSNR on 8-bit outputs),
parameter counts, and the encode / decode time of the entropy-coding part.

    python benchmarks/entropy.py [--preset tiny] [--steps 400] [--lmbdas 0.002,0.005,0.01,0.02] [--device cpu]
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

import numpy as np
from common import print_table, psnr, write_json

from cdc.checkpoint import load_codec
from cdc.coder import Coder
from cdc.datasets import shard_split_images
from cdc.images import load_image
from cdc.rd import bd_rate

REPO = Path(__file__).resolve().parents[1]
MODELS = ("hyperprior", "entroformer")


def build_shards(root: Path) -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    from demo import build_corpus

    from shards.build import build
    from shards.process import BuildConfig

    build_corpus(root / "photos")
    build([str(root / "photos")], root / "shards", BuildConfig(patch_size=256, split_val=0.15, max_count=64))
    return root / "shards"


def train(model: str, lmbda: float, args: argparse.Namespace, shards: Path, out: Path) -> Path:
    env = {**os.environ, "CDC_HOME": str(out.parent / "cdc-home"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    launch = [sys.executable] if args.device == "cpu" else [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
        str(REPO / "infra/accelerate/single-gpu.yaml")]
    cmd = [*launch, str(REPO / "cdc/train.py"), "--preset", args.preset, "--shards", str(shards), "--output-dir",
           str(out), "--max-steps", str(args.steps), "--lmbda", f"{lmbda:g}", "--rho", "0", "train.sample_every=0",
           f"train.checkpoint_every={args.steps}", f"model.entropy_model={model}", "train.log_every=50"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=REPO)
    return out


def evaluate(model_dir: Path, images: list[Path], device: str) -> dict:
    coder = Coder(load_codec(model_dir, device))
    rows = []
    for path in images:
        x, _ = load_image(path)
        x = x.to(device)
        start = time.perf_counter()
        out = coder.codec.compress(x)
        entropy_encode = time.perf_counter() - start
        start = time.perf_counter()
        coder.codec.entropy.decompress(out["strings"], out["shape"])
        entropy_decode = time.perf_counter() - start
        encoded = coder.encode(x)
        x_hat, _ = coder.decode(encoded.data)
        rows.append({"bpp": encoded.bpp, "bpp_estimated": encoded.bpp_estimated, "psnr": psnr(x_hat.cpu(), x.cpu()),
                     "entropy_encode_s": entropy_encode, "entropy_decode_s": entropy_decode})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lmbdas", default="0.002,0.005,0.01,0.02")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    lmbdas = [float(v) for v in args.lmbdas.split(",")]
    rows, curves, params = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = build_shards(tmp)
        images = shard_split_images(shards)
        for model in MODELS:
            points = []
            for lmbda in lmbdas:
                out = train(model, lmbda, args, shards, tmp / f"{model}-{lmbda:g}")
                result = evaluate(out, images, args.device)
                rows.append({"entropy_model": model, "lmbda": lmbda, **result})
                points.append(result)
                codec = load_codec(out)
                params[model] = sum(p.numel() for p in codec.entropy.parameters())
            curves[model] = {"results": {"bpp": [p["bpp"] for p in points], "psnr-rgb": [p["psnr"] for p in points]}}
    try:
        saving = bd_rate(curves["hyperprior"], curves["entroformer"], "psnr-rgb")
    except ValueError as exc:
        saving = f"n/a ({exc})"
    table = print_table(rows, [("entropy_model", "entropy model"), ("lmbda", "lambda"), ("bpp", "bpp (real)"),
                               ("bpp_estimated", "bpp (estimated)"), ("psnr", "PSNR dB"),
                               ("entropy_encode_s", "entropy encode s"), ("entropy_decode_s", "entropy decode s")])
    enc = {m: np.mean([r["entropy_encode_s"] for r in rows if r["entropy_model"] == m]) for m in MODELS}
    dec = {m: np.mean([r["entropy_decode_s"] for r in rows if r["entropy_model"] == m]) for m in MODELS}
    summary = {"bd_rate_entroformer_vs_hyperprior_pct": saving, "entropy_params": params,
               "encode_overhead_x": enc["entroformer"] / enc["hyperprior"],
               "decode_overhead_x": dec["entroformer"] / dec["hyperprior"]}
    print(json.dumps(summary, indent=2))
    write_json(f"entropy-{args.preset}-{args.device}", {"args": vars(args), "images": len(images), "rows": rows,
                                                         "summary": summary, "table": table,
                                                         "goal": "BD-rate <= -5 % (entroformer saves >= 5 %)"})


if __name__ == "__main__":
    main()
