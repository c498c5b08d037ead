import pytest
import torch

from cdc.config import DiffusionConfig
from cdc.models.diffusion import GaussianDiffusion
from cdc.models.sampler import DDIMSampler, SamplerError, ddim_timesteps

PREDICTIONS = ("sample", "epsilon", "v")


def diffusion(prediction="sample", schedule="cosine", timesteps=1000, gamma=5.0):
    return GaussianDiffusion(DiffusionConfig(prediction=prediction, schedule=schedule, timesteps=timesteps,
                                             min_snr_gamma=gamma))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedules_decrease_from_one_to_zero(schedule):
    abar = diffusion(schedule=schedule).alphas_cumprod
    assert (abar[1:] < abar[:-1]).all()
    assert abar[0] > 0.99 and abar[-1] < 0.01


def test_paper_schedule_matches_the_reference_values():
    abar = diffusion(timesteps=8193).alphas_cumprod
    assert abar[0] == pytest.approx(1 - 5e-6, abs=2e-6)  # the official code's schedule: ~1-5e-6 ... ~3.6e-11
    assert 1e-12 < abar[-1] < 1e-9


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_conversions_agree(prediction):
    """The target of every parameterization converts back to the true (x0, eps)."""
    torch.manual_seed(0)
    diff = diffusion(prediction)
    # float64: at t = T-1 recovering x0 from eps divides by sqrt(abar) ~ 1e-3 (fp32 loses digits)
    x0, eps = torch.rand(4, 3, 8, 8, dtype=torch.float64) * 2 - 1, torch.randn(4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([1, 100, 500, 999])
    x_t = diff.q_sample(x0, t, eps)
    x0_back, eps_back = diff.to_x0_eps(diff.target(x0, eps, t), x_t, t)
    torch.testing.assert_close(x0_back, x0, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(eps_back, eps, atol=1e-9, rtol=1e-9)


def test_min_snr_weights_make_all_targets_equivalent():
    """min(SNR, g)*|x0-x0'|^2 == w_eps*|eps-eps'|^2 == w_v*|v-v'|^2 for the same x0 error."""
    torch.manual_seed(0)
    t = torch.tensor([10, 300, 700])
    x0, eps = torch.rand(3, 3, 4, 4) * 2 - 1, torch.randn(3, 3, 4, 4)
    x0_err = x0 + 0.1 * torch.randn_like(x0)
    losses = []
    for prediction in PREDICTIONS:
        diff = diffusion(prediction)
        x_t = diff.q_sample(x0, t, eps)
        # the output that implies x0_err at x_t:
        a, s = diff._coefs(t, x0)
        eps_err = (x_t - a * x0_err) / s
        output = {"sample": x0_err, "epsilon": eps_err, "v": a * eps_err - s * x0_err}[prediction]
        losses.append(diff.loss(output, diff.target(x0, eps, t), t))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(losses[0], losses[2], rtol=1e-3, atol=1e-6)


def test_ddim_timesteps_match_the_official_grid():
    assert ddim_timesteps(8193, 17) == list(range(0, 8193, 512))
    assert ddim_timesteps(8193, 65)[:3] == [0, 128, 256]
    assert ddim_timesteps(8193, 1) == [8192]
    for bad in (0, 8194):
        with pytest.raises(SamplerError):
            ddim_timesteps(8193, bad)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_ddim_with_an_oracle_denoiser_returns_x0(prediction, steps):
    """If the network predicts the truth, DDIM (eta=0) lands exactly on x0 from any start."""
    diff = diffusion(prediction)
    x0 = torch.rand(1, 3, 8, 8) * 2 - 1

    def oracle(x_t, t):
        a, s = diff._coefs(t, x_t)
        eps = (x_t - a * x0) / s
        return diff.target(x0, eps, t)

    out = DDIMSampler(diff, steps=steps, gamma=0.8).sample(oracle, (1, 3, 8, 8), seed=3)
    # epsilon is ill-conditioned at high t in fp32 (x0 = (x_t - s*eps)/a with a ~ 1e-3)
    torch.testing.assert_close(out, x0, atol=5e-3 if prediction == "epsilon" else 1e-4, rtol=0)


def test_sampler_seed_and_gamma():
    diff = diffusion()
    sampler = DDIMSampler(diff, steps=3, gamma=0.8)
    torch.testing.assert_close(sampler.start_noise((2, 3), 7), sampler.start_noise((2, 3), 7))
    assert not torch.equal(sampler.start_noise((2, 3), 7), sampler.start_noise((2, 3), 8))
    assert DDIMSampler(diff, steps=3, gamma=0.0).start_noise((2, 3), 7).abs().sum() == 0
    with pytest.raises(SamplerError):
        DDIMSampler(diff, steps=3, gamma=-1)
