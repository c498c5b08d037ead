"""A corpus of awkward and broken image files, made on the fly (used by codec and shard tests)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from conftest import photo
from PIL import Image


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_corpus(root: Path, size: tuple[int, int] = (96, 128)) -> dict[str, Path]:
    """Write one file per case under ``root``; returns {case: path}."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo("astronaut", size))
    other = Image.fromarray(photo("coffee", size))
    jpeg = encoded(rgb, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    # Stretched over the full 16-bit range, so clipping to 8 bits instead of scaling shows as a white image.
    gray = np.asarray(other.convert("L"), dtype=np.float64)
    gray16 = np.round((gray - gray.min()) / np.ptp(gray) * 65535).astype(np.uint16)
    cases = {
        "clean.jpg": jpeg,
        "clean.png": encoded(other, "PNG"),
        "duplicate.jpg": jpeg,
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.png": b"",
        "text.png": b"this is not an image\n",
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG", quality=90),
        "gray16.png": encoded(Image.fromarray(gray16), "PNG"),
        "rgba.png": encoded(rgb.convert("RGBA"), "PNG"),
        "palette.png": encoded(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "gray.png": encoded(rgb.convert("L"), "PNG"),
        "tiny8x8.png": encoded(rgb.resize((8, 8)), "PNG"),
        "bomb.png": bomb_png(),
        "rotated.jpg": encoded(rgb, "JPEG", quality=90, exif=exif),
    }
    paths = {}
    for name, data in cases.items():
        path = root / name
        path.write_bytes(data)
        paths[name] = path
    return paths
