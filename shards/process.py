"""Turn one input image into shard samples: decode, hash, split, optional resize/patches, encode.

Every input ends as exactly one ``Record``: ``ok`` with its samples, or ``quarantined``
with a one-line reason. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field

from PIL import Image

from shards.images import DEFAULT_MAX_PIXELS, DecodedImage, ImageDecodeError, decode_image
from shards.sources import read_bytes

POLICIES = ("keep", "png", "jpeg-q95", "webp-lossless")
_KEEPABLE = {"JPEG": "jpg", "PNG": "png"}


@dataclass(frozen=True)
class BuildConfig:
    """How a corpus becomes shards.

    Attributes:
        max_count: samples per shard (upper bound).
        max_bytes: bytes of sample data per shard (upper bound; one oversized sample gets its own).
        split_val: fraction in [0, 1) of images (by content hash) assigned to the ``val`` split.
        min_side: images with a shorter side below this many pixels are quarantined.
        max_pixels: images whose header claims more pixels are quarantined before decoding.
        policy: ``keep`` (clean RGB JPEG/PNG kept byte for byte, others -> PNG), ``png``,
            ``jpeg-q95`` (clean JPEGs kept) or ``webp-lossless``.
        resize_shorter: if set, resize (Lanczos) so the shorter side is this many pixels.
        max_shorter: if set, downscale (Lanczos) images whose shorter side exceeds this many
            pixels to exactly that; smaller images are kept as they are (never upscaled).
        patch_size: if set, cut non-overlapping patch_size x patch_size patches (one sample each).
        train_scales: if set, each ``train``-split image becomes samples at each of these shorter
            sides (pixels; a side at or above the image's own gives the image at its own size, never
            upscaled), cut into ``patch_size`` patches when that is set: several scales of a 4K photo are
            many different training crops. ``val`` images follow ``max_shorter``/``resize_shorter`` and are
            never patched, so evaluation sees each held-out image once, whole. The split is decided on the
            original image, so no photo lands in both.
        chunk_size: inputs per processing task (the unit of parallelism and of resume).
    """

    max_count: int = 1000
    max_bytes: int = 512 * 2**20
    split_val: float = 0.0
    min_side: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    policy: str = "keep"
    resize_shorter: int | None = None
    max_shorter: int | None = None
    patch_size: int | None = None
    train_scales: tuple[int, ...] = ()
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.max_count < 1 or self.max_bytes < 1 or self.chunk_size < 1:
            raise ValueError("max_count, max_bytes and chunk_size must be >= 1")
        if not 0 <= self.split_val < 1:
            raise ValueError("split_val must be in [0, 1)")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")
        for name in ("resize_shorter", "max_shorter", "patch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.resize_shorter and self.max_shorter:
            raise ValueError("give resize_shorter or max_shorter, not both")
        if any(side < 1 for side in self.train_scales):
            raise ValueError("train_scales must be >= 1")
        object.__setattr__(self, "train_scales", tuple(sorted(set(self.train_scales))))

    def to_dict(self) -> dict:
        """JSON-ready fields; ``train_scales`` only when set, so manifests of earlier builds stay current."""
        fields = asdict(self)
        scales = fields.pop("train_scales")
        return {**fields, "train_scales": list(scales)} if scales else fields


@dataclass
class Sample:
    """One shard sample: ``{key}.{ext}`` image bytes plus a ``{key}.json`` record."""

    key: str
    ext: str
    data: bytes
    meta: dict

    def members(self) -> list[tuple[str, bytes]]:
        return [(f"{self.key}.{self.ext}", self.data),
                (f"{self.key}.json", json.dumps(self.meta, sort_keys=True).encode())]


@dataclass
class Record:
    """What happened to one input."""

    source: str
    status: str  # "ok" | "quarantined"
    reason: str = ""
    image_hash: str = ""
    split: str = ""
    samples: list[Sample] = field(default_factory=list)


def content_hash(image: Image.Image) -> str:
    """SHA-256 of the decoded RGB pixels and size: equal for byte-different encodings of one image."""
    h = hashlib.sha256(f"{image.width}x{image.height}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def split_of(image_hash: str, split_val: float) -> str:
    """Deterministic split by hash: the first 32 bits, read as a fraction, below ``split_val`` is val."""
    return "val" if int(image_hash[:8], 16) / 2**32 < split_val else "train"


def _encode(image: Image.Image, policy: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    if policy == "jpeg-q95":
        image.save(buf, format="JPEG", quality=95, subsampling=0)
        return "jpg", buf.getvalue()
    if policy == "webp-lossless":
        image.save(buf, format="WEBP", lossless=True)
        return "webp", buf.getvalue()
    image.save(buf, format="PNG", compress_level=6)
    return "png", buf.getvalue()


def _keep_original(decoded: DecodedImage, policy: str) -> str | None:
    ext = _KEEPABLE.get(decoded.format) if decoded.clean else None
    if policy == "keep" or (policy == "png" and ext == "png") or (policy == "jpeg-q95" and ext == "jpg"):
        return ext
    return None


def _target_shorter(image: Image.Image, cfg: BuildConfig) -> int | None:
    """The shorter side the image is resized to, or None to keep its size."""
    if cfg.max_shorter and min(image.size) > cfg.max_shorter:
        return cfg.max_shorter
    return cfg.resize_shorter


def resized(image: Image.Image, shorter: int | None) -> Image.Image:
    """``image`` resized (Lanczos) to a shorter side of ``shorter`` pixels; unchanged when None or equal."""
    if not shorter or shorter == min(image.size):
        return image
    scale = shorter / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _patches(image: Image.Image, p: int | None) -> list[tuple[tuple[int, int] | None, Image.Image]]:
    if not p:
        return [(None, image)]
    return [((r, c), image.crop((c * p, r * p, (c + 1) * p, (r + 1) * p)))
            for r in range(image.height // p) for c in range(image.width // p)]


def _pieces(image: Image.Image, cfg: BuildConfig, split: str) -> list[tuple[tuple[int, int] | None, Image.Image]]:
    if split == "train" and cfg.train_scales:
        sides = sorted({min(side, min(image.size)) for side in cfg.train_scales})
        return [piece for side in sides for piece in _patches(resized(image, side), cfg.patch_size)]
    image = resized(image, _target_shorter(image, cfg))
    return _patches(image, None if cfg.train_scales else cfg.patch_size)


def process_image(source: str, cfg: BuildConfig) -> Record:
    """Read and convert one input (never raises for bad data: it is quarantined with a reason)."""
    try:
        data = read_bytes(source)
    except OSError as exc:
        return Record(source, "quarantined", f"cannot read: {exc.strerror or exc.__class__.__name__}")
    try:
        decoded = decode_image(data, max_pixels=cfg.max_pixels, min_side=cfg.min_side)
    except ImageDecodeError as exc:
        return Record(source, "quarantined", str(exc))
    image_hash = content_hash(decoded.image)
    record = Record(source, "ok", image_hash=image_hash, split=split_of(image_hash, cfg.split_val))
    resized = _target_shorter(decoded.image, cfg) is not None or bool(cfg.train_scales)
    keep = None if resized or cfg.patch_size else _keep_original(decoded, cfg.policy)
    pieces = _pieces(decoded.image, cfg, record.split)
    if not pieces:
        return Record(source, "quarantined", f"{decoded.image.width}x{decoded.image.height} yields no "
                      f"{cfg.patch_size}x{cfg.patch_size} patch")
    for patch, image in pieces:
        if keep:
            ext, payload = keep, data
        else:
            ext, payload = _encode(image, "png" if cfg.policy == "keep" else cfg.policy)
        key = image_hash[:32] if patch is None and not resized else content_hash(image)[:32]
        meta = {"source": source, "width": image.width, "height": image.height, "image_hash": image_hash,
                "format": decoded.format, "mode": decoded.mode, "notes": decoded.notes}
        if patch is not None:
            meta["patch"] = list(patch)
        record.samples.append(Sample(key, ext, payload, meta))
    return record
