"""Peak memory vs image size: whole-image coding against tile-by-tile coding (``--tile``).

Every measurement is ``cdc compress`` or ``cdc decompress`` (the user's path, one DDIM step:
memory does not depend on the step count) in a fresh child process; its peak RSS comes from the
kernel (``wait4``), so one size cannot inherit another's heap. Both modes run in the same
invocation; whole-image coding is skipped above ``--whole-max`` pixels (the growth is already
clear and it would need tens of GB). Bits and PSNR of both modes are compared on the same photo
(scikit-learn's ``china.jpg`` resized: smooth when enlarged, so absolute numbers flatter the codec;
the tiled-vs-whole difference is the point).

    python benchmarks/tiling.py [--model small-base] [--sizes 512,1024,2048,4096] [--tile 768]
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

import numpy as np
from common import photo, print_table, write_json
from PIL import Image

CHILD = "--child"


def child(argv: list[str]) -> None:
    """Run one ``cdc`` command in this (fresh) process; print its wall time as JSON."""
    from cdc.cli import main

    start = time.perf_counter()
    code = main(argv)
    print(json.dumps({"seconds": time.perf_counter() - start, "code": code}))


def measure(argv: list[str]) -> dict:
    """Run ``cdc ARGV`` in a child process; returns seconds and peak RSS (MB) from ``wait4``."""
    proc = subprocess.Popen([sys.executable, __file__, CHILD, *argv], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 and out.strip() else {}
    if result.get("code") != 0:
        raise SystemExit(f"cdc {' '.join(argv)} failed (exit {proc.returncode})")
    return {"seconds": result["seconds"], "rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss is in KiB on Linux


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small-base", help="checkpoint or shipped model name")
    p.add_argument("--sizes", default="512,1024,2048,4096", help="square image sides in pixels")
    p.add_argument("--tile", type=int, default=768, help="tile side for the tiled mode")
    p.add_argument("--whole-max", type=int, default=2048 * 2048, help="largest image coded whole (pixels)")
    p.add_argument("--json", default="tiling", help="name of the JSON written under benchmarks/results/")
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        idle = measure(["init", "--from", args.model, "-o", str(tmp / "copy")])  # torch + the model, no image
        rows.append({"mode": "load the model only", "encode_rss_mb": idle["rss_mb"], "decode_rss_mb": idle["rss_mb"]})
        for side in [int(s) for s in args.sizes.split(",")]:
            src = tmp / f"photo-{side}.png"
            original = (photo(side, side)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(original).save(src)
            for mode in ("off", str(args.tile)):
                row = {"side": side, "megapixels": side * side / 1e6, "mode": "whole" if mode == "off" else
                       f"tiles of {args.tile}"}
                if mode == "off" and side * side > args.whole_max:
                    rows.append({**row, "note": f"not run (over --whole-max {args.whole_max})"})
                    continue
                cdc_file, png = tmp / f"{side}-{mode}.cdc", tmp / f"{side}-{mode}.png"
                enc = measure(["compress", str(src), "-m", args.model, "-o", str(cdc_file), "--steps", "1",
                               "--tile", mode])
                dec = measure(["decompress", str(cdc_file), "-m", args.model, "-o", str(png)])
                decoded = np.asarray(Image.open(png).convert("RGB"))
                header = json.loads(subprocess.run([sys.executable, "-m", "cdc", "info", str(cdc_file)],
                                                   capture_output=True, text=True, check=True).stdout)
                rows.append({**row, "encode_rss_mb": enc["rss_mb"], "decode_rss_mb": dec["rss_mb"],
                             "encode_s": enc["seconds"], "decode_s": dec["seconds"],
                             "bpp": header["bpp"], "psnr": psnr(decoded, original)})
                print(f"{side}² {row['mode']}: {rows[-1]['decode_rss_mb']:.0f} MB decode peak", file=sys.stderr)
    base = {r["side"]: r for r in rows if r["mode"] == "whole" and "bpp" in r}
    for r in rows:
        if r["mode"] != "whole" and r.get("side") in base and "bpp" in r:
            r["bpp_vs_whole"] = r["bpp"] / base[r["side"]]["bpp"]
            r["psnr_vs_whole"] = r["psnr"] - base[r["side"]]["psnr"]
    table = print_table(rows, [("side", "side px"), ("megapixels", "MP"), ("mode", "mode"),
                               ("encode_rss_mb", "encode peak RSS MB"), ("decode_rss_mb", "decode peak RSS MB"),
                               ("encode_s", "encode s"), ("decode_s", "decode s (1 step)"), ("bpp", "bpp"),
                               ("psnr", "PSNR dB"), ("bpp_vs_whole", "bpp / whole"),
                               ("psnr_vs_whole", "ΔPSNR vs whole"), ("note", "note")])
    write_json(args.json, {"model": args.model, "tile": args.tile, "rows": rows, "table": table})


if __name__ == "__main__":
    main()
