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

The ODE solvers (DPM-Solver++, UniPC) are affine in x_T too, as is DDIM with η = 0:
their output is k·x_T + c per pixel, so running them on x_T = 0 and 1 gives their
exact output mean c and std |k| (`affine_moments`), checked against `exact_moments`
for DDIM, against Lu et al.'s Algorithm 2 as a scalar recursion for DPM-Solver++,
against drawn samples, and against the exact probability-flow ODE's moments (closed
form) as the step count grows.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from ddpm.diffusion.registry import SAMPLERS, sample_images, sampler_nfe
from ddpm.diffusion.samplers import (SPACINGS, SampleResult, ddim_sample, ddim_timesteps,
                                     ddpm_sample, initial_noise, sample_generators)
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


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second thread mostly spins


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


SETTINGS = dict(steps=50, eta=0.0, spacing="uniform", solver_spacing="logsnr",
                variance="small")


def settings(options) -> dict:
    """Every `sample_images` setting: SETTINGS updated with `options` (pairs or a dict)."""
    return {**SETTINGS, **dict(options)}


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
        ddim_timesteps(T, steps, spacing, schedule=sched))
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


def dpm_solver_pp_2m_moments(sched: NoiseSchedule, steps: int,
                             spacing: str = "logsnr") -> tuple[float, float]:
    """Mean and std of DPM-Solver++(2M)'s output on the Gaussian data, from x_T ~ N(0, 1).

    Lu et al. 2022, Algorithm 2 (multistep, data prediction, midpoint form), written
    here as a float64 scalar recursion on x = k·z + c, independently of diffusers:
    with λ = log(α/σ), h = λ_t − λ_s and r = h_prev/h,
    x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1)(D_0 + ½ D_1), D_0 = x̂_0(s), D_1 = (x̂_0(s) − x̂_0(s_prev))/r.
    The first step is first order (no history) and so is the last, to σ = 0, which
    returns the last x̂_0 (diffusers' `final_sigmas_type="zero"`, `lower_order_final`).
    """
    ab = np.cumprod(1 - sched.betas.numpy())
    taus = list(ddim_timesteps(len(ab), steps, spacing, schedule=sched))
    x = np.array([0.0, 1.0])                       # (c, k): x = c + k·z
    prev = None                                    # (x̂_0, λ) of the step before
    for i, t in enumerate(taus):
        a, var = np.sqrt(ab[t]), ab[t] * S**2 + 1 - ab[t]
        gain = a * S**2 / var
        x0_hat = np.array([MU - gain * a * MU, 0.0]) + gain * x
        if i == len(taus) - 1:
            return x0_hat[0], abs(x0_hat[1])
        lam_s = np.log(a / np.sqrt(1 - ab[t]))
        a_t, s_t = np.sqrt(ab[taus[i + 1]]), np.sqrt(1 - ab[taus[i + 1]])
        h = np.log(a_t / s_t) - lam_s
        d = x0_hat if prev is None else x0_hat + 0.5 * (x0_hat - prev[0]) * h / (lam_s - prev[1])
        x = s_t / np.sqrt(1 - ab[t]) * x - a_t * np.expm1(-h) * d
        prev = (x0_hat, lam_s)
    raise AssertionError("unreachable")


def exact_flow_moments(sched: NoiseSchedule, t_start: int) -> tuple[float, float]:
    """Mean and std at t = 0 of the exact probability-flow ODE started at t_start from
    x ~ N(0, 1). On Gaussian data the flow keeps each pixel's standard score:
    x_0 = μ + s (x_t − √ᾱ_t μ)/√v_t, v_t = ᾱ_t s² + 1 − ᾱ_t."""
    ab = float(sched.alphas_cumprod[t_start])
    root_v = np.sqrt(ab * S**2 + 1 - ab)
    return MU - S * np.sqrt(ab) * MU / root_v, S / root_v


