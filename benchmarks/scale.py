"""Cost at scale: sharding 1k to 64k images, Slurm's submit-to-start latency, loader workers per GPU.

1. ``shards build`` (two processes) and the ``shard-corpus`` flow on a Dask cluster (two worker
   processes) over generated 256×256 JPEGs: wall time and the coordinator's peak resident memory
   (the building process itself; workers are separate processes). ``--baseline REV`` runs the
   same command from a git revision's checkout beside today's, in the same run.
2. With ``SLURM_CONF`` set (a cluster, e.g. ``infra/slurm/local-cluster.sh``): the latency from
   ``sbatch`` to the job's start, for 1-node and 2-node jobs.
3. The shard loader's images/s per worker process at the ``paper`` preset's crop, beside the
   training step's consumption on one H100 (``results/train-paths-cuda.json``): the loader workers
   one GPU needs.

    python benchmarks/scale.py [--sizes 1000 4000 16000 64000] [--baseline REV] [--engines cli,dask]

The coordinator's memory is this module's child process: it imports nothing but the build (the
benchmark helpers import torch, which a shard build does not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PER_FOLDER = 1000  # generated images per folder: a corpus of N images is the first N / 1000 folders


def generate(root: Path, count: int) -> list[str]:
    """``count`` distinct 256×256 JPEGs (smooth gradients with seeded noise) in folders of 1000,
    made once; returns the folders to shard."""
    import numpy as np
    from PIL import Image

    folders = []
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 255
    for start in range(0, count, PER_FOLDER):
        folder = root / f"d{start // PER_FOLDER:04d}"
        folders.append(str(folder))
        done = folder / ".complete"
        if done.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(start + PER_FOLDER, count)):
            rng = np.random.default_rng(i)
            a, b, c = rng.uniform(0.2, 1.0, 3)
            base = np.stack([a * xx, b * yy, c * (1 - xx * yy)], axis=-1)
            noisy = np.clip(base + rng.normal(0, 0.04, base.shape), 0, 1)
            Image.fromarray((noisy * 255).astype(np.uint8)).save(folder / f"{i:07d}.jpg", quality=90)
        done.touch()
    return folders


def _child(engine: str, folders: list[str], out: str) -> None:
    """Run one build in this process and print its wall time and this process's peak RSS (KiB)."""
    sys.path.insert(0, os.getcwd())  # the checkout being measured (today's or the baseline's worktree)
    start = time.perf_counter()
    if engine == "cli":
        from shards.build import build, process_pool_map
        from shards.process import BuildConfig

        manifest = build(folders, out, BuildConfig(split_val=0.1), mapper=process_pool_map(2))
        fingerprint = manifest.fingerprint
    else:
        from pipelines.shard_corpus import shard_corpus

        fingerprint = shard_corpus(folders, out, split_val=0.1, runner="dask", workers=2)["fingerprint"]
    wall = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries the exec-ing parent's peak over into a child's ru_maxrss
    status = Path("/proc/self/status").read_text()
    peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"wall_s": wall, "peak_kib": peak, "fingerprint": fingerprint}))


