"""The family's distortion members fine-tuned on one GPU at a larger batch, and compared with the shipped ones.

Two halves, because a GPU machine is often held for minutes and has no network:

    # on the GPU machine: fine-tune each member from its shipped weights within the budget
    python scripts/train_family_gpu.py train --shards DATA --budget-s 400 --out OUT
    # here: each returned model against the shipped member on the held-out photos (real bitstreams)
    python scripts/train_family_gpu.py compare OUT

``train`` runs the real ``cdc/train.py`` for each member in turn (``--init-from`` the shipped weights,
its own λ, the fine-tune phases of ``scripts/train_family.py`` at batch 32), splits the budget over
the members still to train using the steps per second the previous ones reached, and writes
``OUT/<member>.safetensors`` plus ``OUT/gpu-family-raw.json`` (steps, seconds, images per second,
the late-run loss) after each member, so that a run cut off still returns what it finished.
``compare`` measures both versions of every member at the family's decode (1 DDIM step, γ = 0) on
the held-out split and writes ``benchmarks/results/family-gpu.json``: a returned model is worth
shipping only where it codes the held-out photos better (BD-rate over the family's curve, and each
member's own PSNR and bpp).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from train_family import FAMILY, REPO, SHARDS, evaluate

RESULTS = REPO / "benchmarks" / "results" / "family-gpu.json"
MEMBERS = tuple(m for m in FAMILY if m.rho == 0 and m.shipped)
"""The distortion members (ρ = 0): the perceptual ones need the LPIPS backbone, which a machine
without network cannot fetch."""
DECODE = ((1, 0.0),)


def lr_for(name: str) -> float:
    """Fine-tune rate at batch 32: the highest-rate member was annealed at 1e-5, the others at 1e-4 (batch 8)."""
    return 3e-5 if name == "small-q4" else 5e-5


def run_member(member, shards: str, steps: int, batch: int, workers: int, work: Path) -> dict:
    """One fine-tune through ``cdc/train.py``; returns its steps, wall seconds and loss summary."""
    out = work / member.name
    cmd = [sys.executable, str(REPO / "cdc" / "train.py"), "--preset", "small", "--shards", shards,
           "--output-dir", str(out), "--init-from", member.name, "--lmbda", f"{member.lmbda:g}", "--rho", "0",
           "--max-steps", str(steps), "--experiment", "cdc-family-gpu", "--run-name", member.name,
           f"train.batch_size={batch}", f"train.num_workers={workers}", f"train.finetune_lr={lr_for(member.name):g}",
           "train.finetune_phases=true", "train.autoencoder_fraction=0.8", "train.freeze_latent_fraction=0.05",
           f"train.lr_decay_every={max(100, steps // 4)}", f"train.log_every={max(10, steps // 20)}",
           f"train.checkpoint_every={steps}", "train.sample_every=0"]
    print(f"[family-gpu] {member.name}: {steps} steps", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    rates = {}
    for r in rows:
        if r.get("images_per_s"):
            rates.setdefault(str(r.get("phase", 0)), []).append(r["images_per_s"])
    return {"steps": steps, "seconds": seconds, "batch": batch, "lr": lr_for(member.name),
            "images_per_s_by_phase": {k: float(np.median(v)) for k, v in rates.items()},
            "late_loss": float(np.mean(losses[-3:])) if losses else None}


def train(args: argparse.Namespace) -> int:
    """Fine-tune every member within ``args.budget_s`` seconds; export each as it finishes."""
    import torch

    from cdc.zoo.checkpoint import load_codec, read_checkpoint_info, save_codec

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    raw = {"device": device, "budget_s": args.budget_s, "shards": args.shards, "members": {}}
    start = time.perf_counter()
    rate = None  # steps per wall second (process start and export included) of the members so far
    members = [m for m in MEMBERS if not args.members or m.name in args.members]
    for i, member in enumerate(members):
        left = args.budget_s - (time.perf_counter() - start)
        share = left / (len(members) - i)
        if share < 20:
            print(f"[family-gpu] {member.name}: skipped ({left:.0f} s of the budget left)", flush=True)
            continue
        steps = args.first_steps if rate is None else int(min(args.max_steps, max(100, share * rate)) // 10 * 10)
        entry = run_member(member, args.shards, steps, args.batch, args.workers, args.work)
        model = args.work / member.name
        metadata = {**read_checkpoint_info(model)["metadata"], "name": member.name, "trained_on": device}
        save_codec(load_codec(model), args.out / f"{member.name}.safetensors", metadata=metadata)
        raw["members"][member.name] = entry
        done = raw["members"].values()
        rate = sum(e["steps"] for e in done) / sum(e["seconds"] for e in done)
        (args.out / "gpu-family-raw.json").write_text(json.dumps(raw, indent=1))
        print(f"[family-gpu] {member.name}: {entry['steps']} steps in {entry['seconds']:.0f} s, "
              f"images/s by phase {entry['images_per_s_by_phase']}, late loss {entry['late_loss']}", flush=True)
    return 0


def bd_rate(reference: list[dict], test: list[dict]) -> float | None:
    """Bjøntegaard-delta rate (%) of ``test`` against ``reference`` (PSNR); None with fewer than 4 points."""
    if min(len(reference), len(test)) < 4:
        return None
    import bjontegaard as bd

    ref = sorted(reference, key=lambda r: r["bpp"])
    new = sorted(test, key=lambda r: r["bpp"])
    return float(bd.bd_rate([r["bpp"] for r in ref], [r["psnr-rgb"] for r in ref], [r["bpp"] for r in new],
                            [r["psnr-rgb"] for r in new], method="akima"))


def compare(args: argparse.Namespace) -> int:
    """Both versions of each returned member on the held-out photos; prints the table, writes JSON."""
    from cdc.evaluation.datasets import load_eval_image, shard_split_images
    from cdc.zoo.pretrained import available

    raw = json.loads((args.out / "gpu-family-raw.json").read_text())
    images = [(f.name, np.asarray(load_eval_image(f, "full")))
              for f in shard_split_images(args.shards, "val")[:args.limit]]
    rows = []
    for member in MEMBERS:
        gpu = args.out / f"{member.name}.safetensors"
        if not gpu.is_file():
            continue
        shipped = evaluate(available()[member.name], images, DECODE, {})[0]
        tuned = evaluate(gpu, images, DECODE, {})[0]
        rows.append({"name": member.name, "lmbda": member.lmbda, "gpu": raw["members"][member.name],
                     "shipped": shipped, "tuned": tuned})
        print(f"[family-gpu] {member.name}: shipped {shipped['bpp']:.4f} bpp {shipped['psnr-rgb']:.2f} dB, "
              f"GPU {tuned['bpp']:.4f} bpp {tuned['psnr-rgb']:.2f} dB", flush=True)
    result = {"device": raw["device"], "budget_s": raw["budget_s"], "held_out_photos": len(images),
              "decode": {"steps": 1, "gamma": 0.0}, "members": rows,
              "bd_rate_percent": bd_rate([r["shipped"] for r in rows], [r["tuned"] for r in rows])}
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print("| member | λ | GPU steps | GPU s | shipped bpp | shipped PSNR | GPU bpp | GPU PSNR | ΔPSNR (dB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, t = r["shipped"], r["tuned"]
        print(f"| `{r['name']}` | {r['lmbda']:g} | {r['gpu']['steps']} | {r['gpu']['seconds']:.0f} | {s['bpp']:.4f} | "
              f"{s['psnr-rgb']:.2f} | {t['bpp']:.4f} | {t['psnr-rgb']:.2f} | {t['psnr-rgb'] - s['psnr-rgb']:+.2f} |")
    bd = result["bd_rate_percent"]
    print(f"BD-rate of the GPU members against the shipped ones: {'n/a' if bd is None else f'{bd:+.2f} %'}")
    print(f"wrote {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="on the GPU machine: fine-tune the members within a time budget")
    t.add_argument("--shards", required=True, help="training shards (a manifest, a folder or tar URLs)")
    t.add_argument("--budget-s", type=float, default=400.0, help="seconds for all members together")
    t.add_argument("--first-steps", type=int, default=1500, help="steps of the first member (sets the pace)")
    t.add_argument("--max-steps", type=int, default=20000, help="the most steps of any one member")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--workers", type=int, default=12, help="data-loader workers")
    t.add_argument("--work", type=Path, default=Path("runs") / "family-gpu", help="training folders")
    t.add_argument("--out", type=Path, required=True, help="the exported members and gpu-family-raw.json")
    names = [m.name for m in MEMBERS]
    t.add_argument("--members", nargs="+", metavar="NAME",
                   help=f"members to fine-tune (default: all): {', '.join(names)}")
    c = sub.add_parser("compare", help="here: the returned members against the shipped ones on held-out photos")
    c.add_argument("out", type=Path, help="the folder the train half wrote")
    c.add_argument("--shards", default=SHARDS, help="the shard build whose held-out split is measured")
    c.add_argument("--limit", type=int, help="the first N held-out photos only")
    c.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = p.parse_args(argv)
    unknown = sorted(set(getattr(args, "members", None) or ()) - {m.name for m in MEMBERS})
    if unknown:
        p.error(f"--members: no distortion member {', '.join(unknown)} (members: {', '.join(m.name for m in MEMBERS)})")
    if args.cmd == "compare" and not (args.out / "gpu-family-raw.json").is_file():
        p.error(f"{args.out}: no gpu-family-raw.json (run the train half first)")
    return train(args) if args.cmd == "train" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
