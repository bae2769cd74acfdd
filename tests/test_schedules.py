"""Noise schedules against their closed forms (Ho et al. 2020; Nichol & Dhariwal 2021)."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from ddpm.diffusion.config import DiffusionConfig
from ddpm.diffusion.schedules import (SCHEDULES, NoiseSchedule, cosine_betas, extract,
                                      linear_betas, sigmoid_betas)
from ddpm.errors import ConfigError


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1000, 100, 21])
def test_betas_in_open_unit_interval_and_alpha_bar_decreasing(name, T):
    betas = SCHEDULES[name](T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert bool(((betas > 0) & (betas < 1)).all())
    alphas_cumprod = NoiseSchedule.from_betas(betas).alphas_cumprod
    assert bool((alphas_cumprod[1:] < alphas_cumprod[:-1]).all())
    assert 0 < alphas_cumprod[-1] < alphas_cumprod[0] < 1


def _papers_alpha_bar(name: str, T: int) -> np.ndarray:
    """ᾱ at code index t = 0..T−1 (paper's t + 1) from each paper's formula, in numpy."""
    t = np.arange(1, T + 1) / T
    if name == "linear":  # Ho et al. 2020, §4: β from 1e-4 to 0.02 at T = 1000
        return np.cumprod(1 - np.linspace(1e-4, 0.02, T) * 1000 / T)
    if name == "cosine":  # Nichol & Dhariwal 2021, eq. 17, s = 0.008
        f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        return f(t) / f(0)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731  Jabri et al. 2022, start −3, end 3
    return (sig(3) - sig(6 * t - 3)) / (sig(3) - sig(-3))


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_each_schedule_name_gives_its_papers_alpha_bar(name):
    """`diffusion.schedule: NAME` gives the paper's ᾱ (all but the last step, where the
    cosine and sigmoid clip β at 0.999), and the names are the config's choices."""
    alpha_bar = NoiseSchedule.from_name(name, 1000).alphas_cumprod.numpy()
    np.testing.assert_allclose(alpha_bar[:-1], _papers_alpha_bar(name, 1000)[:-1], rtol=1e-9)
    assert set(SCHEDULES) == set(typing.get_args(typing.get_type_hints(DiffusionConfig)["schedule"]))


def test_linear_endpoints():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    step = torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64)
    assert torch.allclose(betas.diff(), step)
    # improved-diffusion's rescaling keeps the schedule's shape for other T.
    betas_100 = linear_betas(100)
    assert betas_100[0].item() == pytest.approx(1e-3, rel=1e-12)
    assert betas_100[-1].item() == pytest.approx(0.2, rel=1e-12)
    # β_T = 20/T reaches 1 at T = 20: refuse rather than return an invalid schedule.
    with pytest.raises(ConfigError, match=r"^diffusion\.timesteps = 20: must be > 20"):
        NoiseSchedule.from_name("linear", 20)
    assert bool((cosine_betas(2) < 1).all())


