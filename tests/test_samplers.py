"""Samplers on Gaussian data, where the optimal denoiser is known in closed form.

For x_0 ~ N(μ, s² I), x_t ~ N(√ᾱ μ, v I) with v = ᾱ s² + 1 − ᾱ, and the optimal
predictions are ε*(x_t) = √(1 − ᾱ)(x_t − √ᾱ μ)/v and x̂_0*(x_t) = μ + √ᾱ s²(x_t − √ᾱ μ)/v.
Every sampler step is then affine in x_t plus fresh Gaussian noise, so the output
is exactly Gaussian and its mean and variance follow from a scalar recursion
(`exact_moments`). That recursion shows the samplers are *not* exact at finite
step counts: plugging in E[x_0 | x_t] ignores Var(x_0 | x_t), so "small" (β̃) and
DDIM lose a little variance per step and "large" (β) adds a little. The tests
therefore check (1) the samples against the exact moments of the sampler's own
output, to within sampling error, and (2) those moments against (μ, s), to within
the discretisation error, which is below 1% with all T = 1000 steps.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from ddpm.diffusion.samplers import (SampleResult, ddim_sample, ddim_timesteps, ddpm_sample,
                                     initial_noise, sample_generators)
from ddpm.diffusion.schedules import NoiseSchedule, extract
from ddpm.errors import ConfigError

MU, S = 0.3, 0.5
# 64 samples × 1024 pixels = 65536 draws. Pixels are independent here (the model is
# elementwise, the noise i.i.d.), so they count as samples; few, large samples keep
# the per-sample generator calls (the cost of a 1000-step run) cheap. Tensors of
# 256 KiB also stay below glibc's mmap threshold: at 512 KiB every step page-faults
# and a 1000-step run takes 8x longer.
N, SHAPE = 64, (4, 16, 16)
N_DRAWS = N * int(np.prod(SHAPE))
SEED = 20240101


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are small: on a shared machine, a second intra-op thread mostly spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def schedule(name: str, T: int = 1000) -> NoiseSchedule:
    return NoiseSchedule.from_name(name, T)


def gaussian_model(sched: NoiseSchedule, prediction: str = "eps"):
    """The optimal `prediction` for x_0 ~ N(μ, s² I), computed in float64."""
    def model(x, t):
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],) and t.device == x.device
        assert not torch.is_grad_enabled()
        ab = extract(sched.alphas_cumprod, t, x.shape, torch.float64)
        a, sigma, x64 = ab.sqrt(), (1 - ab).sqrt(), x.double()
        var = ab * S**2 + 1 - ab
        eps = sigma * (x64 - a * MU) / var
        x0 = MU + a * S**2 * (x64 - a * MU) / var
        out = {"eps": eps, "x0": x0, "v": a * eps - sigma * x0}[prediction]
        return out.to(x.dtype)
    return model


def exact_moments(sched: NoiseSchedule, sampler: str, steps: int | None = None,
                  eta: float = 0.0, spacing: str = "uniform",
                  variance: str = "small") -> tuple[float, float]:
    """Mean and std of the sampler's output on the Gaussian data, from x_T ~ N(0, 1).

    Written from the papers, independently of the samplers: per step x' = k·x + c + r·z,
    so m' = k·m + c and V' = k²·V + r².
    """
    betas = sched.betas.numpy()
    ab = np.cumprod(1 - betas)
    T = len(betas)
    taus = list(range(T - 1, -1, -1)) if sampler == "ddpm" else list(
        ddim_timesteps(T, steps, spacing))
    m, V = 0.0, 1.0
    for i, t in enumerate(taus):
        a, var = np.sqrt(ab[t]), ab[t] * S**2 + 1 - ab[t]
        gain = a * S**2 / var           # x̂_0 = μ + gain·(x − aμ)
        eps_gain = np.sqrt(1 - ab[t]) / var  # ε̂ = eps_gain·(x − aμ)
        if i == len(taus) - 1:          # last step: output x̂_0
            k, c, r2 = gain, MU - gain * a * MU, 0.0
        elif sampler == "ddpm":         # Ho et al. eqs. 6-7 with x̂_0
            ab_prev = ab[t - 1]
            c1 = betas[t] * np.sqrt(ab_prev) / (1 - ab[t])
            c2 = np.sqrt(1 - betas[t]) * (1 - ab_prev) / (1 - ab[t])
            k, c = c1 * gain + c2, c1 * (MU - gain * a * MU)
            r2 = betas[t] * (1 - ab_prev) / (1 - ab[t]) if variance == "small" else betas[t]
        else:                           # Song et al. eqs. 12 and 16
            ab_prev = ab[taus[i + 1]]
            r2 = eta**2 * (1 - ab_prev) / (1 - ab[t]) * (1 - ab[t] / ab_prev)
            d = np.sqrt(1 - ab_prev - r2)
            k = np.sqrt(ab_prev) * gain + d * eps_gain
            c = np.sqrt(ab_prev) * (MU - gain * a * MU) - d * eps_gain * a * MU
        m, V = k * m + c, k * k * V + r2
    return m, float(np.sqrt(V))


@functools.cache
def run(name: str, sampler: str, options: tuple = (), T: int = 1000, n: int = N,
        shape: tuple = SHAPE, prediction: str = "eps", clip_x0: bool = False) -> SampleResult:
    """One cached sampler run on the Gaussian model; `options` as sorted (key, value) pairs."""
    sched = schedule(name, T)
    generators = sample_generators(SEED, range(n))
    noise = initial_noise(generators, shape, "cpu")
    fn = ddpm_sample if sampler == "ddpm" else ddim_sample
    return fn(gaussian_model(sched, prediction), sched, noise, generators,
              prediction=prediction, clip_x0=clip_x0, **dict(options))


CASES = [
    ("ddpm", (("variance", "small"),)),
    ("ddpm", (("variance", "large"),)),
    ("ddim", (("eta", 0.0), ("steps", 1000))),
    ("ddim", (("eta", 1.0), ("steps", 1000))),
    ("ddim", (("eta", 0.0), ("steps", 50))),
    ("ddim", (("eta", 1.0), ("steps", 50))),
    ("ddim", (("eta", 0.0), ("spacing", "trailing"), ("steps", 50))),
    ("ddim", (("eta", 0.0), ("spacing", "quadratic"), ("steps", 50))),
    ("ddim", (("eta", 1.0), ("spacing", "quadratic"), ("steps", 50))),
]


@pytest.mark.parametrize("sampler,options", CASES)
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_gaussian_samples_match_exact_moments(name, sampler, options):
    sched = schedule(name)
    mean, std = exact_moments(sched, sampler, **dict(options))
    images = run(name, sampler, options).images
    assert images.shape == (N, *SHAPE) and images.dtype == torch.float32
    # 4 standard errors: SE(mean) = std/√n, SE(std) = std/√(2n) for Gaussian draws.
    assert abs(images.mean().item() - mean) < 4 * std / N_DRAWS**0.5
    assert abs(images.std().item() - std) < 4 * std / (2 * N_DRAWS) ** 0.5
    # Discretisation error (from `exact_moments`). With all 1000 steps: std at most
    # 0.8% below s (DDPM "small", linear); mean off by up to 1e-3 because x_T ~ N(0, I)
    # rather than N(√ᾱ_T μ, ·) (√ᾱ_T μ = 0.002 for linear), which η = 0 carries to x_0
    # while ancestral sampling forgets it. With 50 steps DDIM is biased: std up to 11%
    # below s (η = 1, linear); quadratic spacing starts at t = 0.8T, where the cosine
    # schedule's x_t is far from N(0, I), shifting the mean by up to 0.046 (η = 0).
    all_steps = dict(options).get("steps", 1000) == 1000
    mean_tol, std_tol = (2e-3, 0.01 * S) if all_steps else (0.05, 0.12 * S)
    assert abs(mean - MU) < mean_tol and abs(std - S) < std_tol
    if all_steps:  # so the samples themselves match (μ, s)
        assert abs(images.mean().item() - MU) < mean_tol + 4 * S / N_DRAWS**0.5
        assert abs(images.std().item() - S) < std_tol + 4 * S / (2 * N_DRAWS) ** 0.5


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_variance_bounds_bracket_the_data(name):
    """β̃ and β are the lower and upper bounds of Ho et al. §3.2: s lies between them."""
    sched = schedule(name)
    small = exact_moments(sched, "ddpm", variance="small")[1]
    large = exact_moments(sched, "ddpm", variance="large")[1]
    assert small < S < large


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_eta1_all_steps_is_ddpm_small(name):
    """Same generators, same noise at the same steps: equal sample for sample.

    Differences are float32 rounding of two algebraically equal updates (max seen 7e-6).
    """
    ddpm = run(name, "ddpm", (("variance", "small"),)).images
    ddim = run(name, "ddim", (("eta", 1.0), ("steps", 1000))).images
    torch.testing.assert_close(ddim, ddpm, atol=5e-5, rtol=0)
    # ...and not by accident: η = 0 (no noise) lands elsewhere.
    assert (run(name, "ddim", (("eta", 0.0), ("steps", 1000))).images - ddpm).abs().max() > 0.1


def test_ddim_eta1_all_steps_is_ddpm_small_with_clipping():
    """With x̂_0 clipped (and ε̂ recomputed from it) the two samplers still agree."""
    ddpm = run("linear", "ddpm", (("variance", "small"),), T=100, n=8, shape=(1, 4, 4),
               clip_x0=True).images
    ddim = run("linear", "ddim", (("eta", 1.0), ("steps", 100)), T=100, n=8, shape=(1, 4, 4),
               clip_x0=True).images
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=0)
    assert ddpm.abs().max() <= 1


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("sampler,options,T", [
    ("ddim", (("eta", 0.0), ("steps", 50)), 1000),
    ("ddim", (("eta", 1.0), ("spacing", "trailing"), ("steps", 50)), 1000),
    ("ddpm", (("variance", "large"),), 100),
])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_prediction_targets_give_the_same_samples(name, sampler, options, T, prediction):
    """The same optimal predictor, output as v or x0, samples what eps samples.

    Only float32 rounding differs (max seen 1.1e-6): the predictor is computed in
    float64, so the ill-conditioned conversions (÷√ᾱ_t for eps near t = T, ÷√(1−ᾱ_t)
    for x0 near t = 0) have little rounding to amplify.
    """
    small = dict(T=T, n=16, shape=(1, 4, 4))
    reference = run(name, sampler, options, **small).images
    other = run(name, sampler, options, prediction=prediction, **small).images
    torch.testing.assert_close(other, reference, atol=1e-5, rtol=0)


def test_ddim_eta0_is_deterministic():
    sched = schedule("cosine")
    model = gaussian_model(sched)
    noise = initial_noise(sample_generators(0, range(4)), (1, 4, 4), "cpu")
    first = ddim_sample(model, sched, noise, sample_generators(1, range(4)), steps=20).images
    second = ddim_sample(model, sched, noise, sample_generators(2, range(4)), steps=20).images
    assert torch.equal(first, second)


@pytest.mark.parametrize("sampler,options", [
    ("ddpm", {"variance": "small"}),
    ("ddim", {"steps": 20, "eta": 0.0}),
    ("ddim", {"steps": 20, "eta": 1.0, "spacing": "trailing"}),
])
def test_sample_does_not_depend_on_its_batch(sampler, options):
    """Sample 5 alone, in a batch of 7 and in a batch of 64 is the same sample."""
    sched = schedule("linear", 100)
    model = gaussian_model(sched)
    fn = ddpm_sample if sampler == "ddpm" else ddim_sample

    def sample(indices):
        generators = sample_generators(11, indices)
        noise = initial_noise(generators, (3, 2, 2), "cpu")
        return fn(model, sched, noise, generators, **options).images

    alone = sample([5])[0]
    assert torch.equal(sample(range(7))[5], alone)
    assert torch.equal(sample(range(64))[5], alone)
    assert torch.equal(sample([9, 5, 2])[1], alone)


def test_sample_generators_and_initial_noise():
    a = sample_generators(3, [0, 1, 2])
    b = sample_generators(3, [2])
    assert torch.equal(torch.randn(5, generator=a[2]), torch.randn(5, generator=b[0]))
    noise = initial_noise(sample_generators(3, range(3)), (2, 2, 2), "cpu")
    assert noise.shape == (3, 2, 2, 2) and noise.dtype == torch.float32
    assert torch.equal(noise[1], torch.randn((2, 2, 2), generator=sample_generators(3, [1])[0]))
    # Neighbouring (seed, index) pairs give unrelated streams.
    firsts = [torch.randn(1, generator=g).item() for g in
              sample_generators(0, [0, 1]) + sample_generators(1, [0, 1])]
    assert len(set(firsts)) == 4


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "trailing"])
@pytest.mark.parametrize("T,S", [(1000, 1), (1000, 2), (1000, 50), (1000, 333), (1000, 999),
                                 (1000, 1000), (100, 50), (100, 100), (7, 3), (7, 6)])
def test_ddim_timesteps_are_distinct_and_descending(spacing, T, S):
    taus = ddim_timesteps(T, S, spacing)
    assert taus.dtype == np.int64 and len(taus) == S
    assert (np.diff(taus) < 0).all() and taus.min() >= 0 and taus.max() <= T - 1
    if S == T:
        assert (taus == np.arange(T - 1, -1, -1)).all()


def test_ddim_timesteps_values():
    # uniform: ⌊i·T/S⌋ = DDIM code's range(0, T, T // S) when S divides T.
    assert (ddim_timesteps(1000, 50, "uniform") == np.arange(0, 1000, 20)[::-1]).all()
    assert ddim_timesteps(1000, 3, "uniform").tolist() == [666, 333, 0]
    # trailing: round(arange(T, 0, -T/S)) - 1 (Lin et al. 2024, Table 2).
    assert ddim_timesteps(1000, 50, "trailing").tolist() == list(range(999, 0, -20))
    assert ddim_timesteps(1000, 3, "trailing").tolist() == [999, 666, 332]
    # quadratic: the DDIM code's sequence, its repeated 0 at the bottom lifted to 1, 2.
    raw = [int(x) for x in np.linspace(0, np.sqrt(800), 50) ** 2]
    assert raw[:4] == [0, 0, 1, 2]
    assert ddim_timesteps(1000, 50, "quadratic").tolist()[::-1] == [0, 1, 2, 3] + raw[4:]
    assert ddim_timesteps(1000, 10, "quadratic").tolist()[::-1] == [
        int(x) for x in np.linspace(0, np.sqrt(800), 10) ** 2]


def test_ddim_timesteps_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^sample\.steps = 2000: must be <= "
                                          r"diffusion\.timesteps \(1000\)$"):
        ddim_timesteps(1000, 2000, "uniform")
    with pytest.raises(ConfigError, match=r"^sample\.steps = 0"):
        ddim_timesteps(1000, 0, "uniform")
    with pytest.raises(ConfigError, match=r"^sample\.spacing = 'leading'"):
        ddim_timesteps(1000, 10, "leading")
    sched = schedule("linear", 100)
    noise = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ConfigError, match=r"^sample\.steps = 101"):
        ddim_sample(gaussian_model(sched), sched, noise, sample_generators(0, [0]), steps=101)
    with pytest.raises(ConfigError, match=r"^sample\.variance = 'medium'"):
        ddpm_sample(gaussian_model(sched), sched, noise, sample_generators(0, [0]),
                    variance="medium")


@pytest.mark.parametrize("sampler,options,first_t,n_steps", [
    ("ddpm", {}, 99, 100),
    ("ddim", {"steps": 10}, 90, 10),
    ("ddim", {"steps": 10, "spacing": "trailing", "eta": 1.0}, 99, 10),
])
def test_trajectory_and_progress(sampler, options, first_t, n_steps):
    sched = schedule("cosine", 100)
    generators = sample_generators(0, range(3))
    noise = initial_noise(generators, (1, 4, 4), "cpu")
    fn = ddpm_sample if sampler == "ddpm" else ddim_sample
    calls = []
    result = fn(gaussian_model(sched), sched, noise, generators, trajectory_frames=5,
                progress=lambda: calls.append(1), **options)
    assert len(calls) == n_steps
    assert len(result.trajectory) == 5
    ts = [t for t, _, _ in result.trajectory]
    assert ts[0] == first_t and ts == sorted(ts, reverse=True) and ts[-1] == min(
        ddim_timesteps(100, options.get("steps", 100), options.get("spacing", "uniform")))
    t0, x_t, x0_hat = result.trajectory[0]
    assert x_t.device.type == "cpu" and torch.equal(x_t, noise)
    assert torch.equal(result.trajectory[-1][2], result.images)
    assert not fn(gaussian_model(sched), sched, noise, generators, **options).trajectory
