"""The variational bound in bits/dim (ddpm/diffusion/likelihood.py) against oracles
computed here, independently of the code under test.

1. Gaussian data, exact denoiser. For x_0 ~ N(0, s² I) the optimal x0 prediction is
   linear, x̂_0 = c_t x_t with c_t = √ᾱ s² / (ᾱ s² + 1 − ᾱ), so given x_0 the error
   x_0 − x̂_0 = (1 − c√ᾱ) x_0 − c√(1 − ᾱ) ε has E‖·‖² = (1 − c√ᾱ)²‖x_0‖² + c²(1 − ᾱ) D:
   every KL term's expectation is closed-form (`expected_kl`), and so is the prior.
   The estimator's diffusion part must agree per image within Monte-Carlo error.
2. The whole bound against the true NLL: Gaussian data rounded to the 256 uint8 levels
   has an exactly computable entropy H = −Σ_k P_k log P_k (P_k = Gaussian mass of bin k,
   open edge bins), the expected NLL of the true distribution, so the bound's mean can
   never fall below it. H ≈ ½ log(2πe s²) − log(2/255) nats/dim (differential entropy
   minus the log bin width), checked too. With the exact Gaussian denoiser and
   σ_t² = β_t ("large") the bound is tight: where the data is effectively continuous
   at the scale of one step's noise, ½[log(β/β̃) + β̃/β − 1] + coef1²·mmse/(2β) with
   mmse = 1/SNR(t) is exactly ½ log(SNR(t−1)/SNR(t)), the continuous-time term, so
   the only gaps are the prior, the decoder and the discreteness of the data; with the
   cosine schedule at T = 1000 (noise std 0.006 at t = 0, above the bin half width
   1/255) they came to 0.003 bits/dim in a 200-image run. With β̃_t ("small") each step
   loses ½(r − 1 − log r) nats per dimension (r = SNR(t−1)/SNR(t), about 4 at the first
   step), 0.63 bits/dim in all here: the bound holds but is loose.
3. The estimator (exact indices + strata) against a full T-step reference written
   here with torch.distributions (improved-diffusion's `calc_bpd_loop` shape): equal
   when every index is exact, within a few standard errors when stratified.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm.diffusion.likelihood import (BoundEstimate, _jobs, bits_per_dim_bound,
                                       decoder_log_scale, diffusion_kl_large,
                                       diffusion_kl_small, discretized_gaussian_log_likelihood,
                                       evaluations_per_image, timestep_strata)
from ddpm.diffusion.samplers import sample_generators
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError
from ddpm.reporting.config import params_from_dict

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the uint8 levels in [-1, 1]


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second thread mostly spins


def alphas_bar(schedule: NoiseSchedule) -> np.ndarray:
    """ᾱ from β by numpy, not from the schedule's own tensors."""
    return np.cumprod(1 - schedule.betas.numpy())


def gaussian_denoiser(schedule: NoiseSchedule, s: float):
    """x̂_0 = E[x_0 | x_t] for x_0 ~ N(0, s² I): a model with prediction "x0"."""
    ab = torch.as_tensor(alphas_bar(schedule))

    def model(x_t, t):
        a = ab[t.cpu()].reshape(-1, *[1] * (x_t.ndim - 1)).to(x_t.dtype)
        return a.sqrt() * s**2 / (a * s**2 + 1 - a) * x_t

    return model


def expected_kl(schedule: NoiseSchedule, s: float, x0_sq: np.ndarray, dims: int,
                variance: str) -> np.ndarray:
    """E over the noise of Σ_{t≥1} L_t for the Gaussian denoiser, per image (nats).

    x0_sq: ‖x_0‖² per image. Ho et al. 2020 eqs. 6-7 for β̃ and the posterior mean.
    """
    ab = alphas_bar(schedule)
    beta = schedule.betas.numpy()
    total = np.zeros_like(x0_sq)
    for t in range(1, len(ab)):
        c = math.sqrt(ab[t]) * s**2 / (ab[t] * s**2 + 1 - ab[t])
        err2 = (1 - c * math.sqrt(ab[t]))**2 * x0_sq + c**2 * (1 - ab[t]) * dims
        beta_tilde = beta[t] * (1 - ab[t - 1]) / (1 - ab[t])
        coef1 = beta[t] * math.sqrt(ab[t - 1]) / (1 - ab[t])
        sigma2 = beta_tilde if variance == "small" else beta[t]
        total += (0.5 * dims * (math.log(sigma2 / beta_tilde) + beta_tilde / sigma2 - 1)
                  + coef1**2 * err2 / (2 * sigma2))
    return total


