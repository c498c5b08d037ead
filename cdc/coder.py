"""Images <-> ``.cdc`` bytes with one loaded codec: header, fingerprint check, real bpp.

Bits per pixel are always measured on the real file (``8 * bytes / (H * W)`` of the *original*
image, padding excluded); the model's estimate (``-log2`` likelihoods of ŷ and ẑ) is reported
alongside so the coder's overhead is visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cdc.bitstream import FINGERPRINT_BYTES, Bitstream, BitstreamError
from cdc.checkpoint import fingerprint
from cdc.codec import CDCCodec
from cdc.layers import pad_to_multiple, padded_size
from cdc.sampler import SamplerError, ddim_timesteps


class DecodeError(ValueError):
    """A bitstream cannot be decoded by this model (corrupt file, other model, bad parameters)."""


@dataclass(frozen=True)
class Encoded:
    """One compressed image.

    Attributes:
        data: the complete ``.cdc`` file.
        bpp: real bits per pixel, ``8 * len(data) / (H * W)``.
        bpp_estimated: the entropy model's ``-log2`` likelihood of ŷ and ẑ per pixel.
    """

    data: bytes
    bpp: float
    bpp_estimated: float


class Coder:
    """Binds a codec (eval mode, CDFs built) and its fingerprint for repeated use.

    Args:
        codec: a loaded :class:`CDCCodec`; ``update()`` is called if its CDFs are missing.
    """

    def __init__(self, codec: CDCCodec) -> None:
        self.codec = codec.eval()
        codec.update(force=False)
        self.fingerprint = fingerprint(codec)

    @property
    def fingerprint_prefix(self) -> bytes:
        return bytes.fromhex(self.fingerprint)[:FINGERPRINT_BYTES]

    @torch.no_grad()
    def estimate_bits(self, x: Tensor) -> float:
        """The entropy model's estimate of the payload size in bits for a (1, 3, H, W) image."""
        y = self.codec.g_a(pad_to_multiple(x.float() * 2 - 1, self.codec.downsampling_factor))
        _, likelihoods = self.codec.entropy(y)
        return float(sum(-torch.log2(lk).sum() for lk in likelihoods.values()))

    @torch.no_grad()
    def encode(self, x: Tensor, steps: int | None = None, gamma: float | None = None,
               seed: int | None = None) -> Encoded:
        """Compress a (1, 3, H, W) image in [0, 1]; unset decode parameters come from the config."""
        cfg = self.codec.config.sampler
        steps = cfg.steps if steps is None else steps
        gamma = cfg.gamma if gamma is None else gamma
        seed = cfg.seed if seed is None else seed
        try:
            ddim_timesteps(self.codec.diffusion.timesteps, steps)
        except SamplerError as exc:
            raise DecodeError(str(exc)) from None
        # what the format holds and the decoder accepts: refuse now, never write an undecodable file
        if not 0 <= round(gamma * 1000) <= 0xFFFF:  # also refuses nan (comparisons are False)
            raise DecodeError(f"gamma {gamma} outside [0, 65.535]")
        if not 0 <= seed < 2**63:
            raise DecodeError(f"seed {seed} outside [0, 2**63)")
        height, width = x.shape[-2:]
        out = self.codec.compress(x)
        stream = Bitstream(
            fingerprint=self.fingerprint_prefix,
            prediction=self.codec.config.diffusion.prediction,
            entropy_id=self.codec.entropy.entropy_id,
            height=height,
            width=width,
            steps=steps,
            gamma=gamma,
            seed=seed,
            latent_hw=out["shape"],
            strings=out["strings"],
        )
        data = stream.to_bytes()
        pixels = height * width
        return Encoded(data, 8 * len(data) / pixels, self.estimate_bits(x) / pixels)

    def parse(self, data: bytes, steps: int | None = None, max_pixels: int | None = None,
              max_steps: int | None = None) -> Bitstream:
        """Parse ``data`` and check it belongs to this model; raises :class:`DecodeError`.

        ``max_pixels`` / ``max_steps`` bound what a file may make the decoder do (memory, time)
        before anything is allocated; ``steps`` (the caller's own choice) is not bounded by them.
        """
        try:
            stream = Bitstream.from_bytes(data)
        except BitstreamError as exc:
            raise DecodeError(str(exc)) from None
        if max_pixels is not None and stream.height * stream.width > max_pixels:
            raise DecodeError(f"header claims {stream.width}x{stream.height} pixels, over the limit of {max_pixels} "
                              "(--max-pixels)")
        if steps is None and max_steps is not None and stream.steps > max_steps:
            raise DecodeError(f"header asks for {stream.steps} DDIM steps, over the limit of {max_steps} "
                              "(--max-steps; or choose --steps)")
        if stream.fingerprint != self.fingerprint_prefix:
            raise DecodeError(
                f"made by a different model (fingerprint {stream.fingerprint.hex()}, "
                f"this model {self.fingerprint_prefix.hex()})"
            )
        if stream.prediction != self.codec.config.diffusion.prediction:
            raise DecodeError(f"prediction type {stream.prediction} does not match the model")
        if stream.entropy_id != self.codec.entropy.entropy_id:
            raise DecodeError(f"entropy model id {stream.entropy_id} does not match the model")
        ph, pw = padded_size(stream.height, stream.width, self.codec.downsampling_factor)
        if stream.latent_hw != (ph // 16, pw // 16):
            raise DecodeError(f"latent shape {stream.latent_hw} inconsistent with {stream.height}x{stream.width}")
        try:
            ddim_timesteps(self.codec.diffusion.timesteps, stream.steps if steps is None else steps)
        except SamplerError as exc:
            raise DecodeError(str(exc)) from None
        return stream

    @torch.no_grad()
    def decode(self, data: bytes, steps: int | None = None, precision: str = "fp32",
               progress: Callable[[int], None] | None = None, max_pixels: int | None = None,
               max_steps: int | None = None) -> tuple[Tensor, Bitstream]:
        """Decode a ``.cdc`` file to a (1, 3, H, W) image in [0, 1].

        Args:
            data: file contents.
            steps: override the header's DDIM steps (the header's gamma and seed still apply).
            precision: ``fp32`` or ``bf16`` for the U-Net (the entropy model is always fp32).
            progress: called once per denoising step.
            max_pixels, max_steps: refuse files asking for more (see :meth:`parse`).
        """
        stream = self.parse(data, steps, max_pixels, max_steps)
        try:
            out = self.codec.decompress(
                stream.strings, stream.latent_hw, (stream.height, stream.width),
                steps=stream.steps if steps is None else steps, gamma=stream.gamma, seed=stream.seed,
                precision=precision, progress=progress,
            )
        except (ValueError, RuntimeError) as exc:  # the rANS decoder rejects damaged payloads
            raise DecodeError(f"entropy decoding failed ({exc})") from None
        return out["x_hat"].clamp(0, 1), stream