@functools.cache
def run(name: str, sampler: str, options: tuple = (), T: int = 1000, n: int = N,
        shape: tuple = SHAPE, prediction: str = "eps", clip_x0: bool = False) -> SampleResult:
    """One cached sampler run on the Gaussian model; `options` as sorted (key, value) pairs."""
    sched = schedule(name, T)
    generators = sample_generators(SEED, range(n))
    noise = initial_noise(generators, shape, "cpu")
    return sample_images(sampler, gaussian_model(sched, prediction), sched, noise, generators,
                         prediction=prediction, clip_x0=clip_x0, **settings(options))


@functools.cache
def affine_moments(name: str, sampler: str, options: tuple = (), T: int = 1000
                   ) -> tuple[float, float]:
    """Exact output mean and std of a deterministic sampler on the Gaussian data.

    Its output is k·x_T + c (every step is affine in x and the model elementwise), so
    x_T ∈ {0, 1} gives c and k + c, and x_T ~ N(0, 1) gives mean c and std |k|.
    """
    sched = schedule(name, T)
    noise = torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1)
    out = sample_images(sampler, gaussian_model(sched), sched, noise,
                        sample_generators(SEED, range(2)), prediction="eps", clip_x0=False,
                        **settings(options)).images.flatten().double()
    return out[0].item(), abs(out[1].item() - out[0].item())


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
    ("dpmpp_2m", (("steps", 20),), 1000),
    ("unipc", (("solver_spacing", "uniform"), ("steps", 20)), 1000),
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


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc"])
def test_deterministic_samplers_ignore_the_generators(sampler):
    """DDIM with η = 0 and the ODE solvers draw nothing after x_T."""
    sched = schedule("cosine")
    model = gaussian_model(sched)
    noise = initial_noise(sample_generators(0, range(4)), (1, 4, 4), "cpu")

    def sample(seed):
        return sample_images(sampler, model, sched, noise, sample_generators(seed, range(4)),
                             prediction="eps", clip_x0=True, **settings({"steps": 20})).images

    assert torch.equal(sample(1), sample(2))


@pytest.mark.parametrize("sampler,options", [
    ("ddpm", {"variance": "small"}),
    ("ddim", {"steps": 20, "eta": 0.0}),
    ("ddim", {"steps": 20, "eta": 1.0, "spacing": "trailing"}),
    ("dpmpp_2m", {"steps": 20}),
    ("unipc", {"steps": 20}),
])
def test_sample_does_not_depend_on_its_batch(sampler, options):
    """Sample 5 alone, in a batch of 7 and in a batch of 64 is the same sample."""
    sched = schedule("linear", 100)
    model = gaussian_model(sched)

    def sample(indices):
        generators = sample_generators(11, indices)
        noise = initial_noise(generators, (3, 2, 2), "cpu")
        return sample_images(sampler, model, sched, noise, generators, prediction="eps",
                             clip_x0=True, **settings(options)).images

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


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name,T,S", [  # the linear schedule needs T > 20
    (name, T, S) for name in ("linear", "cosine")
    for T, S in [(1000, 1), (1000, 2), (1000, 50), (1000, 333), (1000, 999), (1000, 1000),
                 (100, 50), (100, 100), (7, 3), (7, 6)] if T > 20 or name == "cosine"])
def test_ddim_timesteps_are_distinct_and_descending(name, spacing, T, S):
    taus = ddim_timesteps(T, S, spacing, schedule=schedule(name, T))
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


