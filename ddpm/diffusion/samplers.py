"""Reverse-process samplers: DDPM ancestral sampling and DDIM (the ODE solvers are in `solvers`).

Samplers are pure functions of (model, schedule, noise, generators, options).
Randomness comes in as one CPU generator per sample (EDM's convention): sample i
always draws its x_T and every step's noise from its own stream, on the CPU, so a
sample does not depend on the batch it is generated in nor on the device.

Legend (0-indexed t; index t is the paper's step t+1):
    x               x_t, the current sample [B, C, H, W]
    x0_hat, eps_hat x̂_0 and ε̂, the model's estimates at (x_t, t)
    alpha_bar       ᾱ_t                 alpha_bar_prev  ᾱ at the next (lower) step, 1 after the last
    z               fresh N(0, I) noise per sample
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ddpm.diffusion.forward import Model, check_prediction, predict_x0_and_eps
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError

SPACINGS = ("uniform", "quadratic", "trailing", "logsnr")
VARIANCES = ("small", "large")

Frame = tuple[int, torch.Tensor, torch.Tensor]  # (t, x_t, x0_hat), CPU tensors


@dataclass
class SampleResult:
    """`images`: x_0 [B, C, H, W] on the noise's device.

    `trajectory`: (t, x_t, x̂_0) CPU tensors at evenly spaced steps, where x_t is
    the step's input and x̂_0 the model's estimate from it; the last frame is the
    last step, whose x̂_0 is exactly `images`. Empty unless frames were asked for.
    """

    images: torch.Tensor
    trajectory: list[Frame] = field(default_factory=list)


# ---------------------------------------------------------------- randomness


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded from (seed, index).

    numpy's SeedSequence hashes the pair into a 64-bit state, so neighbouring
    seeds and indices give unrelated streams and two of 50k samples collide with
    probability ~1e-10 (a 32-bit seed would collide with probability ~0.3).
    """
    generators = []
    for index in indices:
        if index < 0:
            raise ValueError(f"sample index {index} must be >= 0")
        # SeedSequence wants non-negative entropy; fold negative seeds into 64 bits.
        state = np.random.SeedSequence([seed % 2**64, int(index)]).generate_state(1, np.uint64)
        generators.append(torch.Generator(device="cpu").manual_seed(int(state[0])))
    return generators


def initial_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...],
                  device: torch.device | str, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """N(0, I) noise [B, *shape], row i drawn on the CPU from generators[i], then moved."""
    rows = [torch.randn(shape, generator=g, dtype=dtype) for g in generators]
    return torch.stack(rows).to(device)  # [B, *shape]


# ---------------------------------------------------------------- timesteps


def ddim_timesteps(timesteps: int, steps: int, spacing: str = "uniform", *,
                   schedule: NoiseSchedule | None = None) -> np.ndarray:
    """S = `steps` distinct timesteps in [0, T−1], sorted descending (int64): where a sampler
    evaluates the network (every sampler with steps uses these; the name is historical).

    With i = 0..S−1:
    - "uniform":   ⌊i·T/S⌋, the DDIM paper's τ_i = ⌊c·i⌋ with c = T/S (Song et al. 2021,
                   App. D.2); equals the DDIM code's range(0, T, T//S) when S divides T.
                   Always includes t = 0; the top step is ⌊(S−1)·T/S⌋, not T − 1.
    - "quadratic": ⌊(i·√(0.8T)/(S−1))²⌋ as in the DDIM code (τ_i = ⌊c·i²⌋ reaching 0.8T).
                   The squares crowd near 0 and floor can repeat a value (e.g. 0, 0, 1, 2
                   for T=1000, S=50), so each value is raised to one above its predecessor
                   and capped at T−S+i to stay below T; a no-op whenever the raw values are
                   already distinct.
    - "trailing":  round(k·T/S) − 1 for k = S..1, i.e. round(np.arange(T, 0, −T/S)) − 1
                   (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
                   Flawed", Table 2); always starts at T − 1. Computed from integers k so
                   floating-point drift in arange cannot add an (S+1)-th value.
    - "logsnr":    uniform in log SNR(t) = log(ᾱ/(1 − ᾱ)) (= 2λ_t of DPM-Solver), from
                   t = T−2 down to t = 0, each point moved to the timestep of nearest log
                   SNR, the first then moved up to T − 1 (S = 1: just T − 1), and all made
                   distinct as for "quadratic". DPM-Solver's recommended grid for
                   low-resolution pixel models (Lu et al. 2022, "DPM-Solver", §3.3, skip
                   type "logSNR"); needs the `schedule`. The range stops at T − 2 because
                   the cosine and sigmoid schedules clip their last β (0.999), where log
                   SNR plunges (cosine: −12.9 → −19.8); see `_nearest_log_snr`.
    With S = T every spacing gives all timesteps T−1..0.
    """
    if spacing not in SPACINGS:
        raise ConfigError(f"sample.spacing = {spacing!r}: must be one of "
                          + ", ".join(repr(s) for s in SPACINGS))
    if steps < 1:
        raise ConfigError(f"sample.steps = {steps}: must be >= 1")
    if steps > timesteps:
        raise ConfigError(f"sample.steps = {steps}: must be <= diffusion.timesteps ({timesteps})")
    i = np.arange(steps, dtype=np.int64)
    if spacing == "uniform":
        ascending = i * timesteps // steps
    elif spacing == "trailing":
        k = np.arange(1, steps + 1, dtype=np.int64)
        ascending = np.round(k * timesteps / steps).astype(np.int64) - 1
    else:
        if spacing == "quadratic":
            raw = (np.linspace(0, np.sqrt(timesteps * 0.8), steps) ** 2).astype(np.int64)
        else:
            raw = _nearest_log_snr(schedule, timesteps, steps)
        distinct = i + np.maximum.accumulate(raw - i)  # raw[i] ↑ to ≥ previous + 1
        ascending = np.minimum(distinct, timesteps - steps + i)
    return ascending[::-1].copy()


