"""Encoder effort (:mod:`cdc.coding.refine`): the refined latent codes into the same format, decodes with
any decoder, is reproducible, and lowers the model's own objective on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_codec
from PIL import Image

from cdc.cli import main
from cdc.coding.coder import Coder, DecodeError
from cdc.images import from_uint8
from cdc.models.layers import pad_to_multiple
from cdc.zoo.checkpoint import load_codec

CROP = REPO / "tests" / "assets" / "heldout" / "building-256.png"


def _objective(codec, data: bytes, x: torch.Tensor, coder: Coder) -> float:
    """``lmbda * bpp`` of the real file plus the refinement's distortion term of what it decodes to."""
    from cdc.coding.refine import RefineSettings

    stream = coder.parse(data)
    with torch.no_grad():
        y_hat = codec.entropy.decompress(stream.strings, stream.latent_hw)
        x_aux = codec.g_s(y_hat)[..., : x.shape[-2], : x.shape[-1]]
    mse = float((x_aux.clamp(-1, 1) - (x * 2 - 1)).square().mean())
    bpp = 8 * len(data) / (x.shape[-2] * x.shape[-1])
    return codec.config.loss.lmbda * bpp + RefineSettings(1).distortion * mse


@pytest.fixture(scope="module")
def shipped():
    codec = load_codec(REPO / "cdc" / "zoo" / "weights" / "small-q1.safetensors")
    return codec, Coder(codec)


def test_effort_keeps_the_format_is_reproducible_and_tiles(shipped):
    _, coder = shipped
    x = from_uint8(np.asarray(Image.open(CROP).convert("RGB"))[:70, :90])
    plain = coder.encode(x).data
    refined = coder.encode(x, effort=1).data
    assert refined != plain and refined == coder.encode(x, effort=1).data
    assert coder.parse(refined).height == 70 and coder.decode_uint8(refined)[0].shape == (70, 90, 3)
    tiled = coder.encode(x, tile=64, margin=16, effort=1).data
    assert tiled != coder.encode(x, tile=64, margin=16).data and coder.decode_uint8(tiled)[0].shape == (70, 90, 3)
    random_state = torch.get_rng_state()
    coder.encode(x, effort=1)
    assert torch.equal(torch.get_rng_state(), random_state)  # the caller's random stream is untouched


@pytest.mark.parametrize("effort", [-1, 4, 1.5])
def test_an_unknown_effort_is_refused(effort):
    with pytest.raises(DecodeError, match=r"effort .* is not a level \(an integer in 0-3\)"):
        Coder(tiny_codec()).encode(torch.rand(1, 3, 32, 32), effort=effort)


def test_a_model_without_auxiliary_synthesis_says_so():
    coder = Coder(tiny_codec(overrides=("model.aux_synthesis=false", "diffusion.residual=false", "loss.aux_mse=0",
                                        "train.autoencoder_fraction=0")))
    with pytest.raises(DecodeError, match="encoder effort needs a model with an auxiliary synthesis"):
        coder.encode(torch.rand(1, 3, 32, 32), effort=1)


def test_effort_lowers_a_shipped_models_objective_on_a_held_out_photo(shipped):
    codec, coder = shipped
    x = from_uint8(np.asarray(Image.open(CROP).convert("RGB")))
    before = _objective(codec, coder.encode(x).data, x, coder)
    after = _objective(codec, coder.encode(x, effort=2).data, x, coder)
    assert after < 0.99 * before, (before, after)


def test_cdc_compress_effort(tmp_path, capsys):
    out = tmp_path / "a.cdc"
    assert main(["compress", str(CROP), "-m", "small-q1", "-o", str(out), "--effort", "1"]) == 0
    assert main(["decompress", str(out), "-m", "small-q1", "-o", str(tmp_path / "a.png")]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(CROP), "-m", "small-q1", "-o", str(tmp_path / "b.cdc"), "--effort", "4"])
    assert exc.value.code == 2 and "invalid choice: 4" in capsys.readouterr().err


def test_padding_is_not_part_of_the_distortion():
    """An image whose padding differs from what the encoder saw refines the same: only its own pixels count."""
    from cdc.coding.refine import LatentRefiner, RefineSettings

    codec = tiny_codec()
    x0 = pad_to_multiple(torch.rand(1, 3, 40, 40) * 2 - 1, 64)
    other = x0.clone()
    other[..., 40:, :] = 1.0
    with torch.no_grad():
        y = codec.g_a(x0)
    refiner = LatentRefiner(codec)
    a = refiner.refine(y, x0, (40, 40), RefineSettings(5))
    b = refiner.refine(y, other, (40, 40), RefineSettings(5))
    assert torch.equal(a, b)