@pytest.mark.parametrize("sampler,options,first_t,n_steps", [
    ("ddpm", {}, 99, 100),
    ("ddim", {"steps": 10}, 90, 10),
    ("ddim", {"steps": 10, "spacing": "trailing", "eta": 1.0}, 99, 10),
    ("dpmpp_2m", {"steps": 10}, 99, 10),
    ("unipc", {"steps": 10, "solver_spacing": "quadratic"}, 80, 10),
])
def test_trajectory_progress_and_nfe(sampler, options, first_t, n_steps):
    """Frames of (t, x_t, x̂_0) from x_T to the result; one progress call and one network
    evaluation per step, as many as `sampler_nfe` (what the FID sweep plots) says."""
    sched = schedule("cosine", 100)
    generators = sample_generators(0, range(3))
    noise = initial_noise(generators, (1, 4, 4), "cpu")
    gaussian, evaluations = gaussian_model(sched), []

    def model(x, t):
        evaluations.append(int(t[0]))
        return gaussian(x, t)

    calls = []
    result = sample_images(sampler, model, sched, noise, generators, prediction="eps",
                           clip_x0=True, frames=5, progress=lambda: calls.append(1),
                           **settings(options))
    assert len(calls) == len(evaluations) == n_steps
    assert sampler_nfe(sampler, settings(options)["steps"], 100) == n_steps
    assert len(result.trajectory) == 5
    ts = [t for t, _, _ in result.trajectory]
    assert ts[0] == first_t and ts == sorted(ts, reverse=True) and ts[-1] == evaluations[-1]
    assert ts[-1] == (0 if settings(options)["spacing" if sampler == "ddim" else
                                           "solver_spacing"] != "trailing" else 9)
    t0, x_t, x0_hat = result.trajectory[0]
    assert x_t.device.type == "cpu" and torch.equal(x_t, noise)
    assert torch.equal(result.trajectory[-1][2], result.images)
    assert not sample_images(sampler, model, sched, noise, generators, prediction="eps",
                             clip_x0=True, **settings(options)).trajectory


@pytest.mark.parametrize("frames", [-1, 0, 1, 2, 3, 4, 10, 25])
def test_trajectory_frames_are_evenly_spaced_steps_first_and_last_included(frames):
    sched = schedule("cosine", 100)
    generators = sample_generators(0, range(2))
    noise = initial_noise(generators, (1, 4, 4), "cpu")
    result = sample_images("ddim", gaussian_model(sched), sched, noise, generators,
                           prediction="eps", clip_x0=True, frames=frames,
                           **settings({"steps": 10}))
    taus = ddim_timesteps(100, 10, "uniform").tolist()
    # By hand: step j·9/(k − 1) rounded half to even, k frames of steps 0..9; one frame is
    # the finished sample, more frames than steps give every step.
    by_hand = {-1: [], 0: [], 1: [9], 2: [0, 9], 3: [0, 4, 9], 4: [0, 3, 6, 9],
               10: list(range(10)), 25: list(range(10))}[frames]
    assert [t for t, _, _ in result.trajectory] == [taus[j] for j in by_hand]
    if frames > 0:
        assert torch.equal(result.trajectory[-1][2], result.images)


def test_trajectory_frames_are_snapshots_not_views_of_the_result():
    sched = schedule("cosine", 100)
    generators = sample_generators(0, range(2))
    noise = initial_noise(generators, (1, 4, 4), "cpu")
    result = sample_images("ddim", gaussian_model(sched), sched, noise, generators,
                           prediction="eps", clip_x0=True, frames=3, **settings({"steps": 5}))
    frames = [(x.clone(), x0.clone()) for _, x, x0 in result.trajectory]
    result.images.add_(1.0)   # a caller post-processing the samples in place
    noise.add_(1.0)
    for (_, x, x0), (x_before, x0_before) in zip(result.trajectory, frames):
        assert torch.equal(x, x_before) and torch.equal(x0, x0_before)


