import struct
import zlib

import pytest

from cdc.coding.bitstream import MAGIC, Bitstream, BitstreamError


def stream(**kw):
    fields = dict(fingerprint=bytes(range(6)), prediction="sample", entropy_id=0, height=333, width=500,
                  steps=17, gamma=0.8, seed=42, latent_hw=(24, 32), strings=[b"\x01" * 40, b"\x02" * 300])
    fields.update(kw)
    return Bitstream(**fields)


def test_round_trip():
    s = stream()
    assert Bitstream.from_bytes(s.to_bytes()) == s


def test_container_overhead_is_at_most_32_bytes():
    s = stream()
    overhead = len(s.to_bytes()) - sum(len(x) for x in s.strings)
    assert overhead <= 32, overhead


@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v"])
@pytest.mark.parametrize("portable", [True, False])
def test_header_fields_survive(prediction, portable):
    s = stream(prediction=prediction, seed=2**40, steps=1000, gamma=0.0, height=1, width=70000, portable=portable)
    assert Bitstream.from_bytes(s.to_bytes()) == s


def test_float64_flag_is_bit_5_and_unknown_flag_bits_are_refused():
    """Bit 5 marks float64 entropy parameters; a file from a newer build (bit 7) is refused, not
    decoded with the wrong arithmetic."""
    flags_at = len(MAGIC) + 1 + 6
    assert stream(portable=True).to_bytes()[flags_at] == 0x20
    assert stream(portable=False).to_bytes()[flags_at] == 0x00
    data = bytearray(stream().to_bytes())
    data[flags_at] |= 0x80
    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(BitstreamError, match="invalid flags byte 0xa0"):
        Bitstream.from_bytes(bytes(data))


@pytest.mark.parametrize("level", [0.0, 2.5, 3.137, 65.535])
def test_rate_level_is_flag_bit_6_and_two_bytes(level):
    """A variable-rate model's file carries its rate level (to 1e-3) after gamma; fixed-rate files
    are byte for byte what they were."""
    s = stream(level=level)
    data = s.to_bytes()
    assert data[len(MAGIC) + 1 + 6] == 0x60
    assert len(data) == len(stream().to_bytes()) + 2
    assert Bitstream.from_bytes(data) == s
    assert s.header_dict()["rate_level"] == level
    assert "rate_level" not in stream().header_dict()


@pytest.mark.parametrize("level", [-0.001, 65.536])
def test_rate_level_outside_the_field_is_refused(level):
    with pytest.raises(ValueError, match="rate level"):
        stream(level=level).to_bytes()


def test_wrong_magic():
    data = bytearray(stream().to_bytes())
    data[0] = 0x50
    with pytest.raises(BitstreamError, match="wrong magic"):
        Bitstream.from_bytes(bytes(data))


def test_unknown_version():
    data = bytearray(stream().to_bytes())
    data[len(MAGIC)] = 9
    with pytest.raises(BitstreamError, match="version 9"):
        Bitstream.from_bytes(bytes(data))


def test_crc_mismatch_on_any_flipped_payload_byte():
    data = stream().to_bytes()
    for pos in (20, len(data) // 2, len(data) - 5):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(bytes(bad))


def test_every_truncation_is_refused():
    data = stream().to_bytes()
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(data[:n])


def test_trailing_bytes_are_refused():
    with pytest.raises(BitstreamError, match="trailing"):
        Bitstream.from_bytes(stream().to_bytes() + b"\x00")


def test_crc_is_checked_even_when_structure_parses():
    data = bytearray(stream().to_bytes())
    body = bytes(data[:-4])
    data[-4:] = struct.pack(">I", zlib.crc32(body) ^ 1)
    with pytest.raises(BitstreamError, match="CRC mismatch"):
        Bitstream.from_bytes(bytes(data))