def _nearest_log_snr(schedule: NoiseSchedule | None, timesteps: int, steps: int) -> np.ndarray:
    """Ascending timesteps whose λ(t) is nearest to S values uniform in λ from λ(0) to
    λ(T−2), the last of them (nearest λ(T−2)) moved up to T − 1.

    The range stops at T − 2 because a clipped last β (cosine and sigmoid: 0.999) makes
    λ plunge in the last step (cosine, T = 1000: −12.9 at t = 998, −19.8 at t = 999).
    Stretched to λ(T−1), the range put 4 of 10 points at t ≥ 994, where √ᾱ ≤ 0.008
    ([999, 998, 997, 994, 975, 872, 476, 105, 14, 0]); DPM-Solver++ and UniPC sampled
    a two-mode toy with an exact denoiser about 3× worse on it than on "trailing"
    (tests/test_sampler_grids.py).
    """
    if schedule is None or schedule.timesteps != timesteps:
        raise ValueError("logsnr spacing needs the noise schedule of the T timesteps")
    neg_lam = -schedule.log_snr(torch.arange(timesteps)).numpy()  # ascending in t: λ falls
    targets = np.linspace(neg_lam[max(timesteps - 2, 0)], neg_lam[0], steps)[::-1]
    right = np.clip(np.searchsorted(neg_lam, targets), 1, timesteps - 1)
    nearer_left = targets - neg_lam[right - 1] < neg_lam[right] - targets
    nearest = np.where(nearer_left, right - 1, right).astype(np.int64)
    nearest[-1] = timesteps - 1  # start where x_T ~ N(0, I) is the marginal: S = 1 gives T − 1
    return nearest


# ---------------------------------------------------------------- shared pieces


def _check_noise(noise: torch.Tensor, generators: Sequence[torch.Generator]) -> None:
    if noise.shape[0] != len(generators):
        raise ValueError(f"{noise.shape[0]} noise rows but {len(generators)} generators")


def _frame_steps(n_steps: int, frames: int) -> set[int]:
    """Indices of `frames` evenly spaced steps out of n_steps, first and last included.

    One frame means the last step (the finished sample); more than n_steps gives all.
    """
    if frames <= 0:
        return set()
    if frames == 1:
        return {n_steps - 1}
    return set(np.round(np.linspace(0, n_steps - 1, frames)).astype(int).tolist())


