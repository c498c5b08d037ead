"""The ``.cdc`` container: a versioned, checksummed file around the entropy-coded strings.

Format version 1, whole-image coding (integers are unsigned LEB128 varints unless a width is given)::

    offset  field         size      meaning
    0       magic         4 bytes   89 43 44 43 ("\\x89CDC"; the high bit catches 7-bit transfers)
    4       version       1 byte    format version (1)
    5       fingerprint   6 bytes   first 6 bytes of the model's SHA-256 fingerprint
    11      flags         1 byte    bits 0-1 prediction (0 sample, 1 epsilon, 2 v),
                                    bits 2-4 entropy model id (0 hyperprior, 1 entroformer, 2 checkerboard),
                                    bit 5 entropy parameters computed in float64 (1; files written
                                    before 2026-11-26: 0, float32),
                                    bit 6 a rate level follows gamma (variable-rate models), bit 7 zero
    12      height        varint    original image height, pixels (>= 1)
            width         varint    original image width, pixels (>= 1)
            steps         varint    DDIM decode steps S (>= 1)
            gamma         2 bytes   big-endian uint16: start-noise scale x 1000
            [level]       2 bytes   big-endian uint16: rate level x 1000 (only with flag bit 6)
            seed          varint    start-noise seed
            latent_h      varint    height of y (padded height / 16)
            latent_w      varint    width of y
            n_strings     varint    number of entropy-coded strings (decode order)
            strings       n x (varint length + bytes)
    end-4   crc32         4 bytes   big-endian CRC-32 of every preceding byte

Version 2, tile-by-tile coding (``cdc.coding.tiling``), adds two fields after ``latent_w``::

            tile          varint    core tile side / 64 (>= 1)
            margin        varint    overlap on each side / 16

and its strings are every tile's strings in raster order (tiles x strings per tile). A file is
written with the lowest version that holds it, so whole-image files stay version 1.

Flag bit 5 tells the decoder in which precision the entropy model computed the Gaussian parameters
of y (``cdc.models.entropy.LatentEntropyModel.coder``): float64 makes them, and with them the rANS
decode, the same on every machine; float32 files decode as they were written, on the machines
that round as the encoder's did. Readers from before the bit existed refuse float64 files
("invalid flags byte") instead of decoding them wrongly; likewise files of a variable-rate model
(``cdc.models.gain``), whose rate level (flag bit 6) older readers do not know.

A 2-string hyperprior file of a small image spends 31 bytes outside the entropy-coded payload.
Bits per pixel are always ``8 * len(file) / (height * width)``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

MAGIC = b"\x89CDC"
VERSION = 2  # the newest this build writes and reads; whole-image files are written as version 1
FINGERPRINT_BYTES = 6
PREDICTION_IDS = {"sample": 0, "epsilon": 1, "v": 2}
ENTROPY_MODEL_IDS = {"hyperprior": 0, "entroformer": 1, "checkerboard": 2}  # flags bits 2-4 (the format owns the ids)
_ENTROPY_MODEL_NAMES = {v: k for k, v in ENTROPY_MODEL_IDS.items()}
_PREDICTION_NAMES = {v: k for k, v in PREDICTION_IDS.items()}


class BitstreamError(ValueError):
    """A ``.cdc`` file cannot be read: wrong magic, unknown version, CRC mismatch or truncation."""


@dataclass(frozen=True)
class Bitstream:
    """A parsed (or to-be-written) ``.cdc`` file.

    Attributes:
        fingerprint: model fingerprint prefix (6 bytes); decoding checks it against the model.
        prediction: parameterization of the model that wrote it (sample / epsilon / v).
        entropy_id: entropy model id (0 = mean-scale hyperprior).
        height: original image height in pixels.
        width: original image width in pixels.
        steps: DDIM steps of the decode (1-65535).
        gamma: the decode's start-noise scale γ, kept to 1e-3 (0-65.535).
        seed: the decode's noise seed (0 <= seed < 2**63).
        latent_hw: spatial size of y (of the whole padded image, also when tiled).
        strings: entropy-coded strings in decode order (tile after tile when tiled).
        tile: core tile side in pixels (a multiple of 64), 0 for whole-image coding.
        margin: tile overlap on each side in pixels (a multiple of 16).
        portable: the entropy parameters are float64 (flag bit 5); ``False`` for float32 files.
        level: a variable-rate model's rate level, kept to 1e-3 (0-65.535); None for a fixed-rate model.
    """

    fingerprint: bytes
    prediction: str
    entropy_id: int
    height: int
    width: int
    steps: int
    gamma: float
    seed: int
    latent_hw: tuple[int, int]
    strings: list[bytes] = field(default_factory=list)
    tile: int = 0
    margin: int = 0
    portable: bool = True
    level: float | None = None

    @property
    def version(self) -> int:
        """The format version this file needs: 2 if tiled, else 1."""
        return 2 if self.tile else 1

    def to_bytes(self) -> bytes:
        """Serialise; raises ``ValueError`` for values the format cannot hold."""
        if len(self.fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
        if not 0 <= self.entropy_id < 8:
            raise ValueError("entropy_id must be in [0, 8)")
        gamma_milli = round(self.gamma * 1000)
        if not 0 <= gamma_milli <= 0xFFFF:
            raise ValueError(f"gamma {self.gamma} outside [0, 65.535]")
        if min(self.height, self.width, self.steps) < 1:
            raise ValueError("height, width and steps must be >= 1")
        if self.tile % 64 or self.margin % 16 or (self.margin and not self.tile):
            raise ValueError(f"tile {self.tile} must be a multiple of 64 and margin {self.margin} of 16")
        level_milli = None if self.level is None else round(self.level * 1000)
        if level_milli is not None and not 0 <= level_milli <= 0xFFFF:
            raise ValueError(f"rate level {self.level} outside [0, 65.535]")
        flags = (PREDICTION_IDS[self.prediction] | (self.entropy_id << 2) | (int(self.portable) << 5)
                 | (int(level_milli is not None) << 6))
        out = bytearray(MAGIC)
        out += bytes([self.version]) + self.fingerprint + bytes([flags])
        for value in (self.height, self.width, self.steps):
            out += _varint(value)
        out += struct.pack(">H", gamma_milli)
        if level_milli is not None:
            out += struct.pack(">H", level_milli)
        tiling = (self.tile // 64, self.margin // 16) if self.tile else ()
        for value in (self.seed, *self.latent_hw, *tiling, len(self.strings)):
            out += _varint(value)
        for s in self.strings:
            out += _varint(len(s)) + s
        out += struct.pack(">I", zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Bitstream:
        """Parse and verify a ``.cdc`` file; raises ``BitstreamError`` with the reason."""
        if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
            raise BitstreamError("not a CDC bitstream (wrong magic bytes)")
        reader = _Reader(data, len(MAGIC))
        version = reader.byte()
        if not 1 <= version <= VERSION:
            raise BitstreamError(f"unsupported bitstream format version {version} (this build reads 1 to {VERSION})")
        fingerprint = reader.take(FINGERPRINT_BYTES)
        flags = reader.byte()
        if flags >> 7 or (flags & 3) not in _PREDICTION_NAMES:
            raise BitstreamError(f"invalid flags byte 0x{flags:02x}")
        height, width, steps = reader.varint(), reader.varint(), reader.varint()
        (gamma_milli,) = struct.unpack(">H", reader.take(2))
        level = struct.unpack(">H", reader.take(2))[0] / 1000 if flags >> 6 & 1 else None
        seed, latent_h, latent_w = (reader.varint() for _ in range(3))
        tile, margin = (64 * reader.varint(), 16 * reader.varint()) if version == 2 else (0, 0)
        if version == 2 and not tile:
            raise BitstreamError("invalid header: zero tile size")
        n_strings = reader.varint()
        if n_strings > (64 if version == 1 else len(data)):  # each string takes at least a byte
            raise BitstreamError(f"implausible number of strings ({n_strings})")
        strings = [reader.take(reader.varint(), "string") for _ in range(n_strings)]
        body_end = reader.pos
        crc = reader.take(4)
        if reader.pos != len(data):
            raise BitstreamError(f"{len(data) - reader.pos} unexpected trailing bytes")
        if struct.unpack(">I", crc)[0] != zlib.crc32(data[:body_end]):
            raise BitstreamError("CRC mismatch: the file is corrupt")
        if min(height, width, steps) < 1:
            raise BitstreamError("invalid header: zero height, width or steps")
        if seed >= 2**63:  # torch.Generator takes a signed 64-bit seed; the encoder never writes more
            raise BitstreamError(f"invalid header: seed {seed} out of range (below 2**63)")
        return cls(
            fingerprint=fingerprint,
            prediction=_PREDICTION_NAMES[flags & 3],
            entropy_id=(flags >> 2) & 7,
            height=height,
            width=width,
            steps=steps,
            gamma=gamma_milli / 1000,
            seed=seed,
            latent_hw=(latent_h, latent_w),
            strings=strings,
            tile=tile,
            margin=margin,
            portable=bool(flags >> 5 & 1),
            level=level,
        )

    def header_dict(self) -> dict:
        """JSON-friendly description of the header (what ``cdc info`` prints)."""
        return {
            "format_version": self.version,
            "fingerprint": self.fingerprint.hex(),
            "prediction": self.prediction,
            "entropy_model_id": self.entropy_id,
            "entropy_model": _ENTROPY_MODEL_NAMES.get(self.entropy_id, "unknown"),
            "height": self.height,
            "width": self.width,
            "steps": self.steps,
            "gamma": self.gamma,
            "seed": self.seed,
            "latent_hw": list(self.latent_hw),
            "tile": self.tile,
            "tile_margin": self.margin,
            "entropy_parameters": "float64" if self.portable else "float32",
            **({} if self.level is None else {"rate_level": self.level}),
            "string_bytes": [len(s) for s in self.strings],
        }


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int, what: str = "") -> bytes:
        if self.pos + n > len(self.data):
            if what and n > len(self.data):  # a length no file of this size could hold: the field itself is bad
                raise BitstreamError(f"corrupt {what} length ({n} bytes in a {len(self.data)}-byte file)")
            raise BitstreamError(
                f"truncated or corrupt: needs at least {self.pos + n} bytes, the file has {len(self.data)}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(chunk)

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise BitstreamError("invalid varint (longer than 64 bits)")
