"""Decode any image file to clean 8-bit RGB, or say exactly why it cannot be.

Used by the shard builder (every input is fully decoded, not just ``verify()``-ed) and by the
codec's CLI, so both treat odd inputs the same way:

* EXIF orientation is applied;
* grayscale, palette and CMYK become RGB; alpha (LA, RGBA, PA, palette transparency) is
  composited over white; 16-bit samples are scaled to 8 bits; of a multi-frame file (GIF, APNG,
  TIFF) the first frame is used — each of these is reported in ``notes`` (the CLI warns);
* a header claiming more than ``max_pixels`` pixels is refused before decoding (bomb guard).
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 16384 * 16384
_PILLOW_GUARD = threading.Lock()


@contextlib.contextmanager
def _explicit_limit() -> Iterator[None]:
    """Pillow's own bomb guard (a process-wide setting) off for one ``Image.open`` only: we apply
    ``max_pixels`` ourselves, which may be above Pillow's limit. Every other Pillow call in the
    process keeps Pillow's guard."""
    with _PILLOW_GUARD:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image, or violate a size limit."""


@dataclass
class DecodedImage:
    """An image as clean RGB.

    Attributes:
        image: 8-bit RGB Pillow image, EXIF orientation applied.
        format: the container format Pillow detected (``JPEG``, ``PNG``, ...).
        mode: the original Pillow mode (``RGB``, ``CMYK``, ``I;16``, ...).
        notes: human-readable conversions that were applied (empty for clean RGB).
    """

    image: Image.Image
    format: str
    mode: str
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when the input was already plain 8-bit RGB in its stored orientation."""
        return not self.notes


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        notes.append("palette image converted to RGB")
        return _to_rgb(img, notes) if img.mode == "RGBA" else img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append("alpha channel composited over white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("1", "L"):
        notes.append("grayscale image converted to RGB")
        return img.convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if not np.isfinite(arr).all():
            arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
            notes.append("non-finite samples (NaN/inf) set to 0")
        peak = arr.max(initial=0)
        if mode == "F":
            arr = arr * 255 if peak <= 1.0 else arr  # float images are [0, 1] or [0, 255]
        elif peak > 255:
            arr = arr / 257  # 16-bit: 65535 -> 255
        gray = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        notes.append(f"{mode} image scaled to 8-bit RGB")
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
        return img.convert("RGB")
    notes.append(f"{mode} image converted to RGB")
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> DecodedImage:
    """Fully decode ``data`` to 8-bit RGB.

    Args:
        data: the encoded file's bytes.
        max_pixels: refuse images whose header claims more pixels than this (before decoding).
        min_side: refuse images whose shorter side (after EXIF rotation) is below this, pixels.

    Raises:
        ImageDecodeError: with a one-line reason (empty, not an image, truncated, too large, ...).
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with _explicit_limit():
            img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except Exception as exc:  # malformed headers raise a zoo of exception types
        raise ImageDecodeError(f"unreadable image header ({exc})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"header claims {width}x{height} pixels, over the limit of {max_pixels}")
    fmt, mode = img.format or "unknown", img.mode
    notes: list[str] = []
    if any(";16" in str(tile.args) for tile in getattr(img, "tile", None) or ()):
        notes.append(f"16-bit {mode} samples reduced to 8 bits")  # Pillow decodes them to 8 bits itself
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"{frames} frames: only the first is used")
    # some plugins (GIF, BLP, ...) repeat Pillow's check while loading: lift it there too, but only
    # for the rare image above Pillow's own limit that passed ours
    above_pillow = width * height > (Image.MAX_IMAGE_PIXELS or width * height)
    try:
        if fmt == "PNG":  # the PNG decoder reads IDAT without its CRCs: a flipped byte decodes as other pixels
            with _explicit_limit():
                Image.open(io.BytesIO(data)).verify()
        with _explicit_limit() if above_pillow else contextlib.nullcontext():
            img.load()
    except Exception as exc:
        raise ImageDecodeError(f"truncated or corrupt {fmt} data ({exc})") from None
    if _has_rotation(img):
        img = ImageOps.exif_transpose(img)
        notes.append("EXIF orientation applied")
    img = _to_rgb(img, notes)
    if min(img.size) < min_side:
        raise ImageDecodeError(f"{img.size[0]}x{img.size[1]} is smaller than the minimum side {min_side}")
    return DecodedImage(image=img, format=fmt, mode=mode, notes=notes)


def _has_rotation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) in range(2, 9)  # 1 and invalid values (0, 9, ...) change nothing
    except Exception:  # broken EXIF blocks must not fail an otherwise valid image
        return False