def test_logsnr_spacing_is_uniform_in_log_snr():
    sched = schedule("linear")
    all_lam = sched.log_snr(torch.arange(1000)).numpy()
    for S in (2, 5, 10, 20, 50):
        taus = ddim_timesteps(1000, S, "logsnr", schedule=sched)
        assert taus[0] == 999 and taus[-1] == 0
        # targets from λ(T−2), not λ(T−1) (a clipped last β makes λ plunge there); the
        # first point, nearest λ(T−2), is then moved up to T − 1
        target = np.linspace(all_lam[998], all_lam[0], S)
        nearest = np.abs(all_lam[None, :] - target[:, None]).argmin(1)
        nearest[0] = 999
        # each point is the timestep whose log SNR is nearest its target, except where
        # two targets share one near t = 0 and the lower ones move up (S = 50: the
        # nearest ..., 5, 4, 3, 2, 1, 1, 0 become ..., 6, 5, 4, 3, 2, 1, 0)
        assert (taus == nearest).all() if S <= 20 else (taus[:-6] == nearest[:-6]).all()
    # The cosine schedule's log SNR plunges in its last step (β clipped at 0.999: −12.9
    # at t = 998, −19.8 at 999); the range stops at 998, so only t = 999 sits below −12
    # (the grid before: 999, 998, 997, 994, 975, ...; tests/test_sampler_grids.py).
    cosine = ddim_timesteps(1000, 10, "logsnr", schedule=schedule("cosine"))
    assert cosine.tolist() == [999, 995, 986, 953, 836, 517, 177, 45, 8, 0]
    assert ddim_timesteps(1000, 1, "logsnr", schedule=sched).tolist() == [999]
    with pytest.raises(ValueError, match="logsnr spacing needs the noise schedule"):
        ddim_timesteps(1000, 10, "logsnr")


# ---------------------------------------------------------------- registry


def test_registry_names_are_the_config_choices():
    import typing

    from ddpm.sampling.config import SampleConfig

    hints = typing.get_type_hints(SampleConfig)
    assert typing.get_args(hints["sampler"]) == tuple(SAMPLERS)
    assert typing.get_args(typing.get_args(hints["sweep_samplers"])[0]) == tuple(SAMPLERS)
    assert typing.get_args(hints["spacing"]) == SPACINGS == typing.get_args(
        hints["solver_spacing"])
    for spec in SAMPLERS.values():           # every option names a real sample.* setting
        assert set(spec.options.values()) <= set(SETTINGS)
    sched = schedule("linear", 100)
    with pytest.raises(ConfigError, match=r"^sample\.sampler = 'euler': unknown sampler; "
                                          r"allowed values are 'ddpm', 'ddim', 'dpmpp_2m'"):
        sample_images("euler", gaussian_model(sched), sched, torch.zeros(1, 1, 1, 1),
                      sample_generators(0, [0]), prediction="eps", clip_x0=True, **SETTINGS)


# ---------------------------------------------------------------- ODE solvers

NFES = (5, 10, 20, 50, 100, 200)


def moment_errors(name: str, sampler: str, steps: int, **options) -> tuple[float, float]:
    """(output mean − μ, output std − s), exact, for a deterministic sampler."""
    mean, std = affine_moments(name, sampler, tuple(sorted({"steps": steps,
                                                            **options}.items())))
    return mean - MU, std - S


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps,spacing", [(10, "uniform"), (50, "quadratic"),
                                           (20, "logsnr")])
