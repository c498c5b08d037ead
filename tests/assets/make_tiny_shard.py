"""Regenerate tests/assets/tiny-shard: 16 real-photo crops (scikit-image's wheel) as one JPEG shard.

    python tests/assets/make_tiny_shard.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image
from skimage import data

from shards.build import build
from shards.process import BuildConfig

OUT = Path(__file__).with_name("tiny-shard")
SRC = Path("/tmp/cdc-tiny-shard-photos")  # a fixed path: sources are recorded in the samples
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def main() -> None:
    shutil.rmtree(SRC, ignore_errors=True)
    SRC.mkdir(parents=True)
    for name in PHOTOS:
        img = Image.fromarray(getattr(data, name)())
        for i in range(4):
            box = (i * 60, i * 40, i * 60 + 96, i * 40 + 96)
            img.crop(box).save(SRC / f"{name}-{i}.png")
    shutil.rmtree(OUT, ignore_errors=True)
    build([str(SRC)], OUT, BuildConfig(max_count=100, policy="jpeg-q95"))
    shutil.rmtree(SRC)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
