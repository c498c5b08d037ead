"""Tile-by-tile coding (cdc.coding.tiling): the tiling, its blend weights and noise, exact latents, the
version-2 container, and refusals."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from conftest import photo, tiny_codec

from cdc.argtypes import TILE
from cdc.coding.bitstream import Bitstream, BitstreamError
from cdc.coding.coder import Coder, DecodeError
from cdc.coding.tiling import (
    AUTO_TILE_PIXELS,
    DEFAULT_TILE,
    TileGrid,
    TilingError,
    block_noise,
    choose_tile,
    encode_tiles,
)


def uint8_image(h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(photo("astronaut", (h, w)).copy()).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def coder():
    return Coder(tiny_codec())


@pytest.mark.parametrize(("h", "w", "tile", "margin"), [(300, 200, 128, 64), (333, 257, 64, 32), (64, 64, 64, 0),
                                                        (500, 130, 192, 48)])
def test_cores_partition_the_padded_image_and_blend_weights_sum_to_one(h, w, tile, margin):
    grid = TileGrid(h, w, tile, margin)
    hp, wp = grid.padded
    cover, weight = torch.zeros(hp, wp), torch.zeros(hp, wp)
    rows, cols = grid.shape
    for r, c in grid:
        k, win = grid.core(r, c), grid.window(r, c)
        cover[k.r0 : k.r1, k.c0 : k.c1] += 1
        assert win.r0 <= k.r0 and win.r1 >= k.r1 and (win.r1 - win.r0) % 16 == 0 and (win.c1 - win.c0) % 16 == 0
        weight[win.r0 : win.r1, win.c0 : win.c1] += (grid.ramp(r, rows, win.r0, win.r1)[:, None]
                                                     * grid.ramp(c, cols, win.c0, win.c1)[None, :])
    assert torch.equal(cover, torch.ones(hp, wp))
    assert torch.allclose(weight, torch.ones(hp, wp), atol=1e-6)


@pytest.mark.parametrize(("tile", "margin"), [(100, 64), (0, 0), (64, 80), (128, 24), (64, 48)])
def test_unusable_tilings_are_refused(tile, margin):
    with pytest.raises(TilingError):
        TileGrid(500, 500, tile, margin)


def test_overlapping_windows_start_from_the_same_noise():
    grid = TileGrid(400, 400, 128, 64)
    a, b = grid.window(0, 0), grid.window(0, 1)
    na, nb = block_noise(a, 7, 0.8), block_noise(b, 7, 0.8)
    assert na.shape[-2:] == (a.r1 - a.r0, a.c1 - a.c0)
    overlap = slice(b.c0, a.c1)
    assert torch.equal(na[..., overlap.start - a.c0 : overlap.stop - a.c0], nb[..., : overlap.stop - b.c0])
    assert not torch.equal(block_noise(a, 8, 0.8), na)  # the seed matters
    assert 0.7 < float(na.std() / 0.8) < 1.3
    assert not block_noise(a, 7, 0.0).any()


def test_auto_tiles_large_images_only_and_off_has_a_ceiling():
    assert choose_tile("auto", 512, 768) is None
    side = int(AUTO_TILE_PIXELS**0.5) + 1
    assert choose_tile("auto", side, side) == DEFAULT_TILE
    assert choose_tile(256, 100, 100) == 256
    assert choose_tile("off", 4096, 4096) is None
    with pytest.raises(TilingError, match="--tile auto"):
        choose_tile("off", 4097, 4096)
    assert TILE("auto") == "auto" and TILE("512") == 512
    for bad in ("100", "0", "big", "-64"):
        with pytest.raises(argparse.ArgumentTypeError):
            TILE(bad)


def test_tiled_round_trip_is_exact_in_the_latents_and_deterministic(coder):
    x = uint8_image(200, 300)
    encoded = coder.encode(x, steps=2, tile=128, margin=32)
    stream = Bitstream.from_bytes(encoded.data)
    assert (stream.version, stream.tile, stream.margin) == (2, 128, 32)
    grid = coder.grid(coder.parse(encoded.data))
    assert grid.shape == (2, 3) and len(stream.strings) == 6 * coder.codec.entropy.n_strings
    # every tile's ŷ decodes bit-exactly to what the encoder quantised
    codec = coder.codec
    for index, (r, c) in enumerate(grid):
        win, core = grid.window(r, c), grid.core(r, c)
        from cdc.coding.tiling import crop_padded

        y = codec.g_a(crop_padded(x, win))
        lw, lc = win.latent(), core.latent()
        y = y[..., lc.r0 - lw.r0 : lc.r1 - lw.r0, lc.c0 - lw.c0 : lc.c1 - lw.c0]
        strings, y_hat = codec.entropy.compress(y)
        assert strings == stream.strings[2 * index : 2 * index + 2]
        assert torch.equal(codec.entropy.decompress(strings, tuple(y.shape[-2:])), y_hat)
    x_hat, _ = coder.decode(encoded.data)
    again, _ = coder.decode(encoded.data)
    as_uint8, _ = coder.decode_uint8(encoded.data)
    assert x_hat.shape == (1, 3, 200, 300) and torch.equal(x_hat, again)
    from cdc.images import to_uint8

    assert np.array_equal(as_uint8, to_uint8(x_hat))
    assert 0 < encoded.bpp_estimated < encoded.bpp  # untrained: the coder overhead of 6 tiny tiles dominates


def test_uint8_and_float_inputs_code_alike(coder):
    x = uint8_image(130, 70)
    assert coder.encode(x, tile=64).data == coder.encode(x.float() / 255, tile=64).data
    assert coder.encode(x).data == coder.encode(x.float() / 255).data


def test_one_tile_codes_what_whole_image_coding_codes(coder):
    """A single tile has no neighbours: its strings are exactly those of whole-image coding."""
    x = uint8_image(100, 120)
    whole = Bitstream.from_bytes(coder.encode(x).data)
    tiled = Bitstream.from_bytes(coder.encode(x, tile=128).data)
    assert tiled.strings == whole.strings and tiled.version == 2 and whole.version == 1
    tiles, bits = encode_tiles(coder.codec, x, coder.grid(tiled))
    assert tiles == [whole.strings] and bits > 0


def test_damaged_tiled_files_are_refused(coder):
    data = coder.encode(uint8_image(200, 150), steps=1, tile=64, margin=16).data
    for n in (10, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError):
            coder.decode(data[:n])
    stream = Bitstream.from_bytes(data)
    fewer = Bitstream(**{**stream.__dict__, "strings": stream.strings[:-2]}).to_bytes()
    with pytest.raises(DecodeError, match="strings, this model and tiling need"):
        coder.decode(fewer)
    odd = bytearray(data)
    with pytest.raises(BitstreamError):
        Bitstream.from_bytes(bytes(odd[:-4]) + b"\x00" * 4)  # CRC
    with pytest.raises(DecodeError):
        coder.encode(uint8_image(64, 64), tile=64, margin=48)  # a 64-px tile cannot hold a 2x48 px blend band


def test_version_2_fields_round_trip_and_version_1_is_unchanged():
    base = dict(fingerprint=bytes(6), prediction="sample", entropy_id=0, height=1000, width=800, steps=3,
                gamma=0.0, seed=1, latent_hw=(64, 52), strings=[b"a", b"b"] * 4)
    tiled = Bitstream(**base, tile=512, margin=48)
    assert Bitstream.from_bytes(tiled.to_bytes()) == tiled and tiled.to_bytes()[4] == 2
    whole = Bitstream(**base)
    assert whole.to_bytes()[4] == 1 and Bitstream.from_bytes(whole.to_bytes()) == whole
    assert tiled.header_dict()["tile"] == 512 and whole.header_dict()["tile"] == 0
    with pytest.raises(ValueError):
        Bitstream(**base, tile=100).to_bytes()


def test_fuzzed_tiled_files_are_always_refused_never_crash(coder):
    """Every truncation and 300 random bit flips of a version-2 file: a DecodeError each time."""
    data = coder.encode(uint8_image(150, 140), steps=1, tile=64).data
    rng = np.random.default_rng(0)
    cases = [data[:n] for n in range(len(data))]
    for bit in rng.integers(0, 8 * len(data), 300):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        cases.append(bytes(flipped))
    for case in cases:
        with pytest.raises(DecodeError):
            coder.decode(case)
