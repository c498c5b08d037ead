"""Classical codecs through the same harness: JPEG, WebP, AVIF (Pillow), JPEG XL, JPEG 2000
(imagecodecs), HEIC (pillow-heif), each swept over its quality knob; CompressAI zoo models where
their weights are in the torch hub cache.

Every baseline maps an H x W x 3 uint8 image and a quality to the bytes of a real file, and the
bytes back to pixels, so bpp is always measured on what would be stored.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Baseline:
    """A codec swept over ``qualities`` (ordered so that bpp increases).

    ``version`` names the libraries that make its bytes (the baseline results cache is keyed by it).
    """

    name: str
    description: str
    qualities: tuple[float, ...]
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    version: str = ""


def _pillow_version(codec: str) -> str:
    import PIL
    from PIL import features

    return f"Pillow {PIL.__version__} {codec} {features.version(codec)}"


def _imagecodecs_version() -> str:
    import imagecodecs

    return f"imagecodecs {imagecodecs.__version__}"


def _pil_encode(fmt: str, **extra) -> Callable[[np.ndarray, float], bytes]:
    def encode(img: np.ndarray, quality: float) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, quality=int(quality), **extra)
        return buf.getvalue()

    return encode


def _pil_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _heic() -> Baseline:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return Baseline("HEIC", "HEIC (pillow-heif, libheif/x265)", (10, 30, 50, 70, 85, 95),
                    _pil_encode("HEIF"), _pil_decode, f"pillow-heif {pillow_heif.__version__} libheif "
                    f"{pillow_heif.libheif_version()}")


def _jxl() -> Baseline:
    import imagecodecs

    # distance: 0 = lossless ... 15; larger distance means fewer bits, so sweep it downwards
    return Baseline("JPEG XL", "JPEG XL (imagecodecs, libjxl), distance sweep", (8.0, 5.0, 3.0, 2.0, 1.0, 0.5),
                    lambda img, d: imagecodecs.jpegxl_encode(img, distance=d),
                    lambda data: np.asarray(imagecodecs.jpegxl_decode(data))[..., :3], _imagecodecs_version())


def _jp2() -> Baseline:
    import imagecodecs

    # level = PSNR target in dB for OpenJPEG's quality mode
    return Baseline("JPEG 2000", "JPEG 2000 (imagecodecs, OpenJPEG), PSNR-target sweep",
                    (24, 27, 30, 33, 36, 40),
                    lambda img, q: imagecodecs.jpeg2k_encode(img, level=q, codecformat="j2k"),
                    lambda data: np.asarray(imagecodecs.jpeg2k_decode(data))[..., :3], _imagecodecs_version())


BUILDERS: dict[str, Callable[[], Baseline]] = {
    "jpeg": lambda: Baseline("JPEG", "JPEG (Pillow, libjpeg-turbo, 4:2:0)", (5, 10, 20, 35, 50, 75, 90),
                             _pil_encode("JPEG"), _pil_decode, _pillow_version("jpg")),
    "webp": lambda: Baseline("WebP", "WebP (Pillow, libwebp, lossy)", (5, 10, 20, 35, 50, 75, 90),
                             _pil_encode("WEBP", lossless=False, method=6), _pil_decode, _pillow_version("webp")),
    "avif": lambda: Baseline("AVIF", "AVIF (Pillow native, libavif)", (5, 15, 30, 45, 60, 75, 90),
                             _pil_encode("AVIF"), _pil_decode, _pillow_version("avif")),
    "jxl": _jxl,
    "jp2": _jp2,
    "heic": _heic,
}

ZOO = ("bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor")


def build_baseline(name: str) -> Baseline:
    """A classical baseline by short name (``jpeg, webp, avif, jxl, jp2, heic``)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown baseline {name!r} ({', '.join(BUILDERS)}, or zoo:<arch>)")
    return BUILDERS[name]()


def zoo_weights(arch: str, quality: int) -> Path:
    """Where the CompressAI zoo expects the MSE weights of ``arch`` at ``quality``."""
    import torch
    from compressai.zoo.image import model_urls

    url = model_urls[arch]["mse"][quality]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def zoo_baseline(arch: str) -> Baseline:
    """A CompressAI zoo model over the qualities whose weights are present (real rANS bitstreams).

    Raises:
        FileNotFoundError: no weights for any quality (names the file to provide).
    """
    import torch
    from compressai.zoo import image_models

    qualities = tuple(q for q in range(1, 9) if zoo_weights(arch, q).is_file())
    if not qualities:
        raise FileNotFoundError(f"CompressAI zoo {arch}: no weights, e.g. {zoo_weights(arch, 1)}")
    models: dict[int, torch.nn.Module] = {}

    def model(q: int) -> torch.nn.Module:
        if q not in models:
            models[q] = image_models[arch](quality=q, metric="mse", pretrained=True).eval()
        return models[q]

    state: dict[str, object] = {}

    def encode(img: np.ndarray, q: float) -> bytes:
        from compressai.ops import compute_padding

        from cdc.images import from_uint8

        x = from_uint8(img)
        pad, unpad = compute_padding(x.shape[-2], x.shape[-1], min_div=64)
        with torch.no_grad():
            out = model(int(q)).compress(torch.nn.functional.pad(x, pad))
        state.update(q=int(q), shape=out["shape"], unpad=unpad)
        parts = [s[0] for s in out["strings"]]
        header = np.array([len(p) for p in parts], dtype=np.uint32).tobytes()
        return len(parts).to_bytes(1, "big") + header + b"".join(parts)

    def decode(data: bytes) -> np.ndarray:
        n = data[0]
        lengths = np.frombuffer(data[1 : 1 + 4 * n], dtype=np.uint32)
        parts, pos = [], 1 + 4 * n
        for length in lengths:
            parts.append([data[pos : pos + length]])
            pos += int(length)
        with torch.no_grad():
            x = model(state["q"]).decompress(parts, state["shape"])["x_hat"]
        x = torch.nn.functional.pad(x, state["unpad"]).clamp(0, 1)
        return (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    return Baseline(f"CompressAI {arch}", f"CompressAI zoo {arch} (MSE), pretrained weights", qualities, encode, decode)