def _denoise(model: Model, schedule: NoiseSchedule, x: torch.Tensor, t: int,
             prediction: str, clip_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) at (x_t, t); with clipping, ε̂ is recomputed from the clipped x̂_0.

    Recomputing ε̂ keeps x_t = √ᾱ·x̂_0 + √(1−ᾱ)·ε̂ true after the clamp, which is
    what makes DDIM with η = 1 and every step equal DDPM (DDIM code, diffusers).
    """
    t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)  # [B]
    output = model(x, t_batch).to(x.dtype)
    x0_hat, eps_hat = predict_x0_and_eps(schedule, x, t_batch, output, prediction)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
        eps_hat = predict_x0_and_eps(schedule, x, t_batch, x0_hat, "x0")[1]
    return x0_hat, eps_hat


def _frame(t: int, x: torch.Tensor, x0_hat: torch.Tensor) -> Frame:
    return t, x.detach().to("cpu", copy=True), x0_hat.detach().to("cpu", copy=True)


# ---------------------------------------------------------------- samplers


@torch.no_grad()
def ddpm_sample(model: Model, schedule: NoiseSchedule, noise: torch.Tensor,
                generators: Sequence[torch.Generator], *, prediction: str = "eps",
                variance: str = "small", clip_x0: bool = True, trajectory_frames: int = 0,
                progress: Callable[[], object] | None = None) -> SampleResult:
    """Ancestral sampling over all T steps (Ho et al. 2020 "DDPM", Algorithm 2).

    Each step draws x_{t−1} ~ N(μ̃_t(x_t, x̂_0), σ_t² I), the posterior of eq. 7 with
    x̂_0 in place of x_0 (equivalent to Algorithm 2's ε form, and it lets x̂_0 be
    clipped). σ_t² is β̃_t ("small") or β_t ("large"), the two bounds of §3.2.
    `noise` is x_T [B, C, H, W]; sample i's step noise comes from generators[i].
    The last step returns x̂_0 with no noise (μ̃ at the first step is exactly x̂_0).
    `progress`, when given, is called with no arguments after every step.
    """
    check_prediction(prediction)
    if variance not in VARIANCES:
        raise ConfigError(f"sample.variance = {variance!r}: must be one of "
                          + ", ".join(repr(v) for v in VARIANCES))
    _check_noise(noise, generators)
    T = schedule.timesteps
    frame_steps = _frame_steps(T, trajectory_frames)
    trajectory: list[Frame] = []
    x = noise
    for i, t in enumerate(range(T - 1, -1, -1)):
        x0_hat, _ = _denoise(model, schedule, x, t, prediction, clip_x0)
        if i in frame_steps:
            trajectory.append(_frame(t, x, x0_hat))
        if t == 0:
            x = x0_hat
        else:
            mean = (float(schedule.posterior_mean_coef1[t]) * x0_hat
                    + float(schedule.posterior_mean_coef2[t]) * x)
            if variance == "small":
                std = float(torch.exp(0.5 * schedule.posterior_log_variance_clipped[t]))
            else:
                std = float(schedule.betas[t].sqrt())
            z = initial_noise(generators, tuple(x.shape[1:]), x.device, x.dtype)
            x = mean + std * z
        if progress is not None:
            progress()
    return SampleResult(images=x, trajectory=trajectory)


@torch.no_grad()
def ddim_sample(model: Model, schedule: NoiseSchedule, noise: torch.Tensor,
                generators: Sequence[torch.Generator], *, steps: int, eta: float = 0.0,
                spacing: str = "uniform", prediction: str = "eps", clip_x0: bool = True,
                trajectory_frames: int = 0,
                progress: Callable[[], object] | None = None) -> SampleResult:
    """DDIM sampling over S = `steps` timesteps (Song et al. 2021 "DDIM", eq. 12).

    x_prev = √ᾱ_prev · x̂_0 + √(1 − ᾱ_prev − σ²) · ε̂ + σ · z, with
    σ = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)   (eq. 16).
    η = 0 is deterministic; η = 1 with S = T is DDPM with β̃_t and, since noise is
    drawn from generators[i] at the same steps in the same order, reproduces
    `ddpm_sample(variance="small")` sample for sample. Timesteps: `ddim_timesteps`.
    `progress`, when given, is called with no arguments after every step.
    """
    check_prediction(prediction)
    if eta < 0:
        raise ConfigError(f"sample.eta = {eta}: must be >= 0")
    _check_noise(noise, generators)
    taus = ddim_timesteps(schedule.timesteps, steps, spacing, schedule=schedule).tolist()
    frame_steps = _frame_steps(len(taus), trajectory_frames)
    trajectory: list[Frame] = []
    x = noise
    for i, t in enumerate(taus):
        x0_hat, eps_hat = _denoise(model, schedule, x, t, prediction, clip_x0)
        if i in frame_steps:
            trajectory.append(_frame(t, x, x0_hat))
        if i == len(taus) - 1:
            x = x0_hat  # ᾱ_prev = 1: σ = 0 and the direction term vanishes
        else:
            alpha_bar = float(schedule.alphas_cumprod[t])
            alpha_bar_prev = float(schedule.alphas_cumprod[taus[i + 1]])
            sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)
                           * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
            # η > 1 can push σ² past 1 − ᾱ_prev; the direction term then vanishes.
            direction = max(1 - alpha_bar_prev - sigma**2, 0.0) ** 0.5
            x = alpha_bar_prev**0.5 * x0_hat + direction * eps_hat
            if eta > 0:
                x = x + sigma * initial_noise(generators, tuple(x.shape[1:]), x.device, x.dtype)
        if progress is not None:
            progress()
    return SampleResult(images=x, trajectory=trajectory)
