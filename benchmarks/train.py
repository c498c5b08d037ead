"""Training benchmark: images/s, data-wait fraction and peak memory of `cdc/train.py` for the tiny and
small presets on this CPU with 1 and 2 processes (real runs, real shards), plus the paper preset's
FLOPs per training step and its projected step time on one H100. With ``--gpu`` (on a CUDA machine)
the paper step is also measured directly (bf16 autocast, batch 4 x 256^2, rho 0).

    python benchmarks/train.py [--steps 60] [--presets tiny,small]
    python benchmarks/train.py --gpu-only          # on a GPU machine: measure the paper step
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
from common import print_table, timed, write_json
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
H100_BF16_DENSE = 989e12  # FLOP/s, SXM5 datasheet
H100_BF16_MEASURED = 790e12  # an 8192^3 bf16 matmul on the lent H100 (device notes)


def build_shards(root: Path) -> Path:
    """Shards of the real photos shipped in scikit-image/scikit-learn, cut into 256 px patches."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_image

    from shards.build import build
    from shards.process import BuildConfig

    src = root / "photos"
    src.mkdir(parents=True)
    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    for name in names:
        Image.fromarray(getattr(data, name)()).save(src / f"{name}.png")
    for name in ("china.jpg", "flower.jpg"):
        Image.fromarray(load_sample_image(name)).save(src / name.replace(".jpg", ".png"))
    build([str(src)], root / "shards", BuildConfig(patch_size=256, max_count=16, policy="jpeg-q95"))
    return root / "shards"


def run_training(preset: str, procs: int, shards: Path, out: Path, steps: int, port: int) -> dict:
    env = {**os.environ, "CDC_HOME": str(out.parent / "cdc-home"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    launcher = [sys.executable] if procs == 1 else [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
        str(REPO / "infra/accelerate/cpu.yaml"), "--num_processes", str(procs), "--main_process_port", str(port)]
    cmd = [*launcher, str(REPO / "cdc/train.py"), "--preset", preset, "--shards", str(shards), "--output-dir",
           str(out), "--max-steps", str(steps), "train.log_every=10", "train.sample_every=0",
           f"train.checkpoint_every={steps}", "train.num_workers=1"]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=REPO)
    wall = time.perf_counter() - start
    windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # skip warm-up
    summary = json.loads((out / "train_summary.json").read_text())
    return {
        "preset": preset,
        "processes": procs,
        "images_per_s": sum(w["images_per_s"] for w in windows) / len(windows),
        "data_wait_pct": 100 * sum(w["data_wait"] for w in windows) / len(windows),
        "peak_mem_mb_rank0": summary.get("peak_memory_mb"),
        "wall_s": wall,
    }


def paper_step(device: str, batch: int = 4, crop: int = 256, precision: str = "bf16"):
    """(codec, loss, optimizer, step function) for the paper preset (rho 0: no perceptual net)."""
    from cdc.codec import CDCCodec
    from cdc.config import load_config
    from cdc.losses import RateDistortionPerceptionLoss

    cfg = load_config("paper", ["loss.rho=0"])
    codec = CDCCodec(cfg).to(device).train()
    loss_fn = RateDistortionPerceptionLoss(cfg.loss, codec.diffusion)
    opt = torch.optim.Adam(codec.parameters(), lr=5e-5)
    x = torch.rand(batch, 3, crop, crop, device=device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step() -> float:
        with torch.autocast(device, dtype=dtype, enabled=precision == "bf16"):
            out = codec(x)
            total = loss_fn(out, crop * crop)["loss"] + out["aux_loss"]
        total.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return float(total)

    return step


def paper_flops() -> float:
    """Counted FLOPs of one paper-preset training step (forward + backward), batch 4 x 256^2, fp32 CPU."""
    step = paper_step("cpu", precision="fp32")
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def gpu_rows() -> list[dict]:
    rows = []
    for precision in ("bf16", "fp32"):
        torch.cuda.reset_peak_memory_stats()
        step = paper_step("cuda", precision=precision)
        losses = [step() for _ in range(3)]
        seconds = timed(step, repeat=10, warmup=2)
        rows.append({"what": f"paper step on {torch.cuda.get_device_name()} ({precision}, measured)",
                     "step_s": seconds, "images_per_s": 4 / seconds, "finite_loss": all(map(lambda v: v == v, losses)),
                     "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--gpu-only", action="store_true", help="only the measured paper step on CUDA")
    args = parser.parse_args()
    if args.gpu_only:
        rows = gpu_rows()
        table = print_table(rows, [("what", "measurement"), ("step_s", "s/step"), ("images_per_s", "images/s"),
                                   ("peak_mem_mb", "peak MiB"), ("finite_loss", "finite loss")])
        write_json("train_gpu", {"rows": rows, "table": table})
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shards(Path(tmp))
        for i, preset in enumerate(args.presets.split(",")):
            for procs in (1, 2):
                runs.append(run_training(preset, procs, shards, Path(tmp) / f"{preset}-{procs}", args.steps,
                                         29700 + 10 * i + procs))
    table = print_table(runs, [("preset", "preset"), ("processes", "processes"), ("images_per_s", "images/s"),
                               ("data_wait_pct", "data wait %"), ("peak_mem_mb_rank0", "peak MiB (rank 0)"),
                               ("wall_s", "wall s")])
    flops = paper_flops()
    projection = [{"assumed_efficiency": eta, "step_ms": 1e3 * flops / (H100_BF16_DENSE * eta),
                   "images_per_s": 4 * H100_BF16_DENSE * eta / flops} for eta in (0.2, 0.4, 790 / 989)]
    print(f"\npaper preset: {flops / 1e12:.2f} TFLOP per training step (batch 4 x 256^2, forward + backward)")
    proj_table = print_table(projection, [("assumed_efficiency", "fraction of 989 TFLOP/s"),
                                          ("step_ms", "projected ms/step"), ("images_per_s", "images/s")])
    write_json("train", {"steps": args.steps, "runs": runs, "table": table, "paper_flops_per_step": flops,
                         "h100_projection": projection, "projection_table": proj_table,
                         "goal": "data wait < 5 % of step time"})


if __name__ == "__main__":
    main()
