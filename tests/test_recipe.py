"""The fast-start recipe: config checks, training phases, the noise proxy, the residual decoder."""

import pytest
import torch
from conftest import photo_tensor, tiny_codec

from cdc.config import ConfigError, load_config
from cdc.training.losses import RateDistortionPerceptionLoss
from cdc.training.phases import one_step_inputs, training_phase


def _batch(size: int = 64) -> torch.Tensor:
    return photo_tensor(size=(size, size)).repeat(2, 1, 1, 1)


def test_presets_default_to_the_fast_recipe_and_paper_recipe_restores_the_official_one():
    fast, paper = load_config("small"), load_config("small", recipe="paper")
    assert (fast.model.analysis, fast.model.aux_synthesis, fast.diffusion.residual) == ("gdn", True, True)
    assert fast.diffusion.snr_floor == 1 and fast.loss.aux_mse > 0 and fast.train.autoencoder_fraction > 0
    assert (paper.model.analysis, paper.model.aux_synthesis, paper.diffusion.residual) == ("resnet", False, False)
    assert paper.diffusion.snr_floor == 0 and paper.loss.aux_mse == 0 and paper.train.phase_steps() == (0, 0)
    # the recipe only changes the recipe: architecture widths, schedule and decode stay
    assert paper.model.unet_mults == fast.model.unet_mults and paper.sampler == fast.sampler
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_config("small", recipe="nope")


@pytest.mark.parametrize("overrides, message", [
    (["diffusion.residual=true", "model.aux_synthesis=false", "loss.aux_mse=0", "train.autoencoder_fraction=0"],
     "diffusion.residual needs model.aux_synthesis"),
    (["model.aux_synthesis=false", "diffusion.residual=false", "train.autoencoder_fraction=0"],
     "loss.aux_mse needs model.aux_synthesis"),
    (["loss.aux_mse=0"], "train.autoencoder_fraction needs loss.aux_mse"),
    (["train.autoencoder_fraction=0.8", "train.freeze_latent_fraction=0.3"], "sum <= 1"),
    (["diffusion.snr_floor=6"], "snr_floor must be in"),
    (["train.one_step_fraction=1.5"], "one_step_fraction must be in"),
    (["train.entropy_fraction=-0.1"], "entropy_fraction must be in"),
    (["model.analysis=vit"], "model.analysis must be one of"),
])
def test_inconsistent_recipes_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_training_phases_follow_the_fractions_and_a_fine_tune_is_joint():
    tc = load_config("tiny", ["train.max_steps=100", "train.autoencoder_fraction=0.3",
                              "train.freeze_latent_fraction=0.2"]).train
    phases = [training_phase(s, tc) for s in range(100)]
    assert phases == ["autoencoder"] * 30 + ["decoder"] * 20 + ["joint"] * 50
    assert {training_phase(s, tc, fine_tune=True) for s in range(100)} == {"joint"}
    tc = load_config("tiny", ["train.max_steps=100", "train.autoencoder_fraction=0.3",
                              "train.freeze_latent_fraction=0.2", "train.entropy_fraction=0.1"]).train
    phases = [training_phase(s, tc) for s in range(100)]
    assert phases == ["autoencoder"] * 30 + ["decoder"] * 20 + ["joint"] * 40 + ["entropy"] * 10
    assert [training_phase(s, tc, fine_tune=True) for s in range(100)] == ["joint"] * 90 + ["entropy"] * 10


def test_one_step_steps_are_spread_evenly_and_feed_the_one_step_decodes_input():
    batch = _batch()
    for fraction, expected in ((0.0, []), (0.25, [3, 7, 11, 15]), (1.0, list(range(16)))):
        tc = load_config("tiny", [f"train.one_step_fraction={fraction}"]).train
        assert [s for s in range(16) if one_step_inputs(s, tc, 1000, batch)] == expected
    inputs = one_step_inputs(0, load_config("tiny", ["train.one_step_fraction=1"]).train, 1000, batch)
    assert inputs["t"].tolist() == [999, 999] and not inputs["x_t"].any() and inputs["x_t"].shape == batch.shape


@pytest.mark.parametrize("prediction", ["sample", "v"])
def test_a_one_step_training_pass_computes_the_one_step_decode(prediction):
    codec = tiny_codec(overrides=(f"diffusion.prediction={prediction}",)).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a U-Net that adds something: at initialisation its correction is zero
        for p in codec.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = photo_tensor(size=(64, 64))
    t = torch.full((1,), codec.diffusion.timesteps - 1)
    with torch.no_grad():
        out = codec(x, t=t, x_t=torch.zeros_like(x))
        decoded = codec.reconstruct(codec.compress(x)["y_hat"], steps=1, gamma=0.0)
        noised = codec(x, t=t)
    assert torch.allclose(out["x0_pred"].clamp(-1, 1), decoded, atol=1e-4)
    assert not torch.allclose(noised["x0_pred"].clamp(-1, 1), decoded, atol=1e-3)
    # the regression target is the output the clean image implies at that input
    assert torch.allclose(codec.diffusion.to_x0_eps(out["target"], torch.zeros_like(x), t)[0], out["x0"], atol=1e-4)
    with pytest.raises(ValueError, match="needs its timesteps"):
        codec(x, x_t=torch.zeros_like(x))


