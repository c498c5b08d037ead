"""Helpers shared by the benchmark scripts: timing, peak FLOP/s, tables, JSON, test photos."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

RESULTS = Path(__file__).with_name("results")
HELDOUT_PACKAGES = "held-out packages (scikit-learn, pyiqa)"
"""The name of the photo set of a different character from training (``photo_sets``)."""


def timed(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device: str) -> None:
    """Wait for the GPU's queued work (timings of asynchronous CUDA calls); nothing on a CPU."""
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, n: int = 2048, device: str = "cpu", repeat: int = 8) -> float:
    """Measured dense matrix-multiply throughput in FLOP/s for ``dtype``: the best of ``repeat`` runs
    (a peak is a maximum; on a shared 2-core VM single runs vary by 2x)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for i in range(repeat + 2):
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> int:
    """ATen operators dispatched by ``fn()``: in eager PyTorch each is at least one kernel launch."""
    with _CountOps() as counter:
        fn()
    return counter.count


def photo(width: int = 768, height: int = 512, name: str = "china") -> torch.Tensor:
    """A real photo (scikit-learn's bundled ``china.jpg`` or ``flower.jpg``) resized to width x height,
    (1, 3, H, W) in [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image(f"{name}.jpg")).resize((width, height), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255


def photo_sets(shards: str | None, limit: int) -> dict[str, list[np.ndarray]]:
    """Named lists of H x W x 3 uint8 photos: the held-out packages (``shards.heldout``: scikit-learn's and
    pyiqa's photos, packages none of the photo corpus's training photos comes from) and, with ``shards``,
    the first ``limit`` photos of that shard build's held-out (``val``) split (all of them at 0)."""
    from shards.heldout import heldout_photos

    sets = {HELDOUT_PACKAGES: [np.asarray(image) for _, image in heldout_photos()]}
    if shards:
        from cdc.evaluation.datasets import load_eval_image, shard_split_images

        files = shard_split_images(shards, "val")
        files = files[:limit] if limit else files
        sets[f"held-out split of {Path(shards).name}"] = [np.asarray(load_eval_image(f, "full")) for f in files]
    return sets


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two images in [0, 1], measured on 8-bit rounded values."""
    a8, b8 = (a.cpu().clamp(0, 1) * 255).round(), (b.cpu().clamp(0, 1) * 255).round()
    mse = torch.mean((a8 - b8) ** 2).item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Print and return a markdown table of ``rows`` with (key, header) ``columns``."""
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(name: str, payload: dict) -> Path:
    """Write ``results/NAME.json`` (the machine added), and a copy into ``$CDC_BENCH_COPY`` when it is
    set: e.g. a remote GPU machine's output folder, which keeps what was finished when a time limit kills the run."""
    text = json.dumps({"machine": machine(), **payload}, indent=2) + "\n"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(text)
    if os.environ.get("CDC_BENCH_COPY"):
        (Path(os.environ["CDC_BENCH_COPY"]) / path.name).write_text(text)
    print(f"wrote {path}")
    return path
