"""Image files <-> tensors for the codec.

Tensors are (1, 3, H, W) float32 in [0, 1]; saved images are 8-bit PNGs (rounded, as CompressAI
evaluates reconstructions).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from shards.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image


class InputError(ValueError):
    """A user-supplied file cannot be used; the message starts with the file name."""


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, uint8: bool = False) -> tuple[Tensor, list[str]]:
    """Read an image file as a (1, 3, H, W) tensor in [0, 1] plus the conversions applied.

    ``max_pixels``: refuse (from the header, before decoding) images with more pixels.
    ``uint8``: return the 8-bit values (1, 3, H, W) in [0, 255] instead (a quarter of the memory;
    ``cdc.coding.coder.Coder.encode`` converts them tile by tile).

    Raises:
        InputError: ``"<path>: <reason>"`` for a missing, unreadable or non-image file.
    """
    from shards.sources import read_local_file

    path = Path(path)
    try:
        data = read_local_file(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return image_from_bytes(data, str(path), max_pixels, uint8)


def image_from_bytes(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                     uint8: bool = False) -> tuple[Tensor, list[str]]:
    """``load_image`` of a file's bytes (``name`` starts the error messages).

    The notes say what was converted (CMYK or 16-bit to 8-bit RGB, alpha over white, the first of
    several frames), as ``cdc compress`` prints them.

    Raises:
        InputError: ``"<name>: <reason>"`` for bytes that are not an image, or one over ``max_pixels``.
    """
    try:
        decoded = decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise InputError(f"{name}: {exc}") from None
    if uint8:  # decode_image returns RGB: convert() would copy the whole image once more
        rgb = np.array(decoded.image, dtype=np.uint8, copy=True)
        return torch.from_numpy(rgb).permute(2, 0, 1)[None], decoded.notes
    return pil_to_tensor(decoded.image), decoded.notes


def pil_to_tensor(image: Image.Image) -> Tensor:
    """8-bit RGB Pillow image -> (1, 3, H, W) float32 in [0, 1]."""
    return from_uint8(np.asarray(image.convert("RGB"), dtype=np.uint8))


def from_uint8(img: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """H x W x 3 uint8 -> (1, 3, H, W) float32 in [0, 1] on ``device`` (the inverse of ``to_uint8``).

    Copies: decoded images can be read-only views of Pillow's buffer, which torch refuses to wrap.
    """
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float().div_(255).to(
        device)


def to_uint8(x: Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> H x W x 3 uint8 (rounded, clamped)."""
    x = x.detach().float().cpu()
    if x.ndim == 4:
        x = x[0]
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def encode_png(x: Tensor | np.ndarray) -> bytes:
    """PNG bytes of a (1, 3, H, W) image in [0, 1] or an H x W x 3 uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(x if isinstance(x, np.ndarray) else to_uint8(x)).save(buf, format="PNG")
    return buf.getvalue()
