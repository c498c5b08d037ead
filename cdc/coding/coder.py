"""Images <-> ``.cdc`` bytes with one loaded codec: header, fingerprint check, real bpp.

Bits per pixel are always measured on the real file (``8 * bytes / (H * W)`` of the *original*
image, padding excluded); the model's estimate (``-log2`` likelihoods of ŷ and ẑ) is reported
alongside so the coder's overhead is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cdc.coding.bitstream import ENTROPY_MODEL_IDS, FINGERPRINT_BYTES, Bitstream, BitstreamError
from cdc.coding.rate import RateError, encode_at_bpp
from cdc.coding.refine import LatentRefiner, Refine, RefineError, RefineSettings
from cdc.coding.tiling import (
    DEFAULT_MARGIN,
    MAX_TILE,
    RowSink,
    TileGrid,
    TilingError,
    choose_tile,
    coded_pixels,
    decode_tiles,
    encode_tiles,
)
from cdc.images import to_uint8
from cdc.limits import DEFAULT_LIMITS, CodecLimits
from cdc.models.codec import CDCCodec
from cdc.models.gain import DEFAULT_QUALITY, quality_level
from cdc.models.layers import pad_to_multiple, padded_size
from cdc.models.sampler import SamplerError, ddim_timesteps
from cdc.zoo.checkpoint import fingerprint


class DecodeError(ValueError):
    """A bitstream cannot be decoded by this model (corrupt file, other model, bad parameters)."""


@dataclass(frozen=True)
class Encoded:
    """One compressed image.

    Attributes:
        data: the complete ``.cdc`` file.
        bpp: real bits per pixel, ``8 * len(data) / (H * W)``.
        bpp_estimated: the entropy model's ``-log2`` likelihood of ŷ and ẑ per pixel.
        level: the rate level a variable-rate model coded it at (None: a fixed-rate model).
    """

    data: bytes
    bpp: float
    bpp_estimated: float
    level: float | None = None


BATCH_MAX_PIXELS = 2**22
"""Padded pixels per decoding batch (ten 768x512 images): a batch of large images must not multiply
the whole-image decoder's memory (~0.65 KB per pixel for ``small`` on the CPU)."""

Decoded = tuple[int, "np.ndarray | DecodeError", "Bitstream | None"]
"""One result of ``Coder.decode_many``: (input index, uint8 image or the error, parsed header)."""


