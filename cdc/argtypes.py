"""argparse types that refuse bad numbers at parse time, with the accepted range in the message.

``cdc``, ``cdc eval`` and ``cdc/train.py`` share them, so every numeric option fails the same way:
``error: argument --gamma: nan is outside [0, 65.535]`` and exit status 2, never a traceback later.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def number(kind: type, low: float, high: float, what: str) -> Callable[[str], int | float]:
    """An argparse type: a ``kind`` (int or float) in [low, high]; nan and inf are refused."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:  # comparisons with nan are False: refused too
            bounds = f"[{low:g}, {high:g}]" if kind is float else f"[{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value
    return parse


STEPS = number(int, 1, 100_000, "an integer")  # DDIM steps
TRAIN_STEPS = number(int, 1, 10**9, "an integer")
COUNT = number(int, 0, 2**31, "an integer")
SEED = number(int, 0, 2**63 - 1, "an integer")  # what the bitstream and torch.Generator hold
GAMMA = number(float, 0.0, 65.535, "a number")  # the header stores gamma x 1000 in 16 bits
PIXELS = number(int, 1, 2**40, "an integer")
BATCH = number(int, 1, 4096, "an integer")
LAMBDA = number(float, 0.0, 1e6, "a number")
RHO = number(float, 0.0, 1.0, "a number")
QUALITY = number(float, 0.0, 100.0, "a number")  # a variable-rate model's quality (cdc.models.gain)
BPP = number(float, 1e-4, 64.0, "a number")  # a target rate; 24 bpp is an uncompressed RGB image


def _tile(text: str) -> str | int:
    """``--tile``: ``auto``, ``off`` or a core tile side in pixels (a multiple of 64)."""
    if text in ("auto", "off"):
        return text
    value = number(int, 64, 4096, "auto, off or an integer")(text)  # cdc.coding.tiling.MAX_TILE
    if value % 64:
        raise argparse.ArgumentTypeError(f"{text} is not a multiple of 64")
    return value
TILE = _tile