def test_snr_floor_weights_high_noise_steps():
    paper, fast = (tiny_codec(overrides=o).diffusion for o in (("diffusion.snr_floor=0",), ()))
    t = torch.tensor([0, 500, 999])
    w_paper, w_fast = paper.loss_weight(t), fast.loss_weight(t)
    assert w_paper[-1] < 1e-3  # min-SNR-5 alone: the last steps teach the decoder almost nothing
    assert w_fast[-1] == pytest.approx(1.0) and w_fast[0] == pytest.approx(5.0)


def test_autoencoder_phase_trains_only_the_latent_path_with_the_noise_proxy():
    codec = tiny_codec().train()
    out = codec(_batch(), phase="autoencoder")
    assert "output" not in out and out["x_aux"].shape == (2, 3, 64, 64)
    terms = RateDistortionPerceptionLoss(codec.config.loss, codec.diffusion)(out, 64 * 64)
    assert terms["diffusion"] == 0 and terms["aux_mse"] > 0
    (terms["loss"] + out["aux_loss"]).backward()
    grads = {name.split(".")[0]: p.grad is not None for name, p in codec.named_parameters()}
    assert grads["g_a"] and grads["g_s"] and grads["entropy"] and not grads["unet"] and not grads["context"]
    # noise proxy: the decoder path sees y + U(-1/2, 1/2), not integers around the mean
    y = codec.g_a(_batch() * 2 - 1)
    y_noisy, _ = codec.entropy(y, noise=True)
    y_round, _ = codec.entropy(y)
    assert not torch.allclose(y_noisy, y_round) and (y_noisy - y).abs().max() <= 0.5
    codec.eval()
    y_eval, _ = codec.entropy(y, noise=True)  # never in eval: decoding is always integers
    assert torch.equal(y_eval, y_round)


def test_entropy_phase_fits_only_the_entropy_model_to_the_rate():
    codec = tiny_codec().train()
    out = codec(_batch(), phase="entropy")
    assert set(out) == {"likelihoods", "x0", "aux_loss"}  # nothing downstream of the latent runs
    terms = RateDistortionPerceptionLoss(codec.config.loss, codec.diffusion)(out, 64 * 64)
    assert terms["loss"].item() == pytest.approx(codec.config.loss.lmbda * terms["bpp"].item())
    assert terms["aux_mse"] == 0 and terms["diffusion"] == 0
    (terms["loss"] + out["aux_loss"]).backward()
    trained = {name.split(".")[0] for name, p in codec.named_parameters() if p.grad is not None}
    assert trained == {"entropy"}
    assert any(p.grad.abs().sum() > 0 for p in codec.entropy.parameters() if p.grad is not None)


def test_decoder_phase_freezes_the_latent():
    codec = tiny_codec().train()
    out = codec(_batch(), phase="decoder")
    terms = RateDistortionPerceptionLoss(codec.config.loss, codec.diffusion)(out, 64 * 64)
    terms["loss"].backward()
    trained = {name.split(".")[0] for name, p in codec.named_parameters() if p.grad is not None}
    assert {"unet", "context", "g_s"} <= trained and not trained & {"g_a"}
    assert all(p.grad is None for n, p in codec.entropy.named_parameters() if not n.endswith("quantiles"))


def test_residual_decoder_starts_at_the_autoencoder_reconstruction():
    """At initialisation the U-Net adds nothing: the one-step decode is exactly x_aux."""
    codec = tiny_codec()
    x = photo_tensor(size=(64, 64))
    with torch.no_grad():
        y_hat = codec.compress(x)["y_hat"]
        x_aux = codec.g_s(y_hat)
        decoded = codec.reconstruct(y_hat, steps=1, gamma=0.0)
    assert torch.allclose(decoded, x_aux.clamp(-1, 1), atol=1e-6)
    out = codec.train()(_batch(), phase="joint")
    assert torch.allclose(out["x0_pred"], out["x_aux"])


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_residual_works_for_every_parameterization(prediction):
    codec = tiny_codec(overrides=(f"diffusion.prediction={prediction}",)).train()
    out = codec(_batch(), phase="joint")
    assert torch.allclose(out["x0_pred"], out["x_aux"], atol=1e-4)  # zero-initialised correction


def test_paper_recipe_codec_has_no_auxiliary_synthesis():
    codec = tiny_codec(overrides=("model.analysis=resnet", "model.aux_synthesis=false", "diffusion.residual=false",
                                  "loss.aux_mse=0", "train.autoencoder_fraction=0"))
    assert codec.g_s is None
    with pytest.raises(ValueError, match="aux_synthesis"):
        codec.train()(_batch(), phase="autoencoder")


def test_transform_dim_sets_the_autoencoder_width_only():
    wide = tiny_codec(overrides=("model.transform_dim=12",))
    assert wide.g_a.stages[0][0].out_channels == 12 and wide.g_s[0].in_channels == 16  # latent_channels
    assert wide.g_s[-1].in_channels == 12 and wide.g_s[-1].out_channels == 3
    default = tiny_codec()
    assert [p.shape for p in wide.context.parameters()] == [p.shape for p in default.context.parameters()]
    assert [p.shape for p in wide.unet.parameters()] == [p.shape for p in default.unet.parameters()]