# ---------------------------------------------------------------- 1. Gaussian data, per term


@pytest.mark.parametrize("variance", ["small", "large"])
def test_gaussian_data_kl_terms_match_their_closed_form_expectation(variance):
    schedule = NoiseSchedule.from_name("cosine", 200)
    s, n, shape = 0.5, 128, (3, 8, 8)
    dims = math.prod(shape)
    x0 = s * torch.randn(n, *shape, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    est = bits_per_dim_bound(gaussian_denoiser(schedule, s), schedule, x0, "x0",
                             variance=variance, clip_x0=False, seed=3, exact_below=10,
                             strata=20, batch_size=256)
    to_bits = dims * math.log(2)
    x0_sq = x0.flatten(1).pow(2).sum(1).numpy()
    oracle = expected_kl(schedule, s, x0_sq, dims, variance) / to_bits
    diff = est.diffusion.numpy() - oracle
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(n), (diff.mean(), diff.std())
    assert abs(diff.mean()) < 0.01 * oracle.mean()
    # The prior needs no network: exact. KL(N(√ᾱ x0, 1 − ᾱ) ‖ N(0, 1)) per dimension.
    ab = alphas_bar(schedule)[-1]
    prior = 0.5 * (ab * x0_sq + dims * (1 - ab - 1 - math.log(1 - ab))) / to_bits
    np.testing.assert_allclose(est.prior.numpy(), prior, rtol=1e-10)


# ---------------------------------------------------------------- 2. the whole bound vs true NLL


def discretised_gaussian_entropy(s: float) -> float:
    """H = −Σ P_k log P_k (nats/dim) of N(0, s²) rounded to the uint8 levels, open edges."""
    edges = torch.cat([torch.tensor([-math.inf]), GRID[:-1] + 1 / 255,
                       torch.tensor([math.inf])])
    p = torch.diff(Normal(0.0, s).cdf(edges.double()))
    p = p[p > 0]
    return float(-(p * p.log()).sum())


@pytest.mark.parametrize("variance", ["large", "small"])
def test_bound_on_discretised_gaussian_data_is_at_least_and_near_its_entropy(variance):
    s, n, shape = 0.25, 200, (3, 8, 8)
    h = discretised_gaussian_entropy(s)
    assert h == pytest.approx(0.5 * math.log(2 * math.pi * math.e * s**2) - math.log(2 / 255),
                              abs=1e-3)
    h_bits = h / math.log(2)  # 7.041 bits/dim
    schedule = NoiseSchedule.from_name("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    levels = torch.round((s * torch.randn(n, *shape, generator=g, dtype=torch.float64)
                          + 1) * 127.5).clamp(0, 255)
    x0 = levels / 127.5 - 1
    est = bits_per_dim_bound(gaussian_denoiser(schedule, s), schedule, x0, "x0",
                             variance=variance, clip_x0=False, seed=0, batch_size=500)
    margin = 4 * est.standard_error  # about 0.04 bits/dim
    assert est.mean > h_bits - margin, (est.mean, h_bits)  # an upper bound on E[−log p]
    if variance == "large":
        assert est.mean < h_bits + 0.01 + margin, (est.mean, h_bits)
    else:  # loose by ½(r − 1 − log r) per step, 0.63 bits/dim in all (module docstring)
        assert h_bits + 0.4 < est.mean < h_bits + 0.9, (est.mean, h_bits)


# ---------------------------------------------------------------- 3. estimator vs full reference


def tiny_net(seed: int = 0) -> torch.nn.Module:
    """An 8 px UNet with no zeroed layers: the default zero-initialises its output to 0."""
    from ddpm.models.config import ModelConfig
    from ddpm.models.unet import UNet

    torch.manual_seed(seed)
    return UNet(ModelConfig(img_size=8, channels=[8, 16], down_attn=[False],
                            down_channel_indices=[[0, 1]], mid_attn=[False],
                            mid_channel_indices=[[1, 1]], up_attn=[False],
                            up_channel_indices=[[1, 0]], num_res_blocks=1, num_heads=1,
                            norm_groups=4, time_injection="add", zero_init=False)).eval()


def uint8_images(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g).float() / 127.5 - 1


