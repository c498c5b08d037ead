"""Rate control for variable-rate models: the file of the highest rate level under a target bpp.

A variable-rate model (``cdc.models.gain``) codes at any real rate level in [0, L - 1], and its
files grow with the level. ``encode_at_bpp`` bisects over the level on *real* files (header and
entropy coder included), so the result is what ``cdc compress --bpp`` promises: at most the target,
as close below it as the header's 1e-3 level precision allows, or within 1 %. Each step is one
encode (about 0.1 s per 768 x 512 photo for ``small`` on 2 CPU cores).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

RATE_SEARCH_STEPS = 12
"""Encodes of one search beyond the two ends of the range: the level interval halves each time, to
1/4096 of the range (1e-3 of a level, the header's precision, for five levels)."""
CLOSE_ENOUGH = 0.99
"""A file of at least this share of the target ends the search."""


class RateError(ValueError):
    """A target rate that is not a positive number, or below what the model can reach for an image."""


class Coded(Protocol):
    """What an encode returns: its real bits per pixel (``cdc.coding.coder.Encoded``)."""

    bpp: float


def encode_at_bpp(encode: Callable[[float], Coded], target: float, top: float) -> Coded:
    """The encode of the highest rate level in [0, ``top``] whose real bpp is at most ``target``.

    Args:
        encode: codes the image at a rate level (its rate grows with the level).
        target: bits per pixel, > 0.
        top: the highest rate level (L - 1).

    Returns:
        The encode at ``top`` when even that is under ``target``; else the bisection's best.

    Raises:
        RateError: ``target`` is not a positive number, or the lowest level's file is over it (the
            message gives the rate the model can reach).
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not (math.isfinite(target) and target > 0):
        raise RateError(f"target bpp must be a positive number, got {target!r}")
    low, high = 0.0, float(top)
    best = encode(high)
    if best.bpp <= target:
        return best
    best = encode(low)
    if best.bpp > target:
        raise RateError(f"{target:g} bpp is below this model's lowest rate for this image ({best.bpp:.4f} bpp "
                        "at quality 0)")
    for _ in range(RATE_SEARCH_STEPS):
        middle = round((low + high) / 2, 3)
        if best.bpp >= CLOSE_ENOUGH * target or middle in (low, high):
            break
        encoded = encode(middle)
        if encoded.bpp <= target:
            low, best = middle, encoded
        else:
            high = middle
    return best
