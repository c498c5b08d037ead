"""Variable-rate models (:mod:`cdc.models.gain`): gain units, per-image λ in training, the rate level
in the bitstream, rate control by quality and by target bpp, and a fixed-rate model starting one."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import photo, photo_tensor, tiny_codec

from cdc.cli import main
from cdc.coding.bitstream import Bitstream
from cdc.coding.coder import Coder, DecodeError
from cdc.config import ConfigError, load_config
from cdc.models.gain import level_lambdas, quality_level
from cdc.training.losses import RateDistortionPerceptionLoss
from cdc.zoo.checkpoint import fingerprint, save_codec

LAMBDAS = "model.rate_lambdas=[0.09,0.045,0.02,0.01,0.005]"


def spread(codec):
    """An untrained model's latent is far below the rounding step at every level: gains 1 to e^6
    apart make the levels' files differ as a trained model's do."""
    with torch.no_grad():
        offset = torch.linspace(0, 6, codec.gain.levels)[:, None]
        codec.gain.log_gain += offset
        codec.gain.log_inverse -= offset
    return codec


@pytest.fixture(scope="module")
def variable():
    return spread(tiny_codec(overrides=(LAMBDAS,)))


@pytest.fixture(scope="module")
def coder(variable):
    return Coder(variable)


@pytest.fixture(scope="module")
def image():
    return photo_tensor("astronaut", (96, 130))


@pytest.mark.parametrize("lambdas", ["[0.01]", "[0.01,0.02]", "[0.02,0.02]", "[0.02,-0.01]"])
def test_rate_lambdas_must_be_several_and_decreasing(lambdas):
    with pytest.raises(ConfigError, match=r"model\.rate_lambdas"):
        load_config("tiny", [f"model.rate_lambdas={lambdas}"])


def test_fixed_rate_fingerprints_do_not_see_the_field():
    """Models from before variable rates keep their fingerprints (and their files decode)."""
    assert "rate_lambdas" not in load_config("tiny").codec_dict()["model"]
    assert load_config("tiny", [LAMBDAS]).codec_dict()["model"]["rate_lambdas"] == [0.09, 0.045, 0.02, 0.01, 0.005]
    assert fingerprint(tiny_codec()) != fingerprint(tiny_codec(overrides=(LAMBDAS,)))


def test_gains_start_at_the_square_root_of_the_lambda_ratio_and_interpolate_geometrically():
    variable = tiny_codec(overrides=(LAMBDAS,))
    lambdas = variable.config.model.rate_lambdas
    reference = math.exp(np.mean(np.log(lambdas)))
    gain = variable.gain
    y = torch.ones(1, variable.config.model.latent_channels, 2, 2)
    for level, lmbda in enumerate(lambdas):
        scaled = gain(y, torch.tensor([float(level)]))
        assert torch.allclose(scaled, torch.full_like(y, math.sqrt(reference / lmbda)), rtol=1e-5)
        assert torch.allclose(gain.inverse(scaled, torch.tensor([float(level)])), y, rtol=1e-5)
    between = gain(y, torch.tensor([1.5]))
    assert torch.allclose(between, (gain(y, torch.tensor([1.0])) * gain(y, torch.tensor([2.0]))).sqrt(), rtol=1e-5)
    at = level_lambdas(lambdas, torch.tensor([0.0, 1.5, 4.0]))
    assert torch.allclose(at, torch.tensor([0.09, math.sqrt(0.045 * 0.02), 0.005]), rtol=1e-5)
    assert quality_level(0, 5) == 0 and quality_level(100, 5) == 4 and quality_level(50, 5) == 2


def test_training_weighs_each_images_rate_by_its_levels_lambda(variable):
    torch.manual_seed(0)
    x = photo_tensor("astronaut", (64, 128)).repeat(2, 1, 1, 1)[..., :64, :64]
    level = torch.tensor([0.0, 4.0])
    out = variable.train()(x, level=level)
    variable.eval()
    assert torch.allclose(out["lmbda"], torch.tensor([0.09, 0.005]))
    loss = RateDistortionPerceptionLoss(variable.config.loss, variable.diffusion)
    terms = loss(out, 64 * 64)
    from cdc.training.losses import bits_per_pixel

    bpp = bits_per_pixel(out["likelihoods"], 64 * 64)
    expected = (out["lmbda"] * bpp).mean() + terms["diffusion"] + variable.config.loss.aux_mse * terms["aux_mse"]
    assert torch.allclose(terms["loss"], expected, rtol=1e-5)
    assert bpp[1] > bpp[0]  # the higher level codes more finely


@pytest.mark.parametrize(("phase", "trains"), [("entropy", ()), ("decoder", ("log_inverse",)),
                                               ("autoencoder", ("log_gain", "log_inverse"))])
def test_the_gains_freeze_with_the_latent(phase, trains):
    """In the entropy phase nothing but the entropy model learns (a rate-only loss would shrink the
    gains to zero); in the decoder phase the latent, gains included, is frozen but its inverse
    gains are the decoder's."""
    codec = tiny_codec(overrides=(LAMBDAS, "model.aux_synthesis=true", "loss.aux_mse=1"))
    codec.train()
    out = codec(photo_tensor("astronaut", (64, 64)), phase=phase)
    RateDistortionPerceptionLoss(codec.config.loss, codec.diffusion)(out, 64 * 64)["loss"].backward()
    got = tuple(n for n in ("log_gain", "log_inverse") if getattr(codec.gain, n).grad is not None)
    assert got == trains


