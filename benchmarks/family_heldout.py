"""The shipped family on photos of a different character from training, and on the corpus's held-out split.

Every family member codes every photo of each set through real bitstreams at each decode it offers (1 DDIM
step, γ 0, every card's default; 9 steps, γ 0.8), next to JPEG, WebP and AVIF (Pillow) at the same bpp
(interpolated in log-rate over their quality sweep on the same photos). Quality is PSNR (RGB, dB) and
ST-LPIPS with both networks: the perceptual members trained with ST-LPIPS-Alex, so ST-LPIPS-VGG is the judge
they did not train with. The sets (``common.photo_sets``): the held-out packages (``shards.heldout``:
scikit-learn's and pyiqa's photos, packages none of whose photos is trained on) and the first ``--limit``
photos of the corpus's held-out split. The variable-rate model codes at its default level.

The family's targets, checked per set (``checks`` in the JSON):

* every ρ = 0 member at least 0.3 dB above JPEG at its bpp (its best decode by PSNR);
* each ρ = 0 member's gap to WebP in dB;
* the rates of the ρ = 0 members span at least 4x;
* every ρ > 0 member below WebP's ST-LPIPS at its bpp, and at least 10 % below the ρ = 0 members' best
  decode, interpolated in log-rate over their curve at its bpp, with each network.

    python benchmarks/family_heldout.py --shards runs/photos/shards [--limit 12]

Writes ``benchmarks/results/family-heldout.json`` (rows, checks, Markdown table) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import photo_sets, print_table, write_json

from cdc.argtypes import number

DECODES = ((1, 0.0), (9, 0.8))
CLASSICAL = {"jpeg": (0, 1, 2, 5, 10, 15, 20, 30, 40, 50, 60),
             "webp": (0, 1, 2, 5, 10, 15, 20, 30, 40, 50, 60),
             "avif": (1, 5, 10, 15, 20, 30, 45, 60)}
"""Pillow quality settings of each classical codec: the lowest reach the family's lowest rates, the highest
pass its highest (about 0.5 bpp)."""
METRICS = ("psnr-rgb", "stlpips-alex", "stlpips-vgg")
NETS = ("alex", "vgg")


def log_interp(points: list[tuple[float, float]], bpp: float) -> float | None:
    """The value at ``bpp`` of (bpp, value) ``points``, linear in log-rate; None outside their range."""
    points = sorted(points)
    rates = np.log([p[0] for p in points])
    if len(points) < 2 or not rates[0] <= np.log(bpp) <= rates[-1]:
        return None
    return float(np.interp(np.log(bpp), rates, [p[1] for p in points]))


def classical_curves(photos: list[np.ndarray]) -> dict[str, list[dict]]:
    """Mean bpp and PSNR of each classical codec over ``photos``, per quality, sorted by bpp."""
    from cdc.evaluation.baselines import build_baseline
    from cdc.evaluation.metrics import psnr

    curves = {}
    for name, qualities in CLASSICAL.items():
        codec = build_baseline(name)
        points = []
        for quality in qualities:
            coded = [(codec.encode(img, quality), img) for img in photos]
            points.append({"quality": quality,
                           "bpp": float(np.mean([8 * len(d) / (i.shape[0] * i.shape[1]) for d, i in coded])),
                           "psnr-rgb": float(np.mean([psnr(i, codec.decode(d)) for d, i in coded]))})
        curves[name] = sorted(points, key=lambda p: p["bpp"])
    return curves


def judge_webp(curve: list[dict], photos: list[np.ndarray], suite, rates: list[float]) -> None:
    """Add ST-LPIPS (both networks) to the WebP points that bracket each of ``rates`` (bpp): on 2 CPU
    cores ST-LPIPS-VGG costs seconds a photo, so only where a perceptual member is compared."""
    from cdc.evaluation.baselines import build_baseline

    codec = build_baseline("webp")
    for bpp in rates:
        above = next((i for i, p in enumerate(curve) if p["bpp"] >= bpp), None)
        for point in curve[max(above - 1, 0):above + 1] if above else []:
            if "stlpips-vgg" not in point:
                pairs = [suite.pair(img, codec.decode(codec.encode(img, point["quality"]))) for img in photos]
                point.update({f"stlpips-{net}": float(np.mean([q[f"stlpips-{net}"] for q in pairs])) for net in NETS})


def code_member(name: str, photos: list[np.ndarray], suite) -> list[dict]:
    """Mean bpp, ``METRICS`` and decode seconds per photo of shipped model ``name`` at each of ``DECODES``."""
    from cdc.coding.coder import Coder
    from cdc.images import from_uint8, to_uint8
    from cdc.zoo.checkpoint import load_codec
    from cdc.zoo.pretrained import available

    coder = Coder(load_codec(available()[name]))
    rows = []
    for steps, gamma in DECODES:
        per_image = []
        for img in photos:
            enc = coder.encode(from_uint8(img), steps=steps, gamma=gamma, seed=0)
            start = time.perf_counter()
            rec = to_uint8(coder.decode(enc.data)[0])
            per_image.append({"bpp": enc.bpp, "decode_s": time.perf_counter() - start, **suite.pair(img, rec)})
        rows.append({"model": name, "steps": steps, "gamma": gamma,
                     **{k: float(np.mean([r[k] for r in per_image])) for k in per_image[0]}})
        print(f"[family-heldout] {name} {steps} step(s) γ {gamma:g}: {rows[-1]['bpp']:.3f} bpp "
              f"{rows[-1]['psnr-rgb']:.2f} dB", flush=True)
    return rows


def annotate(rows: list[dict], curves: dict[str, list[dict]], members: dict[str, tuple[float, float]]) -> dict:
    """Add each row's classical codecs at its bpp and, for ρ > 0 rows, its ST-LPIPS against the ρ = 0
    members' best decode at equal bpp; return the targets' checks."""
    for r in rows:
        r["lmbda"], r["rho"] = members[r["model"]]
        for codec, curve in curves.items():
            r[f"{codec}_psnr"] = log_interp([(p["bpp"], p["psnr-rgb"]) for p in curve], r["bpp"])
            r[f"d_{codec}"] = None if r[f"{codec}_psnr"] is None else r["psnr-rgb"] - r[f"{codec}_psnr"]
        for net in NETS if r["rho"] > 0 else ():  # WebP is judged at the perceptual members' rates only
            r[f"webp_{net}"] = log_interp([(p["bpp"], p[f"stlpips-{net}"]) for p in curves["webp"]
                                           if f"stlpips-{net}" in p], r["bpp"])
    distortion = sorted({r["model"] for r in rows if r["rho"] == 0}, key=lambda m: members[m][0])
    best = {m: max((r for r in rows if r["model"] == m), key=lambda r: r["psnr-rgb"]) for m in distortion}
    floor = {net: [(min(r["bpp"] for r in rows if r["model"] == m),
                    min(r[f"stlpips-{net}"] for r in rows if r["model"] == m)) for m in distortion] for net in NETS}
    for r in rows:
        for net in NETS:
            ref = log_interp(floor[net], r["bpp"]) if r["rho"] > 0 else None
            r[f"{net}_vs_rho0_pct"] = None if ref is None else 100 * (r[f"stlpips-{net}"] / ref - 1)
    rates = [min(r["bpp"] for r in rows if r["model"] == m) for m in distortion]
    perceptual = [r for r in rows if r["rho"] > 0]
    return {
        "jpeg_plus_0.3dB": {m: best[m]["d_jpeg"] for m in distortion},
        "gap_to_webp_db": {m: None if best[m]["webp_psnr"] is None else best[m]["webp_psnr"] - best[m]["psnr-rgb"]
                           for m in distortion},
        "rate_span": max(rates) / min(rates) if rates else None,
        "perceptual_below_webp": {f"{r['model']} {r['steps']}": {net: None if r[f"webp_{net}"] is None else
                                                                   r[f"stlpips-{net}"] < r[f"webp_{net}"]
                                                                   for net in NETS} for r in perceptual},
        "perceptual_vs_rho0_pct": {f"{r['model']} {r['steps']}": {net: r[f"{net}_vs_rho0_pct"] for net in NETS}
                                   for r in perceptual},
    }


COLUMNS = [("set", "photos"), ("model", "model"), ("decode", "decode"), ("bpp", "bpp"), ("psnr-rgb", "PSNR dB"),
           ("d_jpeg", "Δ JPEG"), ("d_webp", "Δ WebP"), ("d_avif", "Δ AVIF"), ("stlpips-alex", "ST-LPIPS-Alex"),
           ("webp_alex", "WebP's"), ("alex_vs_rho0_pct", "vs ρ = 0 %"), ("stlpips-vgg", "ST-LPIPS-VGG"),
           ("webp_vgg", "WebP's "), ("vgg_vs_rho0_pct", "vs ρ = 0 % "), ("decode_s", "decode s")]


def cell(key: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if key.startswith("d_") or key.endswith("_pct"):
        return f"{value:+.2f}" if key.startswith("d_") else f"{value:+.1f}"
    return f"{value:.3f}" if key != "psnr-rgb" else f"{value:.2f}"


def markdown(results: dict) -> str:
    """One Markdown table of every set's rows."""
    lines = ["| " + " | ".join(h.strip() for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for label, entry in results.items():
        for r in entry["rows"]:
            r = {**r, "set": f"{label.split(' (')[0]} ({entry['photos']})",
                 "decode": f"{r['steps']} step{'s' * (r['steps'] > 1)}, γ {r['gamma']:g}"}
            lines.append("| " + " | ".join(cell(k, r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", help="a shard build whose val split is the second set (default: the packages only)")
    p.add_argument("--limit", type=number(int, 0, 10**6, "an integer"), default=12, help="held-out photos (0: all)")
    p.add_argument("--models", help="comma-separated family members (default: all)")
    args = p.parse_args(argv)
    from cdc.evaluation.metrics import MetricSuite
    from cdc.zoo.pretrained import family

    members = family()
    names = args.models.split(",") if args.models else sorted(members, key=lambda m: (members[m][1], members[m][0]))
    unknown = sorted(set(names) - set(members))
    if unknown:
        p.error(f"--models: {', '.join(unknown)} not in the shipped family ({', '.join(sorted(members))})")
    if args.shards and not (Path(args.shards) / "manifest.json").is_file():
        p.error(f"--shards: {args.shards}: no shard manifest (build one: python -m shards.photocorpus)")
    suite = MetricSuite(metrics=METRICS)
    if suite.unavailable:
        raise SystemExit(f"metrics unavailable on this machine: {suite.unavailable}")
    results = {}
    for label, photos in photo_sets(args.shards, args.limit).items():
        curves = classical_curves(photos)
        rows = [row for name in names for row in code_member(name, photos, suite)]
        judge_webp(curves["webp"], photos, suite, [r["bpp"] for r in rows if members[r["model"]][1] > 0])
        checks = annotate(rows, curves, members)
        results[label] = {"photos": len(photos), "rows": rows, "checks": checks, "classical": curves}
        print(f"\n{label} ({len(photos)} photos)")
        print_table([{**r, "decode": f"{r['steps']}/{r['gamma']:g}"} for r in rows],
                    [c for c in COLUMNS if c[0] != "set"])
        print(checks)
    write_json("family-heldout", {"decodes": DECODES, "sets": results, "table": markdown(results)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
