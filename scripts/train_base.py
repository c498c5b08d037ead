"""Train, evaluate and package the shipped base model ``small-base`` (and its model card).

    python scripts/train_base.py [--steps 30000] [--lmbda 0.01] [--overwrite]

1. the offline development corpus (``scripts/offline_corpus.py``), if missing;
2. ``cdc/train.py --preset small`` with the default (fast-start) recipe on its train split, from
   scratch, resumable (rerun the same command after an interruption);
3. the EMA export evaluated on the held-out split through real bitstreams (``cdc.evaluation.evaluate``);
4. ``cdc/zoo/weights/small-base.safetensors`` (one file, config and provenance in its metadata) and
   the model card ``cdc/zoo/weights/small-base.md``. Existing files are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "small-base"
DECODES = ((1, 0.0), (4, 0.0), (9, 0.8))  # (DDIM steps, gamma) reported in the card


def train(args: argparse.Namespace) -> float:
    """Run (or resume) the training; returns the wall-clock seconds of all invocations so far
    (kept in ``<work>/wall_seconds.json``, so that a resumed run's card counts the whole training)."""
    cmd = [sys.executable, str(REPO / "cdc" / "train.py"), "--preset", "small", "--shards", args.shards,
           "--output-dir", str(args.work), "--max-steps", str(args.steps), "--lmbda", f"{args.lmbda:g}", "--rho", "0",
           "--resume", "latest", "--experiment", "cdc-base", "--run-name", NAME,
           f"train.checkpoint_every={max(500, args.steps // 20)}", "train.log_every=100", "train.sample_every=0"]
    ledger = args.work / "wall_seconds.json"
    spent = json.loads(ledger.read_text()) if ledger.is_file() else []
    start = time.perf_counter()
    try:
        subprocess.run(cmd, check=True)
    finally:
        args.work.mkdir(parents=True, exist_ok=True)
        ledger.write_text(json.dumps([*spent, time.perf_counter() - start]))
    return sum(spent) + time.perf_counter() - start


def evaluate(model: Path, shards: str, out: Path) -> list[dict]:
    """Held-out metrics of ``model`` for every decode setting of ``DECODES``."""
    from cdc.coding.coder import Coder
    from cdc.evaluation.evaluate import EvalSettings, cdc_points, run_curve
    from cdc.evaluation.metrics import PER_IMAGE_METRICS, MetricSuite
    from cdc.zoo.checkpoint import load_codec

    coder = Coder(load_codec(model))
    suite = MetricSuite(metrics=PER_IMAGE_METRICS)
    rows = []
    for steps, gamma in DECODES:
        settings = EvalSettings(dataset="shards", root=shards, steps=(steps,), gamma=gamma, seed=0, save_recon=0,
                                metrics=PER_IMAGE_METRICS)
        path = run_curve(f"{NAME} {steps} steps gamma {gamma:g}", "held-out split, real bitstreams",
                         cdc_points([coder], steps, settings), settings, suite, out)
        results = json.loads(path.read_text())["results"]
        rows.append({"steps": steps, "gamma": gamma, **{k: v[0] for k, v in results.items()}})
    return rows


def model_card(info: dict, rows: list[dict], args: argparse.Namespace, provenance: dict, seconds: float) -> str:
    """The markdown model card."""
    from collections import Counter

    origins = Counter(f["origin"].split("=")[0] for f in provenance["files"])
    cfg, meta = info["config"], info["metadata"]
    lines = [
        f"# {NAME}", "",
        f"A `small` CDC codec ({info['parameters'] / 1e6:.2f} M parameters) trained from scratch on a CPU with the "
        "fast-start recipe; the starting point of `make demo` and of `train-grid` with "
        "`training.base = \"small-base\"`. It shows that the pipeline learns; it is not a paper-scale model.", "",
        f"* **fingerprint**: `{info['fingerprint']}`",
        f"* **load**: `cdc compress photo.png -m {NAME} -o out/`, `cdc init --from {NAME} -o MODEL`, "
        f"`cdc/train.py --init-from {NAME} ...`",
        "* **data**: the offline development corpus (`scripts/offline_corpus.py`): "
        + ", ".join(f"{n} images from {o}" for o, n in sorted(origins.items()))
        + f"; shorter side ≤ {args.max_shorter} px; train split only (held-out split: 15 % of the images by content "
        f"hash, never trained on); shards fingerprint `{meta.get('shards_fingerprint')}`. The packages "
        "`mate-backgrounds` and `plasma-workspace-wallpapers` are reserved for independent evaluation and unused.",
        f"* **recipe**: `fast` (the default of `cdc/train.py`, chosen by `benchmarks/recipes.py`): GDN analysis, "
        f"light GDN synthesis g_s, {cfg['train']['autoencoder_fraction']:.0%} of the steps as an MSE autoencoder "
        f"(noise proxy), {cfg['train']['freeze_latent_fraction']:.0%} decoder on the frozen latent, then joint; the "
        "U-Net predicts a residual over g_s's reconstruction, x0 loss weight clamp(SNR, 1, 5).",
        f"* **objective**: λ = {cfg['loss']['lmbda']:g} (rate weight), ρ = {cfg['loss']['rho']:g}, "
        f"{meta.get('trained_steps')} steps, batch {cfg['train']['batch_size']} × {cfg['train']['crop']}² crops, "
        f"Adam {cfg['train']['lr']:g}; EMA weights exported. Training wall clock: {seconds / 60:.0f} min on 2 CPU "
        "cores (all invocations of a resumed run).",
        f"* **reproduce**: `python scripts/train_base.py --steps {args.steps} --lmbda {args.lmbda:g} --overwrite`",
        "", "## Held-out metrics (real bitstreams, mean over the held-out images)", "",
        "| decode | bpp | PSNR (dB) | MS-SSIM | ST-LPIPS-VGG | ST-LPIPS-Alex |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['steps']} steps, γ = {r['gamma']:g} | {r['bpp']:.4f} | {r['psnr-rgb']:.2f} | "
                     f"{r.get('ms-ssim-rgb', float('nan')):.4f} | {r['stlpips-vgg']:.4f} | {r['stlpips-alex']:.4f} |")
    lines += ["", "Limitations: a CPU-sized model trained on ~50 photos at one rate; fine-tune it (`--init-from`) "
              "for other rates or ρ > 0. Decoding with γ = 0.8 trades PSNR for texture.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30000)
    p.add_argument("--lmbda", type=float, default=0.01)
    p.add_argument("--shards", default="runs/devcorpus/shards")
    p.add_argument("--max-shorter", type=int, default=512)
    p.add_argument("--work", type=Path, default=Path("runs") / NAME)
    p.add_argument("--out-dir", type=Path, default=REPO / "cdc" / "zoo" / "weights")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shipped model and card")
    args = p.parse_args(argv)
    target, card = args.out_dir / f"{NAME}.safetensors", args.out_dir / f"{NAME}.md"
    if target.exists() and not args.overwrite:
        print(f"train_base: error: {target}: exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    if not Path(args.shards).exists():
        from shards.devcorpus import build_corpus

        build_corpus(Path(args.shards).parent, max_shorter=args.max_shorter)
    seconds = train(args)

    from cdc.zoo.checkpoint import load_codec, read_checkpoint_info, save_codec

    rows = evaluate(args.work, args.shards, args.work / "heldout")
    codec = load_codec(args.work)
    metadata = {**read_checkpoint_info(args.work)["metadata"], "name": NAME, "heldout": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_codec(codec, target, metadata=metadata)
    info = read_checkpoint_info(target)
    provenance = json.loads((Path(args.shards).parent / "provenance.json").read_text())
    card.write_text(model_card(info, rows, args, provenance, seconds))
    size_mb = target.stat().st_size / 2**20
    print(f"{target}: {size_mb:.1f} MB, fingerprint {info['fingerprint'][:12]}; card: {card}")
    return 0 if size_mb <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
