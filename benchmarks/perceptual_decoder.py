"""Does ρ buy perception? A distortion member's decoder fine-tuned perceptually at its one-step decode.

The shipped ρ = 0.9 members fine-tuned everything jointly for 200 steps with the perceptual term on
the x0 estimates at random timesteps; on held-out photos they spend more bits than their ρ = 0 parents
for fewer dB and no better ST-LPIPS. Here the parent's latent stays frozen (its encoder and entropy
model; only the hyper-prior's quantiles keep training, so every new decoder codes nearly the parent's
bits: the comparison is at equal bpp, measured). Its decoder (auxiliary synthesis, context decoder,
U-Net) trains at each ρ and perceptual network in ``--variants`` on the input of the one-step deterministic decode
(``train.one_step_fraction=1``: t = T - 1, x_T = 0), the decoder phase throughout, from the parent's
weights, with the same steps and seed for each.

Every model codes the held-out photos through real bitstreams: the parent at 1 step γ 0 and 9 steps
γ 0.8, the shipped perceptual member at both, each new decoder at 1 step γ 0 (the decode it is
trained for). Judged by PSNR, ST-LPIPS-VGG and ST-LPIPS-Alex (the shipped members trained with
Alex: a decoder is judged by the network it did not train with), on the held-out split of the
shards and on the held-out packages (``shards.heldout``: packages no training photo comes from); a gallery
of centre crops of the smoothest and the most textured held-out photo is written for the eye
(``docs/family/perceptual-decoder.png``).

    python benchmarks/perceptual_decoder.py --shards runs/photos/shards [--steps 2000] [--variants 0.9:stlpips-vgg]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import photo_sets, print_table, write_json

from cdc.argtypes import number

REPO = Path(__file__).resolve().parents[1]
PARENTS = {"small-q1": ("small-q1-perceptual", 0.045), "small-q0": ("small-q0-perceptual", 0.09)}
"""ρ = 0 member -> (its shipped ρ = 0.9 sibling, the λ both were trained at)."""
DECODES = {"parent": ((1, 0.0), (9, 0.8)), "sibling": ((1, 0.0), (9, 0.8)), "new": ((1, 0.0),)}
METRICS = ("psnr-rgb", "stlpips-vgg", "stlpips-alex")
NETWORKS = ("stlpips-alex", "stlpips-vgg", "lpips-alex", "lpips-vgg")


def train_decoder(parent: str, rho: float, net: str, steps: int, shards: str, work: Path) -> Path:
    """Fine-tune ``parent``'s decoder at ``rho`` with perceptual network ``net`` on its frozen latent
    (resumable; skipped when done)."""
    lmbda = PARENTS[parent][1]
    out = work / f"{parent}-rho{rho:g}-{net}-{steps}"
    if not (out / "train_summary.json").is_file():
        cmd = [sys.executable, str(REPO / "cdc" / "train.py"), "--preset", "small", "--shards", shards,
               "--output-dir", str(out), "--init-from", parent, "--lmbda", f"{lmbda:g}", "--rho", f"{rho:g}",
               "--max-steps", str(steps), "--resume", "latest", "--experiment", "cdc-perceptual-decoder",
               "--run-name", out.name, f"loss.perceptual={net}", "train.finetune_phases=true",
               "train.autoencoder_fraction=0", "train.freeze_latent_fraction=1", "train.one_step_fraction=1",
               "train.checkpoint_every=500", "train.log_every=100", "train.sample_every=0"]
        print(f"[perceptual-decoder] {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True)
    return out


def texture(img: np.ndarray) -> float:
    """Mean absolute horizontal and vertical difference of the grey image (0-255 scale)."""
    grey = img.astype(np.float32).mean(axis=2)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def measure(models: dict[str, tuple[str | Path, tuple]], photos: list[np.ndarray], keep: set[int]
            ) -> tuple[list[dict], dict[tuple[str, int, float], dict[int, np.ndarray]]]:
    """Mean bpp, ``METRICS`` and decode seconds of every (model, decode) over ``photos`` through real
    bitstreams; the reconstructions of the photos whose indices are in ``keep``."""
    from cdc.coding.coder import Coder
    from cdc.evaluation.metrics import MetricSuite
    from cdc.images import from_uint8, to_uint8
    from cdc.zoo.checkpoint import load_codec

    suite = MetricSuite(metrics=METRICS)
    if suite.unavailable:
        raise SystemExit(f"metrics unavailable on this machine: {suite.unavailable}")
    rows, kept = [], {}
    for label, (ref, decodes) in models.items():
        coder = Coder(load_codec(ref))
        for steps, gamma in decodes:
            per_image = []
            for i, img in enumerate(photos):  # the file names its decode: γ is not a decoder option
                enc = coder.encode(from_uint8(img), steps=steps, gamma=gamma, seed=0)
                start = time.perf_counter()
                rec = to_uint8(coder.decode(enc.data)[0])
                per_image.append({"bpp": enc.bpp, "decode_s": time.perf_counter() - start, **suite.pair(img, rec)})
                if i in keep:
                    kept.setdefault((label, steps, gamma), {})[i] = rec
            rows.append({"model": label, "decode": f"{steps} step{'s' if steps > 1 else ''}, γ {gamma:g}",
                         **{k: float(np.mean([r[k] for r in per_image])) for k in per_image[0]}})
            print(f"[perceptual-decoder] {label} {rows[-1]['decode']}: {rows[-1]['bpp']:.4f} bpp "
                  f"{rows[-1]['psnr-rgb']:.2f} dB ST-LPIPS-VGG {rows[-1]['stlpips-vgg']:.4f}", flush=True)
    return rows, kept


def sheet(photos: list[np.ndarray], kept: dict, order: list[int], out: Path, crop: int = 224) -> Path:
    """One row per photo in ``order``: the original and every kept reconstruction, centre crops, captioned."""
    from PIL import Image, ImageDraw, ImageFont

    columns = [("original", None), *kept]
    import matplotlib  # its DejaVu Sans has γ and ρ; Pillow's default font has neither

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), 14)
    caption = 2 * font.size + 10
    canvas = Image.new("RGB", (crop * len(columns), (crop + caption) * len(order)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, i in enumerate(order):
        h, w = photos[i].shape[:2]
        top, left = (h - crop) // 2, (w - crop) // 2
        y = r * (crop + caption)
        for c, key in enumerate(columns):
            pixels = photos[i] if key[1] is None else kept[key][i]
            canvas.paste(Image.fromarray(pixels[top:top + crop, left:left + crop]), (c * crop, y + caption))
            text = key[0] if key[1] is None else f"{key[0]}\n{key[1]} step{'s' if key[1] > 1 else ''}, γ {key[2]:g}"
            draw.multiline_text((c * crop + 4, y + 3), text, fill="black", font=font, spacing=2)
    canvas.save(out)
    return out


COLUMNS = [("photos", "photos"), ("model", "model"), ("decode", "decode"), ("bpp", "bpp"), ("psnr-rgb", "PSNR dB"),
           ("stlpips-vgg", "ST-LPIPS-VGG"), ("vgg_vs_parent_pct", "VGG vs parent's best decode %"),
           ("stlpips-alex", "ST-LPIPS-Alex"), ("alex_vs_parent_pct", "Alex vs parent's best decode %")]


def markdown(results: dict) -> str:
    """One Markdown table of every photo set's rows (a set named with its photo count)."""
    rows = [{"photos": f"{label.split(' (')[0]} ({entry['photos']})", **r}
            for label, entry in results.items() for r in entry["rows"]]
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[k]:+.1f}" if k.endswith("_pct") else f"{r[k]:.4f}" if k in ("bpp", "stlpips-vgg", "stlpips-alex")
                 else f"{r[k]:.2f}" if k == "psnr-rgb" else str(r[k]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", required=True, help="the training shards; their val split is the held-out set")
    p.add_argument("--parent", choices=sorted(PARENTS), default="small-q1", help="the ρ = 0 member")
    p.add_argument("--variants", default="0.9:stlpips-alex,0.5:stlpips-alex,0.9:stlpips-vgg",
                   help="comma-separated RHO:NETWORK decoders to train (ρ in (0, 1]; an stlpips-* or lpips-* network)")
    p.add_argument("--steps", type=number(int, 1, 10**6, "an integer"), default=2000, help="training steps per ρ")
    p.add_argument("--limit", type=number(int, 0, 10**6, "an integer"), default=12, help="held-out photos (0: all)")
    p.add_argument("--work", type=Path, default=Path("runs") / "bench" / "perceptual-decoder",
                   help="checkpoints (outside git)")
    p.add_argument("--threads", type=number(int, 1, 1024, "an integer"), default=2)
    args = p.parse_args(argv)
    try:
        variants = [(float(rho), net) for rho, net in (v.split(":") for v in args.variants.split(","))]
    except ValueError:
        p.error(f"--variants: {args.variants!r} is not a comma-separated list of RHO:NETWORK")
    if not all(0 < rho <= 1 and net in NETWORKS for rho, net in variants):
        p.error(f"--variants: each ρ must be in (0, 1] and each network one of {', '.join(NETWORKS)}, "
                f"got {args.variants}")
    torch.set_num_threads(args.threads)
    from cdc.zoo.pretrained import available

    trained = {v: train_decoder(args.parent, *v, args.steps, args.shards, args.work) for v in variants}
    sibling = PARENTS[args.parent][0]
    models = {args.parent: (available()[args.parent], DECODES["parent"]),
              sibling: (available()[sibling], DECODES["sibling"]),
              **{f"decoder ρ {rho:g} {net}": (path, DECODES["new"]) for (rho, net), path in trained.items()}}
    results, gallery = {}, None
    for label, photos in photo_sets(args.shards, args.limit).items():
        textures = [texture(img) for img in photos]
        keep = {int(np.argmin(textures)), int(np.argmax(textures))}
        rows, kept = measure(models, photos, keep)
        for net in ("vgg", "alex"):
            best = min(r[f"stlpips-{net}"] for r in rows if r["model"] == args.parent)
            for r in rows:
                r[f"{net}_vs_parent_pct"] = 100 * (r[f"stlpips-{net}"] / best - 1)
        results[label] = {"photos": len(photos), "rows": rows}
        print(f"\n{label} ({len(photos)} photos)")
        print_table(rows, COLUMNS[1:])
        if label.startswith("held-out split"):
            order = [int(np.argmin(textures)), int(np.argmax(textures))]
            gallery = sheet(photos, kept, order, REPO / "docs" / "family" / "perceptual-decoder.png")
    write_json("perceptual-decoder", {"table": markdown(results), "args": {**vars(args), "work": str(args.work)},
                                      "parent": args.parent, "sibling": sibling, "variants": variants,
                                      "sets": results, "gallery": gallery.name if gallery else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
