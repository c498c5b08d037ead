import pytest

from cdc.config import PRESETS, ConfigError, config_from_dict, load_config
from cdc.models.codec import CDCCodec


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_round_trip(preset):
    cfg = load_config(preset)
    assert cfg.preset == preset
    assert config_from_dict(cfg.to_dict()) == cfg


def test_overrides_are_coerced_to_field_types():
    cfg = load_config("tiny", ["train.lr=1e-4", "model.unet_mults=[1,2,2,4]", "sampler.clip_x0=false",
                               "train.max_steps=5", "diffusion.prediction=epsilon"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.unet_mults == (1, 2, 2, 4)
    assert cfg.sampler.clip_x0 is False
    assert cfg.train.max_steps == 5
    assert cfg.diffusion.prediction == "epsilon"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key"),
        ("train.lr=fast", "cannot read 'fast' as float"),
        ("diffusion.prediction=x", "diffusion.prediction"),
        ("loss.rho=1.5", "loss.rho"),
        ("sampler.steps=100000", "sampler.steps must not exceed"),
        ("nokey", "a.b=value"),
        ("train.compile_mode=fast", "train.compile_mode must be one of"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_yaml_file_extends_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: small\nloss:\n  lmbda: 0.05\n")
    cfg = load_config(path)
    assert cfg.model == load_config("small").model
    assert cfg.loss.lmbda == 0.05


def test_flat_params_cover_every_leaf():
    flat = load_config("tiny").flat()
    assert flat["model.unet_dim"] == 8 and flat["loss.rho"] == 0.0 and flat["preset"] == "tiny"


def test_paper_preset_has_the_official_parameter_count():
    """The official X-param model (the paper preset with the paper recipe's ResBlock encoder and no
    auxiliary synthesis) has ~53.9 M parameters (U-Net 40.1 M); allow 2 %."""
    codec = CDCCodec(load_config("paper", recipe="paper"))
    total = sum(p.numel() for p in codec.parameters())
    unet = sum(p.numel() for p in codec.unet.parameters())
    assert abs(total - 53.9e6) / 53.9e6 < 0.02, total
    assert abs(unet - 40.1e6) / 40.1e6 < 0.02, unet