def measure(engine: str, folders: list[str], checkout: Path, work: Path) -> dict:
    """One build of ``folders`` by ``engine`` with the code of ``checkout``, in a fresh process."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(checkout), "PREFECT_HOME": str(work / "prefect")}
    env.pop("PREFECT_API_URL", None)  # an ephemeral Prefect server, started by the flow
    r = subprocess.run([sys.executable, __file__, "--child", engine, str(out), *folders], cwd=checkout, env=env,
                       capture_output=True, text=True, timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"{engine} build failed:\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return result


def slurm_latency(jobs: int = 3) -> list[dict]:
    """Seconds from ``sbatch`` to RUNNING (polled every 0.1 s) for 1-node and 2-node jobs."""
    rows = []
    for nodes in (1, 2):
        waits = []
        for _ in range(jobs):
            submitted = time.perf_counter()
            job = subprocess.run(["sbatch", "--parsable", f"--nodes={nodes}", "--output=/dev/null", "--wrap",
                                  "sleep 1"], capture_output=True, text=True, check=True).stdout.strip()
            while True:
                state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                                       text=True).stdout.strip()
                if state in ("RUNNING", "COMPLETING", ""):
                    break
                time.sleep(0.1)
            waits.append(time.perf_counter() - submitted)
            while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
                time.sleep(0.2)
        rows.append({"nodes": nodes, "jobs": jobs, "submit_to_start_s": sorted(waits)[len(waits) // 2],
                     "max_s": max(waits)})
    return rows


def loader_rate(folders: list[str], work: Path, batches: int = 40) -> dict:
    """Images/s of the real training loader (``shards.reader.train_loader``) with one worker process
    at the paper preset's crop and batch, over shards of the generated images."""
    from shards.build import build, process_pool_map
    from shards.process import BuildConfig
    from shards.reader import train_loader

    shards = work / "loader-shards"
    build(folders[:4], shards, BuildConfig(), mapper=process_pool_map(2))
    loader = train_loader(str(shards), 32, 256, num_workers=1, shuffle_buffer=256)
    batches_iter = iter(loader)
    next(batches_iter)  # the worker's start-up
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    rate = batches * 32 / (time.perf_counter() - start)
    from common import RESULTS

    gpu = json.loads((RESULTS / "train-paths-cuda.json").read_text())
    fast = max(gpu["rows"], key=lambda r: r.get("images_per_s_after_ema_start") or 0)
    need = fast["images_per_s_after_ema_start"] / rate
    return {"loader_images_s_per_worker": rate, "gpu": fast["device"], "gpu_path": fast["path"],
            "gpu_images_s": fast["images_per_s_after_ema_start"], "workers_per_gpu": need}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    parser.add_argument("--engines", default="cli,dask", help="cli and/or dask")
    parser.add_argument("--baseline", help="a git revision to measure beside today's code (its own checkout)")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "scale", help="where the images are made")
    parser.add_argument("--render", action="store_true", help="print and rewrite the tables of results/scale.json "
                        "from its numbers (no measurement)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        from common import RESULTS

        payload = json.loads((RESULTS / "scale.json").read_text())
        payload.pop("machine", None)
        return report({**payload, "baseline": payload.get("baseline", "32abda4")})
    if args.child:  # the measured process: nothing imported beyond what the build itself needs
        engine, out, *folders = args.child
        return _child(engine, folders, out)
    engines = args.engines.split(",")
    if not set(engines) <= {"cli", "dask"} or any(n < PER_FOLDER or n % PER_FOLDER for n in args.sizes):
        parser.error(f"--engines takes cli,dask; --sizes multiples of {PER_FOLDER}")
    checkouts = {"today": REPO}
    if args.baseline:  # resolved now: the images take minutes to make, and HEAD may move meanwhile
        args.baseline = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=REPO, check=True,
                                       capture_output=True, text=True).stdout.strip()
    folders = generate(args.root / "images", max(args.sizes))
    with tempfile.TemporaryDirectory(prefix="cdc-scale-") as tmp:
        work = Path(tmp)
        if args.baseline:
            base = work / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=REPO, check=True,
                           capture_output=True)
            checkouts = {f"baseline {args.baseline}": base, **checkouts}
        rows = []
        try:
            for size in sorted(args.sizes):
                for engine in engines:
                    for label, checkout in checkouts.items():
                        result = measure(engine, folders[: size // PER_FOLDER], checkout, work)
                        rows.append({"code": label, "engine": engine, "images": size, "wall_s": result["wall_s"],
                                     "images_s": size / result["wall_s"], "peak_mb": result["peak_kib"] / 1024,
                                     "fingerprint": result["fingerprint"][:12]})
                        print(f"{label} {engine} {size}: {result['wall_s']:.1f} s, {result['peak_kib'] / 1024:.0f} MB",
                              flush=True)
            for label in checkouts:
                for engine in engines:
                    mine = sorted((r for r in rows if r["code"] == label and r["engine"] == engine),
                                  key=lambda r: r["images"])
                    if len(mine) > 1:  # memory per image: the slope between the smallest and largest corpus
                        grown = (mine[-1]["peak_mb"] - mine[0]["peak_mb"]) * 1024
                        slope = grown / (mine[-1]["images"] - mine[0]["images"])
                        for r in mine:
                            r["kb_per_image"] = slope
            slurm = slurm_latency() if os.environ.get("SLURM_CONF") else []
            loader = loader_rate(folders, work)
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")], cwd=REPO,
                               capture_output=True)
    report({"sizes": args.sizes, "baseline": args.baseline, "rows": rows, "slurm": slurm, "loader": loader})


def report(payload: dict) -> None:
    """Print the tables of a run and write them with its numbers to ``results/scale.json``."""
    from common import print_table, write_json

    print("\nSharding generated 256×256 JPEGs (split 0.1; cli: 2 processes; dask: LocalCluster of 2 worker "
          "processes): wall time and the coordinator's peak RSS")
    payload["table"] = print_table(payload["rows"], [
        ("code", "code"), ("engine", "engine"), ("images", "images"), ("wall_s", "wall s"), ("images_s", "images/s"),
        ("peak_mb", "coordinator peak MB"), ("kb_per_image", "KB per image (slope)"), ("fingerprint", "manifest")])
    payload["slurm_table"] = ""
    if payload["slurm"]:
        print("\nSlurm: sbatch to RUNNING (median of 3 jobs each)")
        payload["slurm_table"] = print_table(payload["slurm"], [
            ("nodes", "nodes"), ("submit_to_start_s", "submit to start s"), ("max_s", "max s")])
    print("\nShard loader beside one GPU's training")
    payload["loader_table"] = print_table([payload["loader"]], [
        ("loader_images_s_per_worker", "loader images/s per worker (256² crops, batch 32)"),
        ("gpu", "GPU"), ("gpu_path", "training path"), ("gpu_images_s", "training images/s"),
        ("workers_per_gpu", "loader workers per GPU")])
    write_json("scale", payload)


if __name__ == "__main__":
    main()
