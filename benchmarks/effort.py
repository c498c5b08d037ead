"""Encoder effort (``cdc compress --effort N``): bits saved at equal quality and encode seconds per
768x512 photo, for each level, beside effort 0, in one process.

Every shipped ρ = 0 family member codes every photo at every level through real bitstreams and is
decoded with its default decode; per level, the family's mean (bpp, PSNR) points form one curve,
and its BD-rate (PSNR) against the level-0 curve is the rate saved at equal quality. Photos: the
held-out (``val``) split of a shard build (``--shards``, e.g. the photo corpus's), and the held-out
packages (``shards.heldout``: packages none of the family's training photos comes from).

    python benchmarks/effort.py --shards DIR [--limit 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import photo_sets, print_table, write_json

from cdc.argtypes import number
from cdc.coding.coder import Coder
from cdc.coding.refine import EFFORTS
from cdc.evaluation.metrics import psnr
from cdc.evaluation.rd import bd_rate
from cdc.images import from_uint8, to_uint8
from cdc.limits import MAX_EFFORT
from cdc.zoo.checkpoint import load_codec
from cdc.zoo.pretrained import available, family

REFERENCE_PIXELS = 768 * 512


def measure(coders: dict[str, Coder], photos: list[np.ndarray]) -> list[dict]:
    """One row per (member, effort): mean bpp and PSNR, encode seconds scaled to 768x512."""
    rows = []
    for name, coder in coders.items():
        for effort in range(MAX_EFFORT + 1):
            bpp, quality, seconds = [], [], []
            for img in photos:
                x = from_uint8(img)
                start = time.perf_counter()
                data = coder.encode(x, effort=effort).data
                seconds.append((time.perf_counter() - start) * REFERENCE_PIXELS / (img.shape[0] * img.shape[1]))
                bpp.append(8 * len(data) / (img.shape[0] * img.shape[1]))
                quality.append(psnr(img, to_uint8(coder.decode(data)[0])))
            rows.append({"member": name, "effort": effort, "iterations": EFFORTS[effort], "bpp": float(np.mean(bpp)),
                         "psnr": float(np.mean(quality)), "encode_s": float(np.mean(seconds))})
            print(rows[-1], flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per effort level: BD-rate against level 0 over the members, and the mean encode seconds."""
    def curve(effort: int) -> dict:
        points = sorted((r["bpp"], r["psnr"]) for r in rows if r["effort"] == effort)
        return {"results": {"bpp": [p[0] for p in points], "psnr-rgb": [p[1] for p in points]}}

    out = []
    for effort in range(MAX_EFFORT + 1):
        level = [r for r in rows if r["effort"] == effort]
        out.append({"effort": effort, "iterations": EFFORTS[effort],
                    "bd_rate": 0.0 if effort == 0 else bd_rate(curve(0), curve(effort)),
                    "encode_s": float(np.mean([r["encode_s"] for r in level]))})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="a shard build whose val split is held out (e.g. the photo corpus)")
    parser.add_argument("--limit", type=number(int, 0, 10**6, "an integer"), default=8, help="held-out photos (0: all)")
    parser.add_argument("--threads", type=number(int, 1, 1024, "an integer"), default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    members = sorted((n for n, (_, rho) in family().items() if rho == 0), key=lambda n: family()[n][0])
    coders = {name: Coder(load_codec(available()[name])) for name in members}
    results = {"threads": args.threads, "members": members, "sets": {}}
    summary = []
    for label, photos in photo_sets(args.shards, args.limit).items():
        rows = measure(coders, photos)
        results["sets"][label] = {"photos": len(photos), "rows": rows}
        summary += [{"photos": f"{label} ({len(photos)})", **level} for level in summarise(rows)]
    print(f"\n{len(members)} members ({', '.join(members)}), {args.threads} threads")
    results["table"] = print_table(summary, [("photos", "photos"), ("effort", "effort"), ("iterations", "iterations"),
                                             ("bd_rate", "BD-rate % (PSNR)"), ("encode_s", "encode s / 768x512")])
    write_json("effort", results)


if __name__ == "__main__":
    main()