def test_quality_is_monotone_in_rate_and_every_file_decodes(coder, image):
    sizes = []
    for quality in (0, 25, 50, 75, 100):
        encoded = coder.encode(image, quality=quality, steps=1, gamma=0.0)
        header = Bitstream.from_bytes(encoded.data)
        assert header.level == encoded.level == quality / 25
        decoded, stream = coder.decode(encoded.data)
        assert decoded.shape == image.shape and stream.level == header.level
        sizes.append(len(encoded.data))
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    default = coder.encode(image, steps=1)
    assert default.level == 3.0  # the default quality, 75
    assert coder.estimate_bits(image) / (96 * 130) == pytest.approx(default.bpp_estimated)


def test_a_level_between_the_trained_ones_decodes_as_coded(variable, coder, image):
    """The file's level (kept to 1e-3) is the one the encoder coded with: the decode equals the
    codec's own decode of its latent at that level."""
    encoded = coder.encode(image, level=2.3456, steps=1, gamma=0.0)
    assert encoded.level == 2.346
    decoded, _ = coder.decode(encoded.data)
    out = variable.compress(image, level=2.346)
    direct = variable.decompress(out["strings"], out["shape"], tuple(image.shape[-2:]), steps=1, gamma=0.0,
                                 level=2.346)["x_hat"].clamp(0, 1)
    assert torch.allclose(decoded, direct, atol=1e-6)


def test_a_target_bpp_gives_the_highest_rate_under_it(coder, image):
    low = coder.encode(image, quality=0, steps=1).bpp
    high = coder.encode(image, quality=100, steps=1).bpp
    target = (low + high) / 2
    encoded = coder.encode(image, bpp=target, steps=1)
    assert encoded.bpp <= target
    finer = coder.encode(image, level=min(encoded.level + 0.01, 4.0), steps=1)
    assert finer.bpp > target or encoded.bpp >= 0.99 * target
    coder.decode(encoded.data)
    assert coder.encode(image, bpp=high * 2, steps=1).level == 4.0
    with pytest.raises(DecodeError, match="below this model's lowest rate"):
        coder.encode(image, bpp=low / 2, steps=1)


def test_rate_control_tiles_and_refines(image):
    """Tiled coding and encoder effort code at the level's gains too (a model with aux synthesis)."""
    coder = Coder(spread(tiny_codec(overrides=(LAMBDAS, "model.aux_synthesis=true", "loss.aux_mse=1",
                                               "diffusion.residual=true"))))
    for kwargs in ({"tile": 64}, {"effort": 1}):
        encoded = coder.encode(image, quality=40, steps=1, gamma=0.0, **kwargs)
        assert Bitstream.from_bytes(encoded.data).level == 1.6
        decoded, _ = coder.decode(encoded.data)
        assert decoded.shape == image.shape


def test_rate_choices_are_refused_clearly(coder, image):
    fixed = Coder(tiny_codec())
    with pytest.raises(DecodeError, match="quality needs a variable-rate model"):
        fixed.encode(image, quality=50)
    with pytest.raises(DecodeError, match="bpp needs a variable-rate model"):
        fixed.encode(image, bpp=0.5)
    with pytest.raises(DecodeError, match="quality 101 outside"):
        coder.encode(image, quality=101)
    with pytest.raises(DecodeError, match=r"rate level 4\.5 outside"):
        coder.encode(image, level=4.5)
    with pytest.raises(DecodeError, match="not quality and bpp"):
        coder.encode(image, quality=50, bpp=0.5)
    with pytest.raises(DecodeError, match="target bpp must be a positive number"):
        coder.encode(image, bpp=float("nan"))


def test_a_file_and_a_model_must_agree_on_variable_rate(variable, image):
    """A fixed-rate file carries no level and a variable-rate one must: each is refused by the other
    kind of model, with the reason, even when the weights otherwise match."""
    fixed = Coder(tiny_codec())
    coder = Coder(variable)
    data = coder.encode(image, steps=1).data
    stream = Bitstream.from_bytes(data)
    fixed_file = Bitstream(**{**vars(stream), "level": None}).to_bytes()
    with pytest.raises(DecodeError, match="variable-rate and the file has no rate level"):
        coder.decode(fixed_file)
    mine = Bitstream(**{**vars(Bitstream.from_bytes(fixed.encode(image, steps=1).data)), "level": 1.0}).to_bytes()
    with pytest.raises(DecodeError, match="has a rate level and the model is fixed-rate"):
        fixed.decode(mine)
    beyond = Bitstream(**{**vars(stream), "level": 7.0}).to_bytes()
    with pytest.raises(DecodeError, match=r"rate level 7.0 outside this model's \[0, 4\]"):
        coder.decode(beyond)


