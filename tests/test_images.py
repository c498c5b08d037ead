import numpy as np
import pytest
from badimages import make_corpus

from shards.images import ImageDecodeError, decode_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("clean.jpg", None),
        ("clean.png", None),
        ("cmyk.jpg", "CMYK"),
        ("gray16.png", "8-bit"),
        ("rgba.png", "alpha"),
        ("palette.png", "palette"),
        ("gray.png", "grayscale"),
        ("rotated.jpg", "EXIF orientation"),
    ],
)
def test_decodable_inputs_become_8bit_rgb(corpus, name, note):
    decoded = decode_image(corpus[name].read_bytes())
    assert decoded.image.mode == "RGB"
    if note is None:
        assert decoded.clean
    else:
        assert any(note in n for n in decoded.notes), decoded.notes


def test_exif_rotation_swaps_the_sides(corpus):
    assert decode_image(corpus["rotated.jpg"].read_bytes()).image.size == (96, 128)


def test_16bit_is_scaled_not_clipped(corpus):
    arr = np.asarray(decode_image(corpus["gray16.png"].read_bytes()).image)
    assert arr.max() > 200 and arr.min() < 60


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.jpg", "truncated or corrupt"),
        ("empty.png", "empty file"),
        ("text.png", "not a recognised image"),
        ("bomb.png", "over the limit"),
    ],
)
def test_broken_inputs_are_refused_with_a_reason(corpus, name, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(corpus[name].read_bytes(), max_pixels=10_000 * 10_000)


def test_minimum_side(corpus):
    with pytest.raises(ImageDecodeError, match="smaller than the minimum side"):
        decode_image(corpus["tiny8x8.png"].read_bytes(), min_side=16)
