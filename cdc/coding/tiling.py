"""Tile-by-tile coding of large images: memory bounded by the tile, not by the image.

Whole-image coding keeps every activation of g_a and the U-Net at full resolution (about 1 KB per
pixel for the ``small`` preset on the CPU: 1.7 GB to decode 1024²). Tiled coding splits the
64-padded image into square *core* tiles of ``tile`` pixels (the last row and column keep what is
left, a multiple of 64) and codes each core independently::

       ◄──── tile ────►
      ┌───────────────┬───────────────┬──────┐    encode: g_a sees core + margin (context),
      │ core (0,0)  ┌─┼─┐ core (0,1)  │ (0,2)│    y is cropped to the core, each core's y gets
      │             │ │ │             │      │    its own hyper-latent z and strings
      ├─────────────┼─┼─┼─────────────┼──────┤    decode: the U-Net runs on core + margin with y
      │ (1,0)       └─┼─┘ ◄ 2·margin ►│      │    from the neighbours; overlaps are blended
      └───────────────┴───────────────┴──────┘    with linear ramps that sum to one

Everything a decoder needs to reproduce the tiling (``tile``, ``margin``) is in the bitstream;
the start noise is drawn per 64-pixel block from the header's seed, so overlapping tiles start
from the same noise and a file decodes identically whatever order or device runs it. Rows of
output are emitted as soon as no later tile touches them: peak memory is one tile's activations
plus a strip of ``tile + 2·margin`` rows and the image itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from cdc.limits import WHOLE_IMAGE_MAX_PIXELS

if TYPE_CHECKING:
    from cdc.models.codec import Refine

DEFAULT_TILE = 768  # px: a 896² decode window needs ~1.4 GB for the small preset on the CPU
DEFAULT_MARGIN = 64  # px on each side: g_a context when encoding, the blend band when decoding
AUTO_TILE_PIXELS = 4 * DEFAULT_TILE**2  # ``--tile auto`` tiles images larger than this (2.4 MP)
MAX_TILE = 4096  # px: the largest core tile (a tile is coded as one image: the same bound)
CODING_MULTIPLE = 64  # images are coded padded to this multiple: limits count the padded pixels
NOISE_BLOCK = 64  # px: the start noise is drawn per block so that overlapping tiles agree

RowSink = Callable[[int, Tensor], None]
"""``sink(row0, rows)``: rows (3, n, W) of the final image in [0, 1] (unclamped), top to bottom."""


class TilingError(ValueError):
    """Tile parameters the format or the decoder cannot use."""


@dataclass(frozen=True)
class Box:
    """A pixel rectangle [r0, r1) x [c0, c1) of the padded image."""

    r0: int
    r1: int
    c0: int
    c1: int

    def latent(self) -> Box:
        """The same rectangle in y's coordinates (1/16; every edge here is a multiple of 16)."""
        return Box(self.r0 // 16, self.r1 // 16, self.c0 // 16, self.c1 // 16)


@dataclass(frozen=True)
class TileGrid:
    """The tiling of an ``height`` x ``width`` image (pixels) padded to ``multiple`` (64).

    Args:
        tile: core tile side in pixels, a multiple of 64 and at least ``2 * margin``.
        margin: overlap on each side in pixels, a multiple of 16 in [0, 64] (the smallest core
            tile is 64 px: a larger margin would not fit the blend band).
    """

    height: int
    width: int
    tile: int
    margin: int = DEFAULT_MARGIN
    multiple: int = 64

    def __post_init__(self) -> None:
        if self.tile < 64 or self.tile % 64:
            raise TilingError(f"tile must be a positive multiple of 64 pixels, got {self.tile}")
        if not 0 <= self.margin <= 64 or self.margin % 16:
            raise TilingError(f"tile margin must be 0, 16, 32, 48 or 64 pixels, got {self.margin}")
        if self.tile < 2 * self.margin:
            raise TilingError(f"tile {self.tile} is smaller than twice the margin {self.margin}")

    @property
    def padded(self) -> tuple[int, int]:
        m = self.multiple
        return math.ceil(self.height / m) * m, math.ceil(self.width / m) * m

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        hp, wp = self.padded
        return math.ceil(hp / self.tile), math.ceil(wp / self.tile)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rows, cols = self.shape
        return ((r, c) for r in range(rows) for c in range(cols))

    def core(self, r: int, c: int) -> Box:
        hp, wp = self.padded
        t = self.tile
        return Box(r * t, min((r + 1) * t, hp), c * t, min((c + 1) * t, wp))

    def window(self, r: int, c: int) -> Box:
        """The core plus ``margin`` on every side that is not the image's edge."""
        hp, wp = self.padded
        k, m = self.core(r, c), self.margin
        return Box(max(k.r0 - m, 0), min(k.r1 + m, hp), max(k.c0 - m, 0), min(k.c1 + m, wp))

    def ramp(self, index: int, count: int, start: int, stop: int) -> Tensor:
        """Blend weights along one axis of a window [start, stop): linear over the 2·margin band
        shared with each neighbour, so that the weights of overlapping windows sum to one."""
        w = torch.ones(stop - start)
        band = 2 * self.margin
        if band:
            up = (torch.arange(band) + 0.5) / band
            if index > 0:
                w[:band] = up
            if index < count - 1:
                w[-band:] = up.flip(0)
        return w


def choose_tile(spec: str | int, height: int, width: int) -> int | None:
    """The tile side for ``--tile`` ``spec`` (``auto``, ``off`` or pixels); ``None`` = whole image.

    ``auto`` tiles images over ``AUTO_TILE_PIXELS`` with ``DEFAULT_TILE`` and codes smaller
    ones whole (as the paper evaluates them); raises ``TilingError`` for whole-image coding
    over ``WHOLE_IMAGE_MAX_PIXELS`` and for tiles over ``MAX_TILE``. Both count the pixels
    that are coded: the image padded to a multiple of 64 (a 1×100000 image codes 64×100032).
    """
    pixels = coded_pixels(height, width)
    if spec == "auto":
        return DEFAULT_TILE if pixels > AUTO_TILE_PIXELS else None
    if spec == "off":
        if pixels > WHOLE_IMAGE_MAX_PIXELS:
            raise TilingError(f"{width}x{height} codes {pixels} padded pixels, over the whole-image limit of "
                              f"{WHOLE_IMAGE_MAX_PIXELS} (memory grows with pixels): use --tile auto or --tile N")
        return None
    if int(spec) > MAX_TILE:
        raise TilingError(f"tile {spec} is over the limit of {MAX_TILE} pixels (a tile is decoded as one image)")
    return int(spec)


def coded_pixels(height: int, width: int) -> int:
    """Pixels actually coded for an image: padded to a multiple of ``CODING_MULTIPLE`` on each side."""
    return math.ceil(height / CODING_MULTIPLE) * math.ceil(width / CODING_MULTIPLE) * CODING_MULTIPLE**2


def crop_padded(x: Tensor, box: Box) -> Tensor:
    """``box`` of a (1, 3, H, W) image in [0, 1] (float, or uint8 in [0, 255]) as float in [-1, 1];
    rows and columns beyond the image repeat its last ones, as whole-image coding pads them."""
    h, w = x.shape[-2:]
    part = x[..., box.r0 : min(box.r1, h), box.c0 : min(box.c1, w)].float()
    if x.dtype == torch.uint8:
        part = part / 255
    part = part * 2 - 1
    pad = (0, box.c1 - min(box.c1, w), 0, box.r1 - min(box.r1, h))
    return F.pad(part, pad, mode="replicate") if any(pad) else part


def _splitmix64(value: int) -> int:
    """A 64-bit mixer (Steele et al. 2014): nearby (seed, block) pairs give unrelated seeds."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def block_noise(box: Box, seed: int, gamma: float) -> Tensor:
    """``gamma * N(0, I)`` over ``box`` (1, 3, h, w), drawn per 64-px block of the padded image from
    a CPU generator seeded with (seed, block row, block column): any window sees the same noise."""
    if gamma == 0:
        return torch.zeros(1, 3, box.r1 - box.r0, box.c1 - box.c0)
    b = NOISE_BLOCK
    rows, cols = range(box.r0 // b, math.ceil(box.r1 / b)), range(box.c0 // b, math.ceil(box.c1 / b))
    blocks = []
    for br in rows:
        line = []
        for bc in cols:
            key = _splitmix64(_splitmix64(_splitmix64(seed) ^ br) ^ bc) >> 1  # torch seeds are < 2**63
            line.append(torch.randn((1, 3, b, b), generator=torch.Generator().manual_seed(key)))
        blocks.append(torch.cat(line, dim=3))
    noise = torch.cat(blocks, dim=2)
    r0, c0 = box.r0 - rows.start * b, box.c0 - cols.start * b
    return gamma * noise[..., r0 : r0 + box.r1 - box.r0, c0 : c0 + box.c1 - box.c0]


@torch.no_grad()
def encode_tiles(codec, x: Tensor, grid: TileGrid, refine: Refine | None = None,
                 level: float | None = None) -> tuple[list[list[bytes]], float]:
    """Code every core of ``x`` (1, 3, H, W; float in [0, 1] or uint8) on its own.

    ``refine`` (encoder effort, ``cdc.coding.refine``) refines each core's latent against the core's pixels;
    ``level``: a variable-rate model's rate level (``cdc.models.gain``).

    Returns the strings of each tile in raster order and the entropy model's estimate of the
    payload in bits (``-log2`` likelihoods of every tile's ŷ and ẑ).
    """
    tiles, bits = [], 0.0
    device = next(codec.parameters()).device
    height, width = x.shape[-2:]
    for r, c in grid:
        win, core = grid.window(r, c), grid.core(r, c)
        y = codec.coded_latent(codec.g_a(crop_padded(x, win).to(device)), level)
        lw, lc = win.latent(), core.latent()
        y = y[..., lc.r0 - lw.r0 : lc.r1 - lw.r0, lc.c0 - lw.c0 : lc.c1 - lw.c0]
        if refine is not None:
            own = (min(core.r1, height) - core.r0, min(core.c1, width) - core.c0)
            y = refine(y, crop_padded(x, core).to(device), own, level)
        strings, _ = codec.entropy.compress(y)
        tiles.append(strings)
        bits += codec.entropy.bits(y)
    return tiles, bits


class _LatentRows:
    """Decoded ŷ of each core, decoded on first use and dropped once no later window needs it."""

    def __init__(self, codec, grid: TileGrid, tiles: list[list[bytes]], portable: bool) -> None:
        self.codec, self.grid, self.tiles, self.portable = codec, grid, tiles, portable
        self.cache: dict[tuple[int, int], Tensor] = {}

    def get(self, r: int, c: int) -> Tensor:
        if (r, c) not in self.cache:
            k = self.grid.core(r, c).latent()
            index = r * self.grid.shape[1] + c
            self.cache[r, c] = self.codec.entropy.decompress(self.tiles[index], (k.r1 - k.r0, k.c1 - k.c0),
                                                               self.portable)
        return self.cache[r, c]

    def window(self, r: int, c: int) -> Tensor:
        """ŷ under tile (r, c)'s window, gathered from its core and its neighbours' cores."""
        grid, lw = self.grid, self.grid.window(r, c).latent()
        for key in [k for k in self.cache if k[0] < r - 1]:
            del self.cache[key]
        rows, cols = grid.shape
        out = None
        for rr in range(max(r - 1, 0), min(r + 2, rows)):
            for cc in range(max(c - 1, 0), min(c + 2, cols)):
                k = grid.core(rr, cc).latent()
                top, bottom, left, right = max(k.r0, lw.r0), min(k.r1, lw.r1), max(k.c0, lw.c0), min(k.c1, lw.c1)
                if top >= bottom or left >= right:
                    continue
                y = self.get(rr, cc)
                if out is None:
                    out = y.new_zeros((1, y.shape[1], lw.r1 - lw.r0, lw.c1 - lw.c0))
                out[..., top - lw.r0 : bottom - lw.r0, left - lw.c0 : right - lw.c0] = \
                    y[..., top - k.r0 : bottom - k.r0, left - k.c0 : right - k.c0]
        return out


@torch.no_grad()
def decode_tiles(codec, tiles: list[list[bytes]], grid: TileGrid, sink: RowSink, *, steps: int, gamma: float,
                 seed: int, precision: str = "fp32", progress: Callable[[int], None] | None = None,
                 portable: bool = True, level: float | None = None) -> None:
    """Decode a tiled file strip by strip, calling ``sink`` with finished rows (cropped to the image).
    ``portable``: the file's entropy parameters are float64 (see ``cdc.coding.bitstream.Bitstream``);
    ``level``: the rate level of a variable-rate model's file.

    Each window runs the whole conditional diffusion decoder (context, x_aux, DDIM) on its own;
    its output is weighted by ``TileGrid.ramp`` in both axes and summed into a strip of
    ``tile + 2·margin`` rows; rows no later window touches go to ``sink``.
    """
    latents = _LatentRows(codec, grid, tiles, portable)
    rows, cols = grid.shape
    _, wp = grid.padded
    carry: Tensor | None = None  # the rows the next tile row still blends into
    for r in range(rows):
        first = grid.window(r, 0)
        strip = torch.zeros(3, first.r1 - first.r0, wp)
        if carry is not None:
            strip[:, : carry.shape[1]] = carry
        for c in range(cols):
            win = grid.window(r, c)
            x = codec.reconstruct(latents.window(r, c), steps, gamma, seed, precision, progress,
                                  x_start=block_noise(win, seed, gamma), level=level)
            weight = grid.ramp(r, rows, win.r0, win.r1)[:, None] * grid.ramp(c, cols, win.c0, win.c1)[None, :]
            strip[:, :, win.c0 : win.c1] += x[0].float().cpu() * weight
        done = grid.core(r, 0).r1 - grid.margin if r < rows - 1 else first.r1
        keep = min(done, grid.height) - first.r0
        if keep > 0:
            sink(first.r0, (strip[:, :keep, : grid.width] + 1) / 2)
        carry = strip[:, done - first.r0 :].clone()