@pytest.mark.parametrize("T", [1000, 50])
def test_cosine_alpha_bar_matches_closed_form_where_clip_inactive(T):
    s, max_beta = 0.008, 0.999
    betas = cosine_betas(T, s=s, max_beta=max_beta)
    alphas_cumprod = NoiseSchedule.from_betas(betas).alphas_cumprod.numpy()

    def f(t):
        return np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2

    paper_t = np.arange(1, T + 1)  # code index t is the paper's t+1
    closed_form = f(paper_t) / f(0)
    # Once β has been clipped, every later ᾱ differs from the closed form.
    unclipped = np.cumsum(betas.numpy() >= max_beta) == 0
    assert unclipped.sum() >= T - 1
    np.testing.assert_allclose(alphas_cumprod[unclipped], closed_form[unclipped], rtol=1e-10)
    # f(T) = 0, so the last β is the clip value: the clip is what keeps β < 1.
    assert betas[-1].item() == max_beta


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_posterior_matches_bayes_rule(name):
    """q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0): multiply the two Gaussians.

    Precision 1/β̃ = α_t/β_t + 1/(1 − ᾱ_{t−1});
    mean β̃·(√α_t/β_t · x_t + √ᾱ_{t−1}/(1 − ᾱ_{t−1}) · x_0).
    An independent route to Ho et al. eq. 7, valid from the paper's t = 2 (code t = 1).
    """
    sched = NoiseSchedule.from_name(name, 1000)
    betas = sched.betas.numpy()
    alphas = 1 - betas
    ab = np.cumprod(alphas)
    ab_prev = ab[:-1]
    b, a = betas[1:], alphas[1:]
    variance = 1 / (a / b + 1 / (1 - ab_prev))
    np.testing.assert_allclose(sched.posterior_variance[1:].numpy(), variance, rtol=1e-9)
    np.testing.assert_allclose(sched.posterior_mean_coef1[1:].numpy(),
                               variance * np.sqrt(ab_prev) / (1 - ab_prev), rtol=1e-9)
    np.testing.assert_allclose(sched.posterior_mean_coef2[1:].numpy(),
                               variance * np.sqrt(a) / b, rtol=1e-9)
    # Paper's t = 1: x_0 is known exactly given x_1 and x_0, so β̃ = 0 and μ̃ = x_0.
    assert sched.posterior_variance[0].item() == 0
    assert sched.posterior_mean_coef1[0].item() == pytest.approx(1, abs=1e-12)
    assert sched.posterior_mean_coef2[0].item() == 0
    np.testing.assert_allclose(sched.posterior_log_variance_clipped.numpy(),
                               np.log(np.concatenate([variance[:1], variance])), rtol=1e-9)


def test_schedule_fields_are_consistent():
    sched = NoiseSchedule.from_name("linear", 1000)
    assert sched.timesteps == 1000
    for name in ["alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"]:
        assert getattr(sched, name).dtype == torch.float64
    assert sched.alphas_cumprod_prev[0].item() == 1
    assert torch.equal(sched.alphas_cumprod_prev[1:], sched.alphas_cumprod[:-1])
    assert torch.allclose(sched.sqrt_alphas_cumprod**2 + sched.sqrt_one_minus_alphas_cumprod**2,
                          torch.ones(1000, dtype=torch.float64))


def test_log_snr():
    sched = NoiseSchedule.from_name("cosine", 1000)
    t = torch.arange(1000)
    ab = sched.alphas_cumprod
    assert torch.allclose(sched.log_snr(t), torch.log(ab / (1 - ab)))
    assert bool((sched.log_snr(t).diff() < 0).all())
    assert sched.log_snr(3).item() == pytest.approx(math.log(ab[3] / (1 - ab[3])))


def test_from_name_rejects_unknown_schedule():
    with pytest.raises(ConfigError, match=r"^diffusion\.schedule = 'quadratic': must be one of"):
        NoiseSchedule.from_name("quadratic", 1000)
    with pytest.raises(ConfigError, match=r"^diffusion\.timesteps"):
        NoiseSchedule.from_name("linear", 1)


def test_extract_gathers_casts_and_broadcasts():
    sched = NoiseSchedule.from_name("linear", 1000)
    t = torch.tensor([0, 999, 500])
    out = extract(sched.alphas_cumprod, t, (3, 3, 8, 8))
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert torch.equal(out.flatten(), sched.alphas_cumprod[t].float())
    assert extract(sched.betas, t, (3, 5), torch.float64).shape == (3, 1)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_sigmoid_temperature_is_the_papers_tau(tau):
    """Jabri et al.'s ᾱ(t) = (σ(e/τ) − σ((t/T(e − s) + s)/τ)) / (σ(e/τ) − σ(s/τ)), s = −3, e = 3."""
    t = np.arange(1, 1001) / 1000
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = (sig(3 / tau) - sig((6 * t - 3) / tau)) / (sig(3 / tau) - sig(-3 / tau))
    alpha_bar = NoiseSchedule.from_betas(sigmoid_betas(1000, tau=tau)).alphas_cumprod.numpy()
    np.testing.assert_allclose(alpha_bar[:-1], expected[:-1], rtol=1e-9)