def test_affine_moments_equal_exact_moments_for_ddim(name, steps, spacing):
    """The x_T ∈ {0, 1} probe gives the recursion's moments (float32 rounding only)."""
    probe = affine_moments(name, "ddim", (("spacing", spacing), ("steps", steps)))
    exact = exact_moments(schedule(name), "ddim", steps, 0.0, spacing)
    np.testing.assert_allclose(probe, exact, rtol=0, atol=2e-6)


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
@pytest.mark.parametrize("spacing", ["logsnr", "trailing"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_dpm_solver_pp_moments_equal_the_papers_recursion(name, spacing, steps):
    """The probe's moments of DPM-Solver++(2M) (diffusers' update, as this project feeds
    it) equal Lu et al.'s Algorithm 2 run as a float64 scalar recursion, up to float32
    rounding: max seen 8.3e-6 (cosine, trailing, 5 steps, whose first step leaves
    log-SNR −19.8); dropping D_1's ½ moves them by ~1e-2."""
    probe = affine_moments(name, "dpmpp_2m", (("solver_spacing", spacing), ("steps", steps)))
    paper = dpm_solver_pp_2m_moments(schedule(name), steps, spacing)
    np.testing.assert_allclose(probe, paper, rtol=0, atol=2e-5)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ode_solver_samples_have_the_probed_moments(name, sampler):
    """Drawn samples (65536 pixels) agree with the x_T ∈ {0, 1} probe's moments, to
    sampling error: the probe's affine argument holds for the solvers (the probe itself
    is checked against the paper's recursion above and the exact flow below)."""
    mean, std = affine_moments(name, sampler, (("steps", 10),))
    images = run(name, sampler, (("steps", 10),)).images
    assert abs(images.mean().item() - mean) < 4 * std / N_DRAWS**0.5
    assert abs(images.std().item() - std) < 4 * std / (2 * N_DRAWS) ** 0.5


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ode_solvers_converge_to_the_exact_flow_at_second_order(name, sampler):
    """Output moments → those of the exact probability-flow ODE from the same start
    (`exact_flow_moments`, closed form) as NFE grows, at second order: a 2.5× finer grid
    divides a second-order error by ~6 and 2× by ~4; the test asks for 4 and 3.

    Std errors seen (logsnr grid): DPM-Solver++ linear 5: −0.099, 10: 0.016, 20: 0.0072,
    50: 0.0011, 100: 1.9e-4, 200: −3e-5; UniPC linear 10: 0.026, 20: 0.0047, 50: 2.2e-4,
    100: −4.8e-5, 200: −7.8e-5 (float32 rounding from ~1e-4 down); mean errors ≤ 5e-5.
    DDIM, first order, only halves its error per 2× NFE.
    """
    sched = schedule(name)
    errors = {}
    for n in NFES:
        mean, std = affine_moments(name, sampler, (("steps", n),))
        t_start = int(ddim_timesteps(1000, n, SETTINGS["solver_spacing"], schedule=sched)[0])
        exact_mean, exact_std = exact_flow_moments(sched, t_start)
        errors[n] = (mean - exact_mean, abs(std - exact_std))
    print(f"\n{sampler} ({name}) NFE: (mean error, |std error|):",
          {n: (f"{m:.1e}", f"{d:.1e}") for n, (m, d) in errors.items()})
    std_err = {n: d for n, (_, d) in errors.items()}
    assert std_err[5] > std_err[10] > std_err[20] > std_err[50] > std_err[100]
    assert std_err[20] / std_err[50] > 4 and std_err[50] / std_err[100] > 3
    assert std_err[200] < 1.5e-4                 # float32 rounding from here on
    assert all(abs(m) < 1e-4 for n, (m, _) in errors.items() if n >= 10)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_dpm_solver_pp_at_10_nfe_beats_ddim_at_10_and_20(name):
    """DPM-Solver++(2M), logsnr grid, at 10 NFE: closer to (μ, s) than DDIM at 10 NFE on
    any spacing, and than DDIM at 20 NFE on its default (uniform) spacing.

    Distance = √(Δmean² + Δstd²). Seen: linear 0.016 against DDIM-10 0.076 (quadratic,
    its best) to 0.13 (trailing) and DDIM-20 0.066; cosine 0.014 against 0.059–0.14
    and DDIM-20 0.037. (Cosine on the logsnr grid as built before issue 23, from the
    clipped λ(T−1): 0.0063, but 0.015 at 20 NFE: a std error that changes sign between
    10 and 20 NFE, so the 10-NFE figure was partly cancellation; tests/test_sampler_grids.py
    judges the grids on two-mode data.)
    """
    def distance(sampler, steps, **options):
        return float(np.hypot(*moment_errors(name, sampler, steps, **options)))

    dpmpp = distance("dpmpp_2m", 10)
    ddim10 = {spacing: distance("ddim", 10, spacing=spacing) for spacing in SPACINGS}
    ddim20 = distance("ddim", 20)
    print(f"\n{name}: DPM-Solver++ 10 NFE {dpmpp:.4f}; DDIM 10 NFE "
          + ", ".join(f"{k} {v:.4f}" for k, v in ddim10.items())
          + f"; DDIM 20 NFE uniform {ddim20:.4f}")
    assert dpmpp < min(ddim10.values()) / 3
    assert dpmpp < ddim20 / 2.5
    assert distance("unipc", 10) < min(ddim10.values()) / 2


@pytest.mark.parametrize("spacing", ["uniform", "trailing", "logsnr"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_dpm_solver_pp_first_order_is_ddim(name, spacing):
    """DPM-Solver++(1) is DDIM with η = 0 (Lu et al. 2022, §3.1): same grid, same images.

    Differences are float32 rounding of the two forms of the update (max seen 1.4e-6).
    """
    from ddpm.diffusion.solvers import dpm_solver_pp_sample

    sched = schedule(name)
    generators = sample_generators(SEED, range(8))
    noise = initial_noise(generators, (1, 4, 4), "cpu")
    model = gaussian_model(sched)
    ddim = ddim_sample(model, sched, noise, generators, steps=10, spacing=spacing).images
    first = dpm_solver_pp_sample(model, sched, noise, generators, steps=10, spacing=spacing,
                                 order=1).images
    torch.testing.assert_close(first, ddim, atol=1e-5, rtol=0)
    second = dpm_solver_pp_sample(model, sched, noise, generators, steps=10, spacing=spacing)
    assert (second.images - ddim).abs().max() > 1e-3  # ...and order 2 is not DDIM


# ---------------------------------------------------------------- against diffusers


def tiny_unet():
    """An untrained tiny UNet (seeded, zero_init off): outputs far from any closed form."""
    import tiny
    from ddpm.models.registry import build_model

    torch.manual_seed(0)
    return build_model(tiny.params().model).eval()


def within(delta: float, images: torch.Tensor, tol: float = 1e-4) -> bool:
    """|Δ| ≤ tol on images in [−1, 1]; relative to their scale when they go beyond.

    Unclipped ε-prediction from an untrained network divides its errors by √ᾱ_T ≈ 0.006
    at the first step and ends far outside [−1, 1] (up to ±8e4 here); float32 then
    carries 1e-7 of that scale, whoever computes it.
    """
    return delta <= tol * max(1.0, images.abs().max().item())


@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing,diffusers_spacing,steps", [("uniform", "leading", 50),
                                                             ("trailing", "trailing", 10)])
@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("network", ["gaussian", "unet"])
def test_ddim_equals_diffusers_ddim_scheduler(network, name, spacing, diffusers_spacing,
                                              steps, prediction, clip_x0):
    """This project's DDIM (η = 0) and diffusers' `DDIMScheduler` give the same images.

    Same betas (`trained_betas`), same timesteps (uniform = diffusers' "leading" with
    steps_offset 0 when S divides T; trailing = "trailing"), ᾱ = 1 after the last step
    (`set_alpha_to_one`), clipping = `clip_sample` with ε̂ recomputed from the clipped x̂_0
    (`use_clipped_model_output`). Networks: the exact Gaussian denoiser, and an untrained
    tiny UNet at 16 px. Max |Δ| seen 8.8e-6 wherever the images are of order 1 (every
    clipped run, every Gaussian run, the UNet with unclipped v), from diffusers' float32
    ᾱ against this project's float64 one; the UNet with unclipped ε ends at up to ±8e4,
    with |Δ| 6.5e-6 of that scale (see `within`).
    """
    from diffusers import DDIMScheduler

    sched = schedule(name)
    net = tiny_unet() if network == "unet" else gaussian_model(sched, prediction)
    generators = sample_generators(SEED, range(4))
    noise = initial_noise(generators, (3, 16, 16), "cpu")
    ours = sample_images("ddim", net, sched, noise, generators, prediction=prediction,
                         clip_x0=clip_x0, **settings({"steps": steps, "spacing": spacing}))
    theirs = DDIMScheduler(num_train_timesteps=1000, trained_betas=sched.betas.numpy(),
                           clip_sample=clip_x0, clip_sample_range=1.0, set_alpha_to_one=True,
                           steps_offset=0, timestep_spacing=diffusers_spacing,
                           prediction_type={"eps": "epsilon", "v": "v_prediction"}[prediction])
    theirs.set_timesteps(steps)
    assert theirs.timesteps.tolist() == ddim_timesteps(1000, steps, spacing).tolist()
    x = noise
    with torch.no_grad():
        for t in theirs.timesteps:
            output = net(x, torch.full((len(x),), int(t), dtype=torch.int64))
            x = theirs.step(output, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    delta = (ours.images - x).abs().max().item()
    print(f"\nmax |ours - diffusers DDIM| = {delta:.2e} (image range "
          f"{x.min().item():.2f}..{x.max().item():.2f})")
    assert within(delta, x)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers'
@pytest.mark.parametrize("scheduler", ["dpm_solver_pp_scheduler", "unipc_scheduler"])
@pytest.mark.parametrize("spacing", ["uniform", "trailing", "logsnr"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_solver_noise_levels_refine_diffusers_own(name, spacing, scheduler):
    """The σ written into the diffusers schedulers are diffusers' own σ = √((1 − ᾱ)/ᾱ)
    at the same timesteps, from its float32 ᾱ (relative differences seen up to 7e-4, at
    t = 0), then 0. DPM-Solver++ also computes them itself from `set_timesteps(timesteps=
    ...)`; where diffusers builds the grid itself (UniPC "trailing") its timesteps are ours."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    import ddpm.diffusion.solvers as solvers

    sched = schedule(name)
    taus = ddim_timesteps(1000, 10, spacing, schedule=sched)
    ours = getattr(solvers, scheduler)(sched, taus)
    own_class = {"dpm_solver_pp_scheduler": DPMSolverMultistepScheduler,
                 "unipc_scheduler": UniPCMultistepScheduler}[scheduler]
    own = own_class(trained_betas=sched.betas.numpy(), timestep_spacing="trailing")
    alpha_bar = own.alphas_cumprod[torch.from_numpy(taus)]                # diffusers' float32
    expected = torch.cat([((1 - alpha_bar) / alpha_bar).sqrt(), torch.zeros(1)])
    torch.testing.assert_close(ours.sigmas, expected, rtol=2e-3, atol=0)
    assert ours.timesteps.tolist() == taus.tolist()          # the grid the sampler loops over
    if scheduler == "dpm_solver_pp_scheduler":
        own.set_timesteps(timesteps=taus.tolist())
        torch.testing.assert_close(ours.sigmas, own.sigmas, rtol=2e-3, atol=0)
    if spacing == "trailing":
        own.set_timesteps(10)
        assert own.timesteps.tolist() == taus.tolist()


@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("scheduler", ["dpm_solver_pp_scheduler", "unipc_scheduler"])
def test_solvers_equal_diffusers_fed_the_raw_output(scheduler, prediction, clip_x0):
    """Feeding x̂_0 (clipped by the `Denoiser`) equals giving diffusers the raw network output
    with `prediction_type` epsilon / v_prediction / sample and, for clip_x0,
    `thresholding=True, sample_max_value=1.0` (its dynamic threshold then clamps to
    exactly [−1, 1]). Max |Δ| seen 1.8e-5 (float32 forms of x̂_0; images beyond [−1, 1]
    only for unclipped ε, see `within`)."""
    import ddpm.diffusion.solvers as solvers

    sched = schedule("linear")
    net = tiny_unet()
    generators = sample_generators(SEED, range(4))
    noise = initial_noise(generators, (3, 16, 16), "cpu")
    sampler = {"dpm_solver_pp_scheduler": "dpmpp_2m", "unipc_scheduler": "unipc"}[scheduler]
    ours = sample_images(sampler, net, sched, noise, generators, prediction=prediction,
                         clip_x0=clip_x0, **settings({"steps": 10})).images
    taus = ddim_timesteps(1000, 10, "logsnr", schedule=sched)
    theirs = getattr(solvers, scheduler)(sched, taus)
    theirs.register_to_config(
        prediction_type={"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[prediction],
        thresholding=clip_x0, sample_max_value=1.0)
    x = noise
    with torch.no_grad():
        for t in taus.tolist():
            output = net(x, torch.full((len(x),), t, dtype=torch.int64))
            x = theirs.step(output, t, x).prev_sample
    delta = (ours - x).abs().max().item()
    print(f"\n{sampler} {prediction} clip={clip_x0}: max |x̂0-fed - raw-fed| = {delta:.2e} "
          f"(image range {x.min().item():.2f}..{x.max().item():.2f})")
    assert within(delta, x)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m", "unipc"])
def test_public_sampler_defaults_are_the_documented_ones(name):
    # Called without keywords, each sampler is eps-prediction, clipped, on the "uniform"
    # grid (DDIM: η = 0; DDPM: small variance), and keeps no frames.
    from ddpm.diffusion.samplers import ddim_sample
    from ddpm.diffusion.solvers import dpm_solver_pp_sample, unipc_sample

    sched = schedule("cosine", 50)
    noise_gens = lambda: sample_generators(0, range(3))  # noqa: E731
    noise = initial_noise(noise_gens(), (1, 4, 4), "cpu") * 3   # large: clipping matters
    model = gaussian_model(sched)
    function, explicit = {
        "ddpm": (ddpm_sample, dict(variance="small")),
        "ddim": (ddim_sample, dict(steps=10, eta=0.0, spacing="uniform")),
        "dpmpp_2m": (dpm_solver_pp_sample, dict(steps=10, spacing="uniform", order=2)),
        "unipc": (unipc_sample, dict(steps=10, spacing="uniform", order=2)),
    }[name]
    steps = {k: v for k, v in explicit.items() if k == "steps"}
    by_default = function(model, sched, noise, noise_gens(), **steps)
    spelled_out = function(model, sched, noise, noise_gens(), prediction="eps", clip_x0=True,
                           trajectory_frames=0, **explicit)
    assert torch.equal(by_default.images, spelled_out.images) and not by_default.trajectory
    unclipped = function(model, sched, noise, noise_gens(), clip_x0=False, **steps)
    assert not torch.equal(unclipped.images, by_default.images)


def test_float64_noise_keeps_every_step_in_float64():
    # DDPM and DDIM with η = 1 over all steps agree sample for sample only if both draw
    # their step noise in x's dtype: a float32 draw is another number from the same stream.
    sched = schedule("linear", 50)
    gens = lambda: sample_generators(0, range(4))  # noqa: E731
    noise = initial_noise(gens(), (1, 4, 4), "cpu", torch.float64)
    assert noise.dtype == torch.float64
    model = gaussian_model(sched)
    ddpm = sample_images("ddpm", model, sched, noise, gens(), prediction="eps", clip_x0=False,
                         **settings({"variance": "small"})).images
    ddim = sample_images("ddim", model, sched, noise, gens(), prediction="eps", clip_x0=False,
                         **settings({"steps": 50, "eta": 1.0})).images
    assert ddpm.dtype == ddim.dtype == torch.float64
    torch.testing.assert_close(ddim, ddpm, atol=1e-12, rtol=0)


def test_generator_seeds_are_64_bit_hashes_of_seed_and_index():
    # The documented rule (SeedSequence of (seed mod 2⁶⁴, index), one 64-bit word), also for
    # seeds beyond 2⁶ and 2³² and negative ones.
    for seed in (0, 200, 2**40 + 7, -1):
        expected = [int(np.random.SeedSequence([seed % 2**64, i]).generate_state(1, np.uint64)[0])
                    for i in (0, 5)]
        assert [g.initial_seed() for g in sample_generators(seed, [0, 5])] == expected
    assert max(g.initial_seed() for g in sample_generators(0, range(8))) > 2**32
    with pytest.raises(ValueError, match="^sample index -1 must be >= 0$"):
        sample_generators(0, [-1])
    with pytest.raises(ValueError, match="^3 noise rows but 2 generators$"):
        sample_images("ddim", gaussian_model(schedule("linear", 50)), schedule("linear", 50),
                      torch.zeros(3, 1, 2, 2), sample_generators(0, range(2)),
                      prediction="eps", clip_x0=False, **settings({"steps": 5}))


def test_spacing_defaults_to_uniform():
    assert (ddim_timesteps(1000, 10) == ddim_timesteps(1000, 10, "uniform")).all()