def test_a_fixed_rate_model_starts_a_variable_rate_run(tmp_path):
    from cdc.models.codec import CDCCodec
    from cdc.training.trainer import init_weights

    source = tiny_codec(seed=3)
    path = save_codec(source, tmp_path / "fixed")
    run = CDCCodec(load_config("tiny", [LAMBDAS]))
    start = run.gain.log_gain.detach().clone()
    init_weights(run, str(path))
    assert torch.equal(run.unet.head[-1].weight, source.unet.head[-1].weight)
    assert torch.equal(run.gain.log_gain, start)  # the gains keep their start values
    back = CDCCodec(load_config("tiny"))
    with pytest.raises(Exception, match="architecture differs"):
        init_weights(back, str(save_codec(run, tmp_path / "variable")))


def test_cdc_compress_quality_and_bpp(tmp_path, capsys, variable):
    from PIL import Image

    model = save_codec(variable, tmp_path / "vr")
    png = tmp_path / "a.png"
    Image.fromarray(photo("astronaut", (96, 130))).save(png)
    assert main(["compress", str(png), "-m", str(model), "-o", str(tmp_path / "q.cdc"), "--quality", "50"]) == 0
    assert "rate level 2," in capsys.readouterr().out
    assert main(["compress", str(png), "-m", str(model), "-o", str(tmp_path / "b.cdc"), "--bpp", "8"]) == 0
    assert "rate level 4," in capsys.readouterr().out
    assert main(["decompress", str(tmp_path / "q.cdc"), "-m", str(model), "-o", str(tmp_path / "q.png")]) == 0
    assert main(["info", str(tmp_path / "q.cdc")]) == 0
    assert '"rate_level": 2.0' in capsys.readouterr().out
    fixed = save_codec(tiny_codec(), tmp_path / "fixed")
    assert main(["compress", str(png), "-m", str(fixed), "-o", str(tmp_path / "f.cdc"), "--quality", "50"]) == 1
    err = capsys.readouterr().err
    assert "a.png: quality needs a variable-rate model" in err and not (tmp_path / "f.cdc").exists()
    for bad in (["--quality", "50", "--bpp", "0.3"], ["--quality", "120"], ["--bpp", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["compress", str(png), "-m", str(model), "-o", str(tmp_path / "x.cdc"), *bad])
        assert exc.value.code == 2
    capsys.readouterr()


def test_the_service_takes_quality_and_bpp(tmp_path, variable):
    from cdc.images import encode_png
    from cdc.registry.pyfunc import CDCPyfunc

    wrapped = CDCPyfunc()
    wrapped.load_context(SimpleNamespace(artifacts={"checkpoint": str(save_codec(variable, tmp_path / "vr"))}))
    request = pd.DataFrame({"image": [encode_png(photo("astronaut", (96, 130)))]})
    low = wrapped.predict(None, request, {"quality": 0.0, "steps": 1})
    high = wrapped.predict(None, request, {"quality": 100.0, "steps": 1})
    assert low["error"][0] is None and high["error"][0] is None and low["bpp"][0] < high["bpp"][0]
    target = wrapped.predict(None, request, {"bpp": float(high["bpp"][0]) * 0.9, "steps": 1})
    assert target["error"][0] is None and target["bpp"][0] <= high["bpp"][0] * 0.9
    assert "must be a number" in wrapped.predict(None, request, {"quality": "high"})["error"][0]


def test_the_rate_search_is_bounded_and_lands_just_under_the_target():
    """On a rate that grows with the level (here exponentially, as the members' do), the search takes
    at most 14 encodes and returns the highest level under the target."""
    from cdc.coding.rate import RATE_SEARCH_STEPS, RateError, encode_at_bpp

    calls = []

    def encode(level):
        calls.append(level)
        return SimpleNamespace(bpp=0.1 * math.exp(0.4 * level), level=level)

    for target in (0.12, 0.2, 0.33, 0.45):
        calls.clear()
        best = encode_at_bpp(encode, target, 4.0)
        assert best.bpp <= target and (best.bpp >= 0.99 * target or encode(best.level + 0.002).bpp > target)
        assert len(calls) <= RATE_SEARCH_STEPS + 3
    assert encode_at_bpp(encode, 1.0, 4.0).level == 4.0
    with pytest.raises(RateError, match=r"0\.05 bpp is below this model's lowest rate"):
        encode_at_bpp(encode, 0.05, 4.0)
    for bad in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(RateError, match="positive number"):
            encode_at_bpp(encode, bad, 4.0)