def reference_bound(net, schedule: NoiseSchedule, x0: torch.Tensor, variance: str,
                    clip_x0: bool, seed: int) -> torch.Tensor:
    """All T terms per image in bits/dim, with torch.distributions (v prediction).

    Noise: image i's generator (seeded by (seed, i)) draws one ε per index, 0..T−1 in
    order, as the estimator does when every index is exact.
    """
    ab = torch.as_tensor(alphas_bar(schedule))
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    beta = schedule.betas
    beta_tilde = beta * (1 - ab_prev) / (1 - ab)
    out = []
    for i, g in enumerate(sample_generators(seed, range(len(x0)))):
        x = x0[i:i + 1]
        nats = kl_divergence(Normal(ab[-1].sqrt() * x.double(), (1 - ab[-1]).sqrt()),
                             Normal(0.0, 1.0)).sum()
        for t in range(schedule.timesteps):
            eps = torch.randn(x.shape[1:], generator=g)[None]
            a, sig = ab[t].sqrt().float(), (1 - ab[t]).sqrt().float()
            x_t = a * x + sig * eps
            with torch.no_grad():
                v = net(x_t, torch.tensor([t]))
            x0_hat = (a * x_t - sig * v).double()  # Salimans & Ho 2022, x0 from v
            if clip_x0:
                x0_hat = x0_hat.clamp(-1, 1)
            if t == 0:
                scale = (beta_tilde[1] if variance == "small" else beta[0]).sqrt()
                dist = Normal(x0_hat, scale)
                hi = torch.where(x > 0.999, 1.0, dist.cdf(x.double() + 1 / 255))
                lo = torch.where(x < -0.999, 0.0, dist.cdf(x.double() - 1 / 255))
                nats = nats - torch.log(hi - lo).sum()
                continue
            c1 = beta[t] * ab_prev[t].sqrt() / (1 - ab[t])
            c2 = (1 - ab_prev[t]) * (1 - beta[t]).sqrt() / (1 - ab[t])
            sigma2 = beta_tilde[t] if variance == "small" else beta[t]
            q = Normal(c1 * x.double() + c2 * x_t.double(), beta_tilde[t].sqrt())
            p = Normal(c1 * x0_hat + c2 * x_t.double(), sigma2.sqrt())
            nats = nats + kl_divergence(q, p).sum()
        out.append(nats / (x[0].numel() * math.log(2)))
    return torch.stack(out)


