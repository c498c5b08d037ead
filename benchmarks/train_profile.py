"""Where a training step's time goes: a ``torch.profiler`` trace of eager training steps, as the trainer
runs them (bf16 autocast and fused Adam on CUDA), the operators with the most host time and, on a GPU,
the kernels by class (convolutions vs elementwise, norms, layout conversions) with the GPU's busy time.
The gzipped Chrome trace is kept in ``results/`` (open it in Perfetto or chrome://tracing):

    python benchmarks/train_profile.py --device cuda          # paper preset (skipped without a GPU)
    python benchmarks/train_profile.py --device cpu --preset small
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, print_table, sync, write_json
from train import JOINT, training_codec

from cdc.config import load_config

KERNEL_CLASSES = (
    ("layout NCHW <-> NHWC", ("nchwtonhwc", "nhwctonchw")),
    ("convolution / GEMM", ("conv", "sm90", "sm80", "xmma", "cutlass", "gemm", "wgrad", "dgrad", "implicit")),
    ("optimizer", ("adam", "multi_tensor")),
    ("reductions, norms", ("reduce", "norm", "welford")),
    ("elementwise, copies", ("elementwise", "copy")),
)


def kernel_breakdown(trace: Path, steps: int) -> dict:
    """GPU kernels per step from a gzipped Chrome trace: busy milliseconds (the union of kernel
    intervals, so overlaps count once) and, per kernel class, milliseconds and launches."""
    events = json.loads(gzip.decompress(trace.read_bytes()))
    kernels = sorted((e["ts"], e["dur"], e["name"].lower()) for e in events["traceEvents"]
                      if e.get("cat") == "kernel")
    busy, end = 0.0, float("-inf")
    for ts, dur, _ in kernels:
        busy += max(0.0, ts + dur - max(ts, end))
        end = max(end, ts + dur)
    classes: dict[str, list[float]] = {}
    for _, dur, name in kernels:
        label = next((c for c, keys in KERNEL_CLASSES if any(k in name for k in keys)), "other")
        classes.setdefault(label, [0.0, 0])
        classes[label][0] += dur
        classes[label][1] += 1
    total = sum(d for d, _ in classes.values())
    rows = [{"kernels": label, "ms_per_step": d / 1e3 / steps, "launches_per_step": n // steps,
             "share_pct": 100 * d / total} for label, (d, n) in sorted(classes.items(), key=lambda kv: -kv[1][0])]
    return {"gpu_busy_ms_per_step": busy / 1e3 / steps, "kernels_per_step": len(kernels) // steps, "classes": rows}


def profile_step(preset: str, device: str, batch: int, steps: int = 2) -> dict:
    """``torch.profiler`` trace of ``steps`` eager training steps of ``preset`` as the trainer runs them on
    ``device`` (bf16 autocast and fused Adam on CUDA, joint phase, rho 0), after 3 warm-up steps. Writes the
    gzipped Chrome trace to ``results/train-profile-DEVICE.json.gz``; returns the profiled milliseconds per
    step, the operators with the most host (CPU) time and, on CUDA, the kernel breakdown."""
    from torch.profiler import ProfilerActivity, profile

    from cdc.training.phases import build_optimizer

    cuda = device == "cuda"
    torch.manual_seed(0)
    cfg, codec, loss_fn = training_codec(preset, device, (*JOINT, f"train.batch_size={batch}"))
    optimizer, _ = build_optimizer(codec, cfg.train, fused=cuda)
    x = torch.rand(batch, 3, cfg.train.crop, cfg.train.crop, device=device)
    if cuda:
        torch.backends.cudnn.benchmark = True

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            out = codec(x)
            total = loss_fn(out, cfg.train.crop ** 2)["loss"] + out["aux_loss"]
        total.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), cfg.train.grad_clip, foreach=cuda)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    wall_ms = 1e3 * (time.perf_counter() - start) / steps  # profiled: the host overhead is inflated
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    ops = [{"operator": e.key, "calls_per_step": e.count // steps, "self_cpu_ms_per_step": e.self_cpu_time_total
            / 1e3 / steps} for e in top]
    trace = RESULTS / f"train-profile-{device}.json.gz"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        trace.write_bytes(gzip.compress(raw.read_bytes()))
    return {"preset": preset, "batch": batch, "steps": steps, "profiled_ms_per_step": wall_ms, "host_ops": ops,
            "trace": trace.name, **(kernel_breakdown(trace, steps) if cuda else {})}


def print_profile(result: dict) -> str:
    busy = result.get("gpu_busy_ms_per_step")
    print(f"{result['preset']} preset, batch {result['batch']}, eager, under the profiler: "
          f"{result['profiled_ms_per_step']:.1f} ms per step" + (
              f"; GPU busy {busy:.1f} ms per step in {result['kernels_per_step']} kernels" if busy else ""))
    table = print_table(result["host_ops"], [("operator", "operator"), ("calls_per_step", "calls/step"),
                                             ("self_cpu_ms_per_step", "host ms/step")])
    if busy:
        table += "\n\n" + print_table(result["classes"], [
            ("kernels", "GPU kernels"), ("ms_per_step", "ms/step"), ("launches_per_step", "launches/step"),
            ("share_pct", "% of GPU time")])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--preset", help="default: paper on cuda, small on cpu")
    parser.add_argument("--batch", type=int, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after 3 warm-up steps)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine: the GPU profile is skipped (--device cpu runs here)")
        return
    preset = args.preset or ("paper" if args.device == "cuda" else "small")
    result = profile_step(preset, args.device, args.batch or load_config(preset).train.batch_size, args.steps)
    result["table"] = print_profile(result)
    write_json(f"train-profile-{args.device}", result)


if __name__ == "__main__":
    main()
