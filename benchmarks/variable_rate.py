"""One variable-rate model against the family's separate members, and its rate control.

A variable-rate model (``model.rate_lambdas``: gain units, ``cdc.models.gain``) trained over the
family's λ range codes every photo at each rate level; the shipped ρ = 0 members code the same photos,
side by side in one process, all through real bitstreams at the default decode (1 DDIM step, γ = 0).
BD-rate (PSNR) is the variable-rate curve's against the members' curve: negative is fewer bits.

Rate control (``cdc compress --bpp``): each photo is coded at each target rate; the table gives the
mean real bpp over the target and the worst photo's (over the photos whose range holds the target),
how many photos the model cannot bring that low or that high, and the encode seconds per 768 x 512
photo that the bisection costs.

Photos: the held-out (``val``) split of a shard build (``--shards``) and the held-out packages
(``shards.heldout``: scikit-learn's and pyiqa's photos, packages none of the training photos comes from).

    python benchmarks/variable_rate.py --model runs/family/small-vr-refit --shards runs/photos/shards
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import photo_sets, print_table, write_json

from cdc.argtypes import number
from cdc.coding.coder import Coder, DecodeError
from cdc.evaluation.metrics import psnr
from cdc.evaluation.rd import bd_rate
from cdc.images import from_uint8, to_uint8
from cdc.models.gain import level_lambdas
from cdc.registry.resolve import resolve_model
from cdc.zoo.checkpoint import load_codec
from cdc.zoo.pretrained import available, family

REFERENCE_PIXELS = 768 * 512
TARGETS = (0.1, 0.15, 0.2, 0.3, 0.4)


def code(coder: Coder, photos: list[np.ndarray], **rate: float) -> dict:
    """Mean real bpp and PSNR of ``photos`` through ``coder`` at the default decode (1 step, γ 0)."""
    bpp, quality = [], []
    for img in photos:
        encoded = coder.encode(from_uint8(img), steps=1, gamma=0.0, **rate)
        bpp.append(encoded.bpp)
        quality.append(psnr(img, to_uint8(coder.decode(encoded.data)[0])))
    return {"bpp": float(np.mean(bpp)), "psnr": float(np.mean(quality))}


def rate_control(coder: Coder, photos: list[np.ndarray], target: float) -> dict:
    """How close ``encode(bpp=target)`` comes on the photos whose range holds the target: real bpp over
    target (mean and lowest); the photos below the model's range (refused) and above it (coded at the
    highest level, under the target); encode seconds per 768 x 512 photo."""
    ratios, seconds, below, above = [], [], 0, 0
    top = float(coder.codec.rate_levels - 1)
    for img in photos:
        start = time.perf_counter()
        try:
            encoded = coder.encode(from_uint8(img), steps=1, gamma=0.0, bpp=target)
        except DecodeError:
            below += 1
            continue
        seconds.append((time.perf_counter() - start) * REFERENCE_PIXELS / (img.shape[0] * img.shape[1]))
        if encoded.level == top and encoded.bpp < target:
            above += 1
        else:
            ratios.append(encoded.bpp / target)
    return {"target": target, "mean_ratio": float(np.mean(ratios)) if ratios else "",
            "lowest_ratio": float(np.min(ratios)) if ratios else "", "below_range": below, "above_range": above,
            "encode_s": float(np.mean(seconds)) if seconds else ""}


def as_curve(points: list[dict]) -> dict:
    points = sorted(points, key=lambda p: p["bpp"])
    return {"results": {"bpp": [p["bpp"] for p in points], "psnr-rgb": [p["psnr"] for p in points]}}


def versus(anchor: list[dict], test: list[dict]) -> float | str:
    """BD-rate % of ``test`` against ``anchor`` (PSNR), or why there is none (curves that do not overlap
    or do not rise with rate)."""
    try:
        return bd_rate(as_curve(anchor), as_curve(test))
    except ValueError as exc:
        return f"none: {exc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the variable-rate model (path, shipped name, models:/...)")
    parser.add_argument("--shards", help="a shard build whose val split is held out (e.g. runs/photos/shards)")
    parser.add_argument("--limit", type=number(int, 0, 10**6, "an integer"), default=0, help="held-out photos (0: all)")
    parser.add_argument("--levels-per-step", type=number(int, 1, 16, "an integer"), default=2,
                        help="rate levels coded per trained level (2: 0, 0.5, 1, ...)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        codec = load_codec(resolve_model(args.model)).eval()
    except (LookupError, OSError, ValueError) as exc:  # no such model, or not a codec checkpoint
        parser.error(f"--model: {exc}")
    if not codec.rate_levels:
        parser.error(f"--model: {args.model} is a fixed-rate model (no model.rate_lambdas)")
    if args.shards and not (Path(args.shards) / "manifest.json").is_file():
        parser.error(f"--shards: {args.shards}: no shard manifest (build one: python -m shards.photocorpus)")
    lambdas = codec.config.model.rate_lambdas
    members = sorted((n for n, (_, rho) in family().items() if rho == 0), key=lambda n: -family()[n][0])
    coder = Coder(codec)
    levels = [i / args.levels_per_step for i in range((len(lambdas) - 1) * args.levels_per_step + 1)]
    rows, control, summary = [], [], []
    for label, photos in photo_sets(args.shards, args.limit).items():
        print(label, flush=True)
        separate = []
        for name in members:
            separate.append({"set": label, "model": name, "lmbda": family()[name][0],
                             **code(Coder(load_codec(available()[name])), photos)})
            print(separate[-1], flush=True)
        variable = []
        for level in levels:
            lmbda = float(level_lambdas(lambdas, torch.tensor([level]))[0])
            variable.append({"set": label, "model": f"variable, level {level:g}", "level": level, "lmbda": lmbda,
                             **code(coder, photos, level=level)})
            print(variable[-1], flush=True)
        rows += separate + variable
        summary.append({"photos": f"{label} ({len(photos)})", "bd_rate": versus(separate, variable),
                        "members_bpp": f"{min(p['bpp'] for p in separate):.3f}-{max(p['bpp'] for p in separate):.3f}",
                        "variable_bpp": f"{min(p['bpp'] for p in variable):.3f}-{max(p['bpp'] for p in variable):.3f}"})
        for target in TARGETS:
            control.append({"photos": label, **rate_control(coder, photos, target)})
            print(control[-1], flush=True)
    print(f"\n{args.model}: {len(lambdas)} levels at λ {', '.join(f'{v:g}' for v in lambdas)}; members "
          f"{', '.join(members)}")
    points = print_table(rows, [("set", "photos"), ("model", "model"), ("lmbda", "λ"), ("bpp", "bpp"),
                                ("psnr", "PSNR dB")])
    table = print_table(summary, [("photos", "photos"), ("bd_rate", "BD-rate % vs the members (PSNR)"),
                                  ("members_bpp", "members' bpp"), ("variable_bpp", "variable model's bpp")])
    control_table = print_table(control, [("photos", "photos"), ("target", "target bpp"),
                                          ("mean_ratio", "real / target, mean"), ("lowest_ratio", "lowest"),
                                          ("below_range", "photos below its range"),
                                          ("above_range", "above it"), ("encode_s", "encode s / 768x512")])
    write_json("variable-rate", {"args": vars(args), "rate_lambdas": list(lambdas), "members": members,
                                 "rows": rows, "summary": summary, "rate_control": control, "points": points,
                                 "table": table, "control_table": control_table,
                                 "goal": "ship if the BD-rate against the separate members is within 3 %"})


if __name__ == "__main__":
    main()