def test_schedule_errors_are_one_line_naming_the_key_and_the_fix():
    with pytest.raises(ConfigError, match=r"^diffusion.timesteps = 20: must be > 20 for the "
                                          r"linear schedule \(its last beta, 20/T, must stay "
                                          r"below 1\)$"):
        linear_betas(20)
    with pytest.raises(ConfigError, match=r"^diffusion.schedule = 'cos': must be one of "
                                          r"'linear', 'cosine', 'sigmoid'$"):
        NoiseSchedule.from_name("cos", 100)


@pytest.mark.parametrize("T", [2, 3, 7])
def test_every_field_equals_a_step_by_step_recount_down_to_two_steps(T):
    # Ho et al.'s definitions, one step at a time in Python floats, from float32 β.
    betas = torch.linspace(0.1, 0.6, T, dtype=torch.float32)
    sched = NoiseSchedule.from_betas(betas)
    ab, expected = 1.0, {name: [] for name in ("alphas_cumprod", "alphas_cumprod_prev",
                                               "posterior_variance", "posterior_mean_coef1",
                                               "posterior_mean_coef2")}
    for beta in betas.double().tolist():
        ab_prev, ab = ab, ab * (1 - beta)
        expected["alphas_cumprod_prev"].append(ab_prev)
        expected["alphas_cumprod"].append(ab)
        expected["posterior_variance"].append(beta * (1 - ab_prev) / (1 - ab))
        expected["posterior_mean_coef1"].append(beta * math.sqrt(ab_prev) / (1 - ab))
        expected["posterior_mean_coef2"].append((1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab))
    for name, values in expected.items():
        field = getattr(sched, name)
        assert field.dtype == torch.float64 and field.device.type == "cpu", name
        np.testing.assert_allclose(field.numpy(), values, rtol=1e-12, atol=0, err_msg=name)
    np.testing.assert_allclose(sched.betas.numpy(), betas.double().numpy(), rtol=0)
    np.testing.assert_allclose(sched.alphas.numpy(), 1 - betas.double().numpy(), rtol=1e-15)
    np.testing.assert_allclose(sched.sqrt_alphas_cumprod.numpy(),
                               np.sqrt(expected["alphas_cumprod"]), rtol=1e-12)
    np.testing.assert_allclose(sched.sqrt_one_minus_alphas_cumprod.numpy(),
                               np.sqrt(1 - np.array(expected["alphas_cumprod"])), rtol=1e-12)
    variance = expected["posterior_variance"]
    np.testing.assert_allclose(sched.posterior_log_variance_clipped.numpy(),
                               np.log([variance[1]] + variance[1:]), rtol=1e-12)
    assert sched.timesteps == T


def test_betas_outside_the_open_unit_interval_or_too_few_are_refused():
    for bad in ([0.1, 0.0, 0.2], [0.1, 1.0], [0.1, -0.1], [0.5, 1.5]):
        with pytest.raises(ValueError, match="^every beta must lie in \\(0, 1\\)$"):
            NoiseSchedule.from_betas(torch.tensor(bad))
    for bad in (torch.tensor([0.1]), torch.full((2, 3), 0.1), torch.tensor(0.1)):
        with pytest.raises(ConfigError, match=f"^diffusion.timesteps = {bad.numel()}: "
                                              "must be >= 2$"):
            NoiseSchedule.from_betas(bad)
    assert NoiseSchedule.from_name("cosine", 2).timesteps == 2   # the smallest allowed
    with pytest.raises(ConfigError, match="^diffusion.timesteps = 1: must be >= 2$"):
        NoiseSchedule.from_name("cosine", 1)