@pytest.mark.parametrize("variance,clip_x0", [("small", True), ("large", False)])
def test_all_exact_equals_the_full_reference(variance, clip_x0):
    schedule = NoiseSchedule.from_name("cosine", 30)
    net, x0 = tiny_net(), uint8_images(4)
    est = bits_per_dim_bound(net, schedule, x0, "v", variance=variance, clip_x0=clip_x0,
                             seed=5, exact_below=30, strata=7, batch_size=16)
    ref = reference_bound(net, schedule, x0, variance, clip_x0, seed=5)
    assert est.decoder.abs().min() > 0 and est.diffusion.abs().min() > 0  # a real network
    torch.testing.assert_close(est.total, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(est.prior + est.diffusion + est.decoder, est.total)


def test_stratified_estimate_agrees_with_the_full_sum():
    schedule = NoiseSchedule.from_name("cosine", 40)
    net, x0 = tiny_net(), uint8_images(24)
    full = bits_per_dim_bound(net, schedule, x0, "v", seed=1, exact_below=40)
    strat = bits_per_dim_bound(net, schedule, x0, "v", seed=2, exact_below=4, strata=6)
    diff = (strat.total - full.total).numpy()
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert se > 0
    assert abs(diff.mean()) < 4 * se, (diff.mean(), se)
    # The exact part (the decoder at index 0) comes from the same noise only when seeds
    # match; the parts are still the same order of magnitude.
    assert strat.diffusion.mean() == pytest.approx(float(full.diffusion.mean()), rel=0.2)


def test_reproducible_and_independent_of_batch_size_and_mode_restored():
    schedule = NoiseSchedule.from_name("cosine", 40)
    net, x0 = tiny_net(), uint8_images(5)
    net.train()
    runs = [bits_per_dim_bound(net, schedule, x0, "eps", seed=9, exact_below=6, strata=5,
                               batch_size=b).total for b in (1, 7, 64)]
    assert net.training
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-6, atol=0)
    torch.testing.assert_close(runs[0], runs[2], rtol=1e-6, atol=0)
    other = bits_per_dim_bound(net, schedule, x0, "eps", seed=10, exact_below=6, strata=5)
    assert not torch.equal(other.total, runs[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_bound_on_the_gpu():
    schedule = NoiseSchedule.from_name("cosine", 40)
    net, x0 = tiny_net(), uint8_images(5)
    cpu = bits_per_dim_bound(net, schedule, x0, "v", seed=4, exact_below=6, strata=5)
    gpu = bits_per_dim_bound(net.cuda(), schedule, x0.cuda(), "v", seed=4, exact_below=6,
                             strata=5)
    torch.testing.assert_close(gpu.total, cpu.total, rtol=1e-4, atol=0)


class ModeRecorder(torch.nn.Module):
    """Returns zeros and records whether each call ran in training mode."""

    def __init__(self):
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x, t):
        self.modes.append(self.training)
        return torch.zeros_like(x)


def test_network_runs_in_eval_mode_and_gets_its_mode_back():
    net = ModeRecorder().train()
    bits_per_dim_bound(net, NoiseSchedule.from_name("cosine", 20), uint8_images(3), "eps",
                       exact_below=2, strata=2)
    assert net.modes and not any(net.modes)
    assert net.training


def test_standard_error_is_sd_over_root_n():
    total = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    est = BoundEstimate(total=total, prior=total * 0, diffusion=total, decoder=total * 0)
    assert est.mean == 2.5
    assert est.standard_error == pytest.approx(math.sqrt(5 / 3) / 2)  # sd (n − 1) = √(5/3)
    assert est.summary()["n_images"] == 4


def test_strata_partition_the_indices_above_the_exact_ones():
    assert timestep_strata(1000, 50, 50)[0] == (50, 69)
    for T, exact, k in [(1000, 50, 50), (40, 4, 6), (30, 30, 7), (30, 28, 7), (10, 1, 50)]:
        bounds = timestep_strata(T, exact, k)
        covered = [t for lo, hi in bounds for t in range(lo, hi)]
        assert covered == list(range(min(exact, T), T))
        assert len(bounds) == min(k, max(T - exact, 0))
        assert evaluations_per_image(T, exact, k) == min(exact, T) + len(bounds)
    schedule = NoiseSchedule.from_name("cosine", 40)
    image, t, weight = _jobs(schedule, sample_generators(0, range(3)), 4, 6)
    for i in range(3):
        mine = image == i
        assert sorted(t[mine][:4]) == [0, 1, 2, 3] and (weight[mine][:4] == 1).all()
        assert weight[mine].sum() == 40  # every index counted once in expectation
        for (lo, hi), ti in zip(timestep_strata(40, 4, 6), t[mine][4:]):
            assert lo <= ti < hi


# ---------------------------------------------------------------- 4. closed forms


def posterior(schedule: NoiseSchedule, t: torch.Tensor, x0, x_t):
    """(mean, variance) of q(x_{t−1} | x_t, x_0), Ho et al. 2020 eqs. 6-7, from ᾱ by numpy."""
    ab = torch.as_tensor(alphas_bar(schedule))
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    beta = schedule.betas
    col = lambda v: v[t].reshape(-1, 1, 1, 1)  # noqa: E731
    mean = (col(beta * ab_prev.sqrt() / (1 - ab)) * x0
            + col((1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)) * x_t)
    return mean, col(beta * (1 - ab_prev) / (1 - ab))


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_kl_closed_forms_equal_torch_distributions(name):
    schedule = NoiseSchedule.from_name(name, 50)
    g = torch.Generator().manual_seed(0)
    x0, x0_hat, x_t = (torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
                       for _ in range(3))
    t = torch.tensor([1, 2, 7, 25, 48, 49])
    q_mean, q_var = posterior(schedule, t, x0, x_t)
    p_mean, _ = posterior(schedule, t, x0_hat, x_t)
    q = Normal(q_mean, q_var.sqrt())
    beta = schedule.betas[t].reshape(-1, 1, 1, 1)
    large = kl_divergence(q, Normal(p_mean, beta.sqrt())).flatten(1).sum(1)
    small = kl_divergence(q, Normal(p_mean, q_var.sqrt())).flatten(1).sum(1)
    torch.testing.assert_close(diffusion_kl_large(schedule, t, x0, x0_hat), large, rtol=1e-9,
                               atol=0)
    torch.testing.assert_close(diffusion_kl_small(schedule, t, x0, x0_hat), small, rtol=1e-9,
                               atol=0)
    with pytest.raises(ValueError, match="t >= 1"):
        diffusion_kl_small(schedule, torch.tensor([0]), x0[:1], x0_hat[:1])


def test_decoder_bins_sum_to_one():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(40, 1, generator=g, dtype=torch.float64) * 3 - 1.5
    log_scales = torch.rand(40, 1, generator=g, dtype=torch.float64) * 9 - 8  # e^-8 .. e^1
    log_p = discretized_gaussian_log_likelihood(GRID.expand(40, 256), means, log_scales)
    torch.testing.assert_close(torch.logsumexp(log_p, 1), torch.zeros(40, dtype=torch.float64),
                               atol=1e-10, rtol=0)
    # Each inner bin holds Φ(b) − Φ(a); far tails stay finite.
    dist = Normal(means, log_scales.exp())
    inner = slice(1, 255)
    direct = (dist.cdf(GRID[inner] + 1 / 255) - dist.cdf(GRID[inner] - 1 / 255))
    torch.testing.assert_close(log_p[:, inner].exp(), direct, atol=1e-12, rtol=1e-9)
    far = discretized_gaussian_log_likelihood(torch.tensor([0.0, 1.0, -1.0]),
                                              torch.tensor([1.0, -1.0, 1.0]), math.log(0.005))
    assert torch.isfinite(far).all() and (far < -1e4).all()


def test_decoder_is_accurate_deep_in_both_tails():
    """Bins 10 to 40 scales from the mean: Φ(b) − Φ(a) rounds to 0 in float64.

    Oracle: mpmath (a torch dependency) at 400 digits, enough for 1 − Φ(40) ≈ 1e-350.
    """
    import mpmath

    scale = 0.01
    x = torch.tensor([0.5, 0.7, -0.5, -0.7], dtype=torch.float64)
    mean = torch.tensor([0.4, 0.3, -0.4, -0.3], dtype=torch.float64)
    with mpmath.workdps(400):
        oracle = [float(mpmath.log(mpmath.ncdf((mpmath.mpf(float(xi)) + mpmath.mpf(1) / 255 - mi)
                                              / scale)
                                   - mpmath.ncdf((mpmath.mpf(float(xi)) - mpmath.mpf(1) / 255
                                                  - mi) / scale)))
                  for xi, mi in zip(x.tolist(), (mpmath.mpf(m) for m in mean.tolist()))]
    got = discretized_gaussian_log_likelihood(x, mean, math.log(scale)).numpy()
    np.testing.assert_allclose(got, oracle, rtol=1e-9)
    # log(1 − eˣ) where eˣ rounds to 1: a bin holding 1e-20 of the mass below it.
    from ddpm.diffusion.likelihood import _log1mexp

    assert float(_log1mexp(torch.tensor(-1e-20, dtype=torch.float64))) == pytest.approx(
        math.log(1e-20))


def test_decoder_scale_follows_the_variance():
    schedule = NoiseSchedule.from_name("linear", 1000)
    assert decoder_log_scale(schedule, "large") == pytest.approx(0.5 * math.log(1e-4))
    beta = schedule.betas
    assert decoder_log_scale(schedule, "small") == pytest.approx(
        0.5 * math.log(beta[1] * beta[0] / (1 - (1 - beta[0]) * (1 - beta[1]))))
    with pytest.raises(ConfigError, match="sample.variance"):
        decoder_log_scale(schedule, "medium")


# ---------------------------------------------------------------- config and stage


def test_config_validates_the_bound_settings():
    analysis = params_from_dict({}).analysis
    assert (analysis.nll_images, analysis.nll_exact_below, analysis.nll_strata) == (32, 50, 50)
    for key, bad in [("nll_images", 1), ("nll_exact_below", 0), ("nll_strata", 0)]:
        with pytest.raises(ConfigError, match=f"analysis.{key}"):
            params_from_dict({"analysis": {key: bad}})


def test_analyse_writes_the_bound_into_metrics_json(tmp_path):
    from dataclasses import replace

    from ddpm.evaluation.config import AnalysisConfig
    from ddpm.evaluation.timestep_loss import analyse
    from tests.tiny import prepared, untrained_model

    models = untrained_model(tmp_path / "models", img_size=16)
    data = prepared(tmp_path / "data", n=40)
    analysis = replace(AnalysisConfig(), t_points=4, n_images=3, nll_images=2,
                       nll_exact_below=3, nll_strata=3)  # 40 images: 3 in the holdout
    metrics = analyse(models, data, tmp_path / "out", analysis, variance="large",
                      clip_x0=False)
    written = json.loads((tmp_path / "out/metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    bound = written["likelihood"]
    assert set(bound) == {"bits_per_dim", "bits_per_dim_se", "bits_per_dim_prior",
                          "bits_per_dim_diffusion", "bits_per_dim_decoder", "n_images"}
    assert bound["n_images"] == 2 and bound["bits_per_dim_se"] > 0
    assert bound["bits_per_dim"] == pytest.approx(
        bound["bits_per_dim_prior"] + bound["bits_per_dim_diffusion"]
        + bound["bits_per_dim_decoder"])
    assert set(written["timestep_loss"]) >= {"loss_mean"}
