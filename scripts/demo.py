"""Codec demo: compress and decompress a real photo with the `cdc` CLI.

The photo ships inside scikit-image's wheel. The model is an UNTRAINED `small` codec (training
arrives with `cdc/train.py`), so the reconstruction is noise: the demo shows the real bitstream,
the CLI and the decode path, not image quality.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

OUT = Path("runs/demo-codec")


def cdc(*args: str) -> None:
    print("$ cdc", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "cdc", *args], check=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    photo = OUT / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    cdc("init", "--preset", "small", "-o", str(OUT / "model"))
    print("!! NOTE: this model is UNTRAINED; reconstructions are not meaningful yet.", flush=True)
    cdc("compress", str(photo), "-m", str(OUT / "model"), "-o", str(OUT / "astronaut.cdc"))
    cdc("info", str(OUT / "astronaut.cdc"))
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        cdc("decompress", str(OUT / "astronaut.cdc"), "-m", str(OUT / "model"), "-o",
            str(OUT / f"astronaut-{precision}.png"), "--precision", precision)
        print(f"decode ({precision}): {time.perf_counter() - start:.1f} s including start-up", flush=True)
    a = np.asarray(Image.open(photo), dtype=np.float64)
    b = np.asarray(Image.open(OUT / "astronaut-fp32.png"), dtype=np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    size = (OUT / "astronaut.cdc").stat().st_size
    print(f"\n{photo}: {a.shape[1]}x{a.shape[0]} -> {size} bytes = {8 * size / (a.shape[0] * a.shape[1]):.4f} bpp, "
          f"PSNR {psnr:.2f} dB (untrained model)\noutputs in {OUT}/")


if __name__ == "__main__":
    main()