class Coder:
    """Binds a codec (eval mode, CDFs built) and its fingerprint for repeated use.

    Args:
        codec: a loaded ``CDCCodec``; ``update()`` is called if its CDFs are missing.
        limits: what one image or file may make it do (``cdc.limits``); the methods take others.
    """

    def __init__(self, codec: CDCCodec, limits: CodecLimits = DEFAULT_LIMITS) -> None:
        self.codec = codec.eval()
        self.limits = limits
        codec.update(force=False)
        self.fingerprint = fingerprint(codec)
        self._refiner: LatentRefiner | None = None

    @property
    def default_decode(self) -> tuple[int, float]:
        """(DDIM steps, γ) a file gets when the caller does not choose: a shipped model's card decode
        (``codec.default_decode``, see ``cdc.zoo.checkpoint.load_codec``), else the config's sampler."""
        shipped = getattr(self.codec, "default_decode", None)
        cfg = self.codec.config.sampler
        return shipped if shipped is not None else (cfg.steps, cfg.gamma)

    def _refine(self, effort: int) -> Refine | None:
        """The latent refinement of an effort level (None at 0); the refiner is built at first use."""
        settings = RefineSettings.for_effort(effort)
        if settings.iterations == 0:
            return None
        if self._refiner is None:
            self._refiner = LatentRefiner(self.codec)
        return self._refiner.for_settings(settings)

    @property
    def fingerprint_prefix(self) -> bytes:
        return bytes.fromhex(self.fingerprint)[:FINGERPRINT_BYTES]

    @torch.no_grad()
    def estimate_bits(self, x: Tensor, quality: float | None = None) -> float:
        """The entropy model's estimate of the payload size in bits for a (1, 3, H, W) image in [0, 1]
        (a variable-rate model's at ``quality``, default ``DEFAULT_QUALITY``: what ``encode`` codes)."""
        y = self.codec.g_a(pad_to_multiple(x.float() * 2 - 1, self.codec.downsampling_factor))
        return self.codec.entropy.bits(self.codec.coded_latent(y, self._rate_level(quality, None)))

    def _rate_level(self, quality: float | None, level: float | None) -> float | None:
        """The rate level a variable-rate model codes at, to the header's 1e-3 (the decoder must use the
        same gains); None for a fixed-rate model. Raises ``ValueError`` outside the ranges."""
        if not self.codec.rate_levels:
            return None
        if level is None:
            level = quality_level(DEFAULT_QUALITY if quality is None else quality, self.codec.rate_levels)
        return round(self.codec.gain.check_level(level) * 1000) / 1000

    @torch.no_grad()
    def encode(self, x: Tensor, steps: int | None = None, gamma: float | None = None,
               seed: int | None = None, tile: int | str | None = None, margin: int | None = None,
               limits: CodecLimits | None = None, effort: int = 0, quality: float | None = None,
               bpp: float | None = None, level: float | None = None) -> Encoded:
        """Compress a (1, 3, H, W) image; unset decode parameters come from the config.

        Args:
            x: float in [0, 1], or uint8 in [0, 255] (converted tile by tile: a large image never
                exists in float).
            steps: DDIM steps of the decode the file asks for (1-256); None: the model's default
                decode (``default_decode``).
            gamma: the start noise's scale γ of that decode, in [0, 65.535] (0: deterministic decode);
                None: the model's default decode.
            seed: the seed of the decode's noise, in [0, 2**63); None: the model config's.
            tile: code tile by tile with ``tile``-pixel cores (a multiple of 64, see
                ``cdc.coding.tiling``): memory bounded by the tile; ``"auto"`` tiles images over 2.4 MP
                (as ``cdc compress --tile auto``); ``None`` codes the whole image.
            margin: tile overlap on each side in pixels (0-64, a multiple of 16); default 64, or half
                of a smaller tile.
            limits: instead of the coder's (image pixels, whole-image pixels).
            effort: encoder effort, 0 to ``cdc.limits.MAX_EFFORT``: refine the latent for this
                image (fewer bits at the same quality, more encode time; ``cdc.coding.refine``). The
                format and the decode are unchanged.
            quality: a variable-rate model's quality, 0 (its lowest rate) to 100 (its highest), linear
                in its rate level (``cdc.models.gain``); default ``DEFAULT_QUALITY``.
            bpp: a variable-rate model's target rate: the highest quality whose file has at most this
                many bits per pixel (bisection over the rate level on real files: ``cdc.coding.rate``).
                Instead of ``quality``.
            level: the rate level itself, in [0, L - 1] (instead of ``quality``).

        Raises:
            DecodeError: parameters the format cannot carry, or an image over the limits.
        """
        chosen = [name for name, value in (("quality", quality), ("bpp", bpp), ("level", level)) if value is not None]
        if chosen and not self.codec.rate_levels:
            raise DecodeError(f"{chosen[0]} needs a variable-rate model; this one codes at one rate (λ "
                              f"{self.codec.config.loss.lmbda:g}): choose another model for another rate")
        if len(chosen) > 1:
            raise DecodeError(f"give one of quality, bpp and level, not {' and '.join(chosen)}")
        if bpp is not None:
            try:
                return encode_at_bpp(lambda lv: self.encode(x, steps, gamma, seed, tile, margin, limits, effort,
                                                            level=lv), bpp, self.codec.rate_levels - 1)
            except RateError as exc:
                raise DecodeError(str(exc)) from None
        try:
            level = self._rate_level(quality, level)
        except ValueError as exc:
            raise DecodeError(str(exc)) from None
        default_steps, default_gamma = self.default_decode
        steps = default_steps if steps is None else steps
        gamma = default_gamma if gamma is None else gamma
        seed = self.codec.config.sampler.seed if seed is None else seed
        try:
            ddim_timesteps(self.codec.diffusion.timesteps, steps)
            refine = self._refine(effort)
        except (SamplerError, RefineError) as exc:
            raise DecodeError(str(exc)) from None
        # what the format holds and the decoder accepts: refuse now, never write an undecodable file
        if not 0 <= round(gamma * 1000) <= 0xFFFF:  # also refuses nan (comparisons are False)
            raise DecodeError(f"gamma {gamma} outside [0, 65.535]")
        if not 0 <= seed < 2**63:
            raise DecodeError(f"seed {seed} outside [0, 2**63)")
        height, width = x.shape[-2:]
        limits = limits or self.limits
        if limits.max_pixels is not None and height * width > limits.max_pixels:
            raise DecodeError(f"{width}x{height} pixels, over the limit of {limits.max_pixels}")
        try:
            tile = choose_tile("auto", height, width) if tile == "auto" else tile
        except TilingError as exc:
            raise DecodeError(str(exc)) from None
        coded = coded_pixels(height, width)
        if tile is None and limits.max_whole_pixels is not None and coded > limits.max_whole_pixels:
            raise DecodeError(f"{width}x{height} codes {coded} padded pixels as one image, over the whole-image "
                              f"limit of {limits.max_whole_pixels} (memory grows with pixels): tile it")
        hp, wp = padded_size(height, width, self.codec.downsampling_factor)
        if tile is None:
            unit = x.float() / 255 if x.dtype == torch.uint8 else x
            out = self.codec.compress(unit, refine, level)
            strings, bits = out["strings"], self.codec.entropy.bits(out["y"])  # g_a once, not twice
        else:
            margin = min(DEFAULT_MARGIN, tile // 2) if margin is None else margin
            try:
                grid = TileGrid(height, width, tile, margin, self.codec.downsampling_factor)
            except TilingError as exc:
                raise DecodeError(str(exc)) from None
            tiles, bits = encode_tiles(self.codec, x, grid, refine, level)
            strings = [s for t in tiles for s in t]
        stream = Bitstream(
            fingerprint=self.fingerprint_prefix,
            prediction=self.codec.config.diffusion.prediction,
            entropy_id=ENTROPY_MODEL_IDS[self.codec.entropy.name],
            height=height,
            width=width,
            steps=steps,
            gamma=gamma,
            seed=seed,
            latent_hw=(hp // 16, wp // 16),
            strings=strings,
            tile=tile or 0,
            margin=margin if tile else 0,
            level=level,
        )
        data = stream.to_bytes()
        pixels = height * width
        return Encoded(data, 8 * len(data) / pixels, bits / pixels, level)

    def parse(self, data: bytes, steps: int | None = None, limits: CodecLimits | None = None) -> Bitstream:
        """Parse ``data`` and check it belongs to this model; raises ``DecodeError``.

        The limits (the coder's unless given) bound what a file may make the decoder do (memory,
        time) before anything is allocated; ``steps`` (the caller's own choice, overriding the
        header's) is not bounded by them.
        """
        limits = limits or self.limits
        try:
            stream = Bitstream.from_bytes(data)
        except BitstreamError as exc:
            raise DecodeError(str(exc)) from None
        pixels = stream.height * stream.width
        if limits.max_pixels is not None and pixels > limits.max_pixels:
            raise DecodeError(f"header claims {stream.width}x{stream.height} pixels, over the limit of "
                              f"{limits.max_pixels} (max pixels)")
        coded = coded_pixels(stream.height, stream.width)
        if not stream.tile and limits.max_whole_pixels is not None and coded > limits.max_whole_pixels:
            raise DecodeError(f"header claims {stream.width}x{stream.height} pixels coded as one tile, over the "
                              f"whole-image limit of {limits.max_whole_pixels} ({coded} padded pixels; memory "
                              "grows with pixels: tile it)")
        if stream.tile > MAX_TILE:
            raise DecodeError(f"header asks for {stream.tile}-px tiles, over the tile limit of {MAX_TILE} pixels")
        if steps is None and limits.max_steps is not None and stream.steps > limits.max_steps:
            raise DecodeError(f"header asks for {stream.steps} DDIM steps, over the limit of {limits.max_steps} "
                              "(max steps; or choose the steps)")
        if stream.fingerprint != self.fingerprint_prefix:
            raise DecodeError(
                f"made by a different model (fingerprint {stream.fingerprint.hex()}, "
                f"this model {self.fingerprint_prefix.hex()})"
            )
        if stream.prediction != self.codec.config.diffusion.prediction:
            raise DecodeError(f"prediction type {stream.prediction} does not match the model")
        if stream.entropy_id != ENTROPY_MODEL_IDS[self.codec.entropy.name]:
            raise DecodeError(f"entropy model id {stream.entropy_id} does not match the model")
        if (stream.level is None) != (not self.codec.rate_levels):
            raise DecodeError("the file has a rate level and the model is fixed-rate" if stream.level is not None
                              else "the model is variable-rate and the file has no rate level")
        if stream.level is not None and stream.level > self.codec.rate_levels - 1:
            raise DecodeError(f"rate level {stream.level} outside this model's [0, {self.codec.rate_levels - 1}]")
        ph, pw = padded_size(stream.height, stream.width, self.codec.downsampling_factor)
        if stream.latent_hw != (ph // 16, pw // 16):
            raise DecodeError(f"latent shape {stream.latent_hw} inconsistent with {stream.height}x{stream.width}")
        grid = self.grid(stream)
        expected = self.codec.entropy.n_strings * (len(grid) if grid else 1)
        if len(stream.strings) != expected:
            raise DecodeError(f"{len(stream.strings)} entropy-coded strings, this model and tiling need {expected}")
        try:
            ddim_timesteps(self.codec.diffusion.timesteps, stream.steps if steps is None else steps)
        except SamplerError as exc:
            raise DecodeError(str(exc)) from None
        return stream

    def grid(self, stream: Bitstream) -> TileGrid | None:
        """The tiling of a parsed file (``None``: coded as one image)."""
        if not stream.tile:
            return None
        try:
            return TileGrid(stream.height, stream.width, stream.tile, stream.margin, self.codec.downsampling_factor)
        except TilingError as exc:
            raise DecodeError(f"invalid tiling ({exc})") from None

    def decode(self, data: bytes, steps: int | None = None, precision: str = "fp32",
               progress: Callable[[int], None] | None = None,
               limits: CodecLimits | None = None) -> tuple[Tensor, Bitstream]:
        """Decode a ``.cdc`` file to a (1, 3, H, W) float image in [0, 1].

        Args:
            data: file contents.
            steps: override the header's DDIM steps (the header's gamma and seed still apply).
            precision: ``fp32`` or ``bf16`` for the U-Net (the entropy model's precision is the file's:
                float64, or float32 for files from before float64 coding).
            progress: called once per denoising step (of every tile, for a tiled file).
            limits: instead of the coder's (see ``parse``).
        """
        stream = self.parse(data, steps, limits)
        out = torch.empty(1, 3, stream.height, stream.width)

        def sink(row: int, rows: Tensor) -> None:
            out[0, :, row : row + rows.shape[1]] = rows.clamp(0, 1)

        self._decode(stream, sink, steps, precision, progress)
        return out, stream

    def decode_uint8(self, data: bytes, steps: int | None = None, precision: str = "fp32",
                     progress: Callable[[int], None] | None = None,
                     limits: CodecLimits | None = None) -> tuple[np.ndarray, Bitstream]:
        """``decode`` to an H x W x 3 uint8 array (rounded as ``cdc.images.to_uint8``): a tiled
        file's rows are rounded as they finish, so a large image never exists in float."""
        stream = self.parse(data, steps, limits)
        out = np.empty((stream.height, stream.width, 3), dtype=np.uint8)

        def sink(row: int, rows: Tensor) -> None:
            out[row : row + rows.shape[1]] = to_uint8(rows)

        self._decode(stream, sink, steps, precision, progress)
        return out, stream

    def decode_many(self, files: Sequence[bytes], steps: int | None = None, precision: str = "fp32",
                    batch_size: int = 8, progress: Callable[[int], None] | None = None,
                    limits: CodecLimits | None = None) -> Iterator[Decoded]:
        """Decode many ``.cdc`` files, running whole-image files of equal latent size and decode
        parameters through the U-Net together, up to ``batch_size`` at a time.

        ``progress`` is called once per denoising step of each batch (or tile). Yields
        ``(index, image, stream)`` as each file finishes (not in input order): ``image`` is the
        H x W x 3 uint8 array, or the ``DecodeError`` that file raised (``stream`` None then);
        one bad file does not stop the others. Each image is the one ``decode_uint8`` gives,
        to float rounding (start noise is drawn per image from its own seed). A batch holds at most
        ``BATCH_MAX_PIXELS`` padded pixels (U-Net memory grows with them); tiled files decode one by
        one (their memory is bounded by the tile).
        """
        pending: dict[tuple, list[tuple[int, Bitstream, Tensor]]] = {}
        for i, data in enumerate(files):
            try:
                stream = self.parse(data, steps, limits)
                if stream.tile:
                    yield (i, *self.decode_uint8(data, steps, precision, progress, limits))
                    continue
                y_hat = self._entropy_decode(stream)
            except DecodeError as exc:
                yield i, exc, None
                continue
            key = (stream.latent_hw, stream.steps if steps is None else steps, stream.gamma)
            group = pending.setdefault(key, [])
            group.append((i, stream, y_hat))
            pixels = stream.latent_hw[0] * stream.latent_hw[1] * 256
            if len(group) >= min(batch_size, max(1, BATCH_MAX_PIXELS // pixels)):
                yield from self._decode_group(pending.pop(key), steps, precision, progress)
        for group in pending.values():
            yield from self._decode_group(group, steps, precision, progress)

    def _decode_group(self, group: list[tuple[int, Bitstream, Tensor]], steps: int | None, precision: str,
                      progress: Callable[[int], None] | None) -> Iterator[tuple[int, np.ndarray, Bitstream]]:
        streams = [stream for _, stream, _ in group]
        images = self._reconstruct(streams, torch.cat([y for _, _, y in group]), steps, precision, progress)
        for (i, stream, _), image in zip(group, images, strict=True):
            yield i, to_uint8(image), stream

    def _entropy_decode(self, stream: Bitstream) -> Tensor:
        """ŷ (1, C, h, w) of a whole-image file; the rANS decoder's refusals become ``DecodeError``."""
        try:
            return self.codec.entropy.decompress(stream.strings, stream.latent_hw, stream.portable)
        except (ValueError, RuntimeError) as exc:  # the rANS decoder rejects damaged payloads
            raise DecodeError(f"entropy decoding failed ({exc})") from None

    @torch.no_grad()
    def _reconstruct(self, streams: list[Bitstream], y_hat: Tensor, steps: int | None, precision: str,
                     progress: Callable[[int], None] | None) -> list[Tensor]:
        """The diffusion decoder on a batch of whole-image latents of one size and one (steps, gamma);
        returns each image cropped to its size, (3, H, W) in [0, 1] on the CPU."""
        first = streams[0]
        levels = None if first.level is None else [s.level for s in streams]
        x = self.codec.reconstruct(y_hat, first.steps if steps is None else steps, first.gamma,
                                   [s.seed for s in streams], precision, progress, level=levels)
        return [((x[k, :, : s.height, : s.width] + 1) / 2).clamp(0, 1).cpu() for k, s in enumerate(streams)]

    @torch.no_grad()
    def _decode(self, stream: Bitstream, sink: RowSink, steps: int | None, precision: str,
                progress: Callable[[int], None] | None) -> None:
        if not stream.tile:
            sink(0, self._reconstruct([stream], self._entropy_decode(stream), steps, precision, progress)[0])
            return
        k = self.codec.entropy.n_strings
        tiles = [stream.strings[i : i + k] for i in range(0, len(stream.strings), k)]
        try:
            decode_tiles(self.codec, tiles, self.grid(stream), sink, steps=stream.steps if steps is None else steps,
                         gamma=stream.gamma, seed=stream.seed, precision=precision, progress=progress,
                         portable=stream.portable, level=stream.level)
        except (ValueError, RuntimeError) as exc:  # the rANS decoder rejects damaged payloads
            raise DecodeError(f"entropy decoding failed ({exc})") from None
