"""What one image or one ``.cdc`` file may make the codec do: the limits every entry point applies.

The command line, the HTTP service and the Python API (``cdc.coding.coder.Coder``) code through the
same ``CodecLimits``; a stranger's file or image must not set the cost of decoding it. Pixel
limits count the pixels that are coded (the image padded to a multiple of 64); whole-image
(untiled) coding is bounded separately because its memory grows with the image, while tiled coding
keeps memory per tile.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

WHOLE_IMAGE_MAX_PIXELS = 4096 * 4096
"""Padded pixels of an untiled image: above this, whole-image coding needs ~27 GB (``small``, CPU)."""
MAX_DECODE_STEPS = 256
"""DDIM steps a file may ask for (the paper's sweeps stop at 129)."""
MAX_EFFORT = 3
"""Highest encoder effort level (``cdc compress --effort``, ``cdc.coding.refine``): level 3 spends
about 300 refinement iterations per image."""
MAX_PIXELS = 16384 * 16384
"""Pixels of an image to encode, or that a file's header claims (the image itself is 3 B a pixel)."""
SERVICE_MAX_PIXELS = 64 * 2**20
"""The HTTP service's pixel limit: one request's image held in memory by a server shared by many."""


class LimitError(ValueError):
    """An image or file that asks for more than a ``CodecLimits`` allows."""


@dataclass(frozen=True)
class CodecLimits:
    """Bounds on one coding job; ``None`` lifts a bound.

    Attributes:
        max_pixels: image pixels (encode) or pixels a header claims (decode), >= 1.
        max_steps: DDIM steps a file's header may ask for (a caller's own ``steps`` overrides the
            header and is bounded by its caller), >= 1.
        max_whole_pixels: padded pixels of an image coded as one tile (untiled); memory grows with
            them (about 1 KB a pixel for the ``small`` preset on the CPU).
    """

    max_pixels: int | None = MAX_PIXELS
    max_steps: int | None = MAX_DECODE_STEPS
    max_whole_pixels: int | None = WHOLE_IMAGE_MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_steps", "max_whole_pixels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")

    def with_(self, **changes: int | None) -> CodecLimits:
        """These limits with some replaced (``None`` values in ``changes`` keep the current ones)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


DEFAULT_LIMITS = CodecLimits()
"""The CLI's defaults and the Python API's (``cdc compress``/``decompress`` ``--max-*`` flags change them)."""
UNLIMITED = CodecLimits(None, None, None)
"""No bounds: for trusted inputs only (a process's own files)."""
