"""Reverse-process samplers: DDPM ancestral sampling and DDIM (the ODE solvers are in `solvers`).

Samplers are pure functions of (model, schedule, noise, generators, options), each a
stepper (`DDPMStepper`, `DDIMStepper`) run by the one loop, `loop.sample_loop`, on the
network wrapped as a `Denoiser`. They trust their options: params are validated
where they are parsed (ddpm/sampling/config.py, ddpm/diffusion/config.py).
Randomness comes in as one CPU generator per sample (EDM's convention): sample i
always draws its x_T and every step's noise from its own stream, on the CPU, so a
sample does not depend on the batch it is generated in nor on the device.

Legend (0-indexed t; index t is the paper's step t+1):
    x               x_t, the current sample [B, C, H, W]
    x0_hat, eps_hat x̂_0 and ε̂, the denoiser's estimates at (x_t, t)
    alpha_bar       ᾱ_t                 alpha_bar_prev  ᾱ at the next (lower) step, 1 after the last
    z               fresh N(0, I) noise per sample
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.forward import Model
from ddpm.diffusion.loop import SampleResult, sample_loop
from ddpm.diffusion.schedules import NoiseSchedule


# ---------------------------------------------------------------- randomness


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded from (seed, index).

    numpy's SeedSequence hashes the pair into a 64-bit seed, so neighbouring seeds
    and indices give unrelated streams. torch's CPU generator (mt19937) keeps only
    the seed's low 32 bits, though: two of 50k samples share a stream with
    probability ~0.25 (training's draws use numpy's PCG64 instead, ddpm.training.draws).
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
    With S = T every spacing gives all timesteps T−1..0. 1 <= S <= T and the spacing's
    name are the caller's to ensure (sample.steps, sample.spacing: checked when params load).
    """
    return _ASCENDING[spacing](timesteps, steps, schedule)[::-1].copy()


def _uniform(timesteps: int, steps: int, schedule: NoiseSchedule | None) -> np.ndarray:
    return np.arange(steps, dtype=np.int64) * timesteps // steps


def _trailing(timesteps: int, steps: int, schedule: NoiseSchedule | None) -> np.ndarray:
    k = np.arange(1, steps + 1, dtype=np.int64)
    return np.round(k * timesteps / steps).astype(np.int64) - 1


def _quadratic(timesteps: int, steps: int, schedule: NoiseSchedule | None) -> np.ndarray:
    raw = (np.linspace(0, np.sqrt(timesteps * 0.8), steps) ** 2).astype(np.int64)
    return _distinct(raw, timesteps)


def _log_snr(timesteps: int, steps: int, schedule: NoiseSchedule | None) -> np.ndarray:
    return _distinct(_nearest_log_snr(schedule, timesteps, steps), timesteps)


def _distinct(raw: np.ndarray, timesteps: int) -> np.ndarray:
    """Ascending `raw` with each value raised to one above its predecessor, capped at
    T − S + i so that all S stay below T; unchanged when already distinct."""
    i = np.arange(len(raw), dtype=np.int64)
    distinct = i + np.maximum.accumulate(raw - i)  # raw[i] ↑ to ≥ previous + 1
    return np.minimum(distinct, timesteps - len(raw) + i)


# `sample.spacing` → its ascending timesteps; the keys are the spacings config allows.
_ASCENDING: dict[str, Callable[[int, int, NoiseSchedule | None], np.ndarray]] = {
    "uniform": _uniform, "quadratic": _quadratic, "trailing": _trailing, "logsnr": _log_snr}
SPACINGS = tuple(_ASCENDING)


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




# ---------------------------------------------------------------- samplers


def check_generators(noise: torch.Tensor, generators: Sequence[torch.Generator]) -> None:
    """One generator per row of `noise`: sample i draws only from generators[i]."""
    if noise.shape[0] != len(generators):
        raise ValueError(f"{noise.shape[0]} noise rows but {len(generators)} generators")


# σ_t of the DDPM step at t: β̃_t ("small") or β_t ("large"), the two bounds of Ho et al.
# 2020, §3.2. Per step, as a Python float: float64 scalars, rounded as they always were.
_POSTERIOR_STD: dict[str, Callable[[NoiseSchedule, int], float]] = {
    "small": lambda schedule, t: float(torch.exp(0.5 * schedule.posterior_log_variance_clipped[t])),
    "large": lambda schedule, t: float(schedule.betas[t].sqrt()),
}
VARIANCES = tuple(_POSTERIOR_STD)


@dataclass(frozen=True)
class DDPMStepper:
    """Ancestral steps over all T timesteps (Ho et al. 2020 "DDPM", Algorithm 2).

    Each step draws x_{t−1} ~ N(μ̃_t(x_t, x̂_0), σ_t² I), the posterior of eq. 7 with
    x̂_0 in place of x_0 (equivalent to Algorithm 2's ε form, and it lets x̂_0 be
    clipped), σ_t² per `variance`; sample i's noise comes from generators[i]. The
    last step returns x̂_0 with no noise (μ̃ at the first step is exactly x̂_0).
    """

    schedule: NoiseSchedule
    generators: Sequence[torch.Generator]
    variance: str = "small"

    @property
    def timesteps(self) -> range:
        return range(self.schedule.timesteps - 1, -1, -1)

    def step(self, i: int, x: torch.Tensor, x0_hat: torch.Tensor,
             eps_hat: torch.Tensor) -> torch.Tensor:
        t = self.timesteps[i]
        if t == 0:
            return x0_hat
        mean = (float(self.schedule.posterior_mean_coef1[t]) * x0_hat
                + float(self.schedule.posterior_mean_coef2[t]) * x)
        std = _POSTERIOR_STD[self.variance](self.schedule, t)
        z = initial_noise(self.generators, tuple(x.shape[1:]), x.device, x.dtype)
        return mean + std * z


@dataclass(frozen=True)
class DDIMStepper:
    """DDIM steps over `timesteps` (Song et al. 2021 "DDIM", eq. 12).

    x_prev = √ᾱ_prev · x̂_0 + √(1 − ᾱ_prev − σ²) · ε̂ + σ · z, with
    σ = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)   (eq. 16);
    z from generators[i] for sample i, drawn only when η > 0.
    """

    schedule: NoiseSchedule
    timesteps: list[int]
    generators: Sequence[torch.Generator]
    eta: float = 0.0

    def step(self, i: int, x: torch.Tensor, x0_hat: torch.Tensor,
             eps_hat: torch.Tensor) -> torch.Tensor:
        if i == len(self.timesteps) - 1:
            return x0_hat  # ᾱ_prev = 1: σ = 0 and the direction term vanishes
        alpha_bar = float(self.schedule.alphas_cumprod[self.timesteps[i]])
        alpha_bar_prev = float(self.schedule.alphas_cumprod[self.timesteps[i + 1]])
        sigma = self.eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)
                            * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
        # η > 1 can push σ² past 1 − ᾱ_prev; the direction term then vanishes.
        direction = max(1 - alpha_bar_prev - sigma**2, 0.0) ** 0.5
        x = alpha_bar_prev**0.5 * x0_hat + direction * eps_hat
        if self.eta > 0:
            x = x + sigma * initial_noise(self.generators, tuple(x.shape[1:]), x.device, x.dtype)
        return x


def ddpm_sample(model: Model, schedule: NoiseSchedule, noise: torch.Tensor,
                generators: Sequence[torch.Generator], *, prediction: str = "eps",
                variance: str = "small", clip_x0: bool = True, trajectory_frames: int = 0,
                progress: Callable[[], object] | None = None) -> SampleResult:
    """Ancestral sampling over all T steps (`DDPMStepper`; Ho et al. 2020, Algorithm 2),
    σ_t² = β̃_t ("small") or β_t ("large").

    `noise` is x_T [B, C, H, W]; sample i's step noise comes from generators[i].
    `progress`, when given, is called with no arguments after every step.
    """
    check_generators(noise, generators)
    return sample_loop(DDPMStepper(schedule, generators, variance),
                       Denoiser(model, schedule, prediction, clip_x0), noise,
                       trajectory_frames=trajectory_frames, progress=progress)


def ddim_sample(model: Model, schedule: NoiseSchedule, noise: torch.Tensor,
                generators: Sequence[torch.Generator], *, steps: int, eta: float = 0.0,
                spacing: str = "uniform", prediction: str = "eps", clip_x0: bool = True,
                trajectory_frames: int = 0,
                progress: Callable[[], object] | None = None) -> SampleResult:
    """DDIM sampling over S = `steps` timesteps (`DDIMStepper`; Song et al. 2021, eq. 12).

    η = 0 is deterministic; η = 1 with S = T is DDPM with β̃_t and, since noise is
    drawn from generators[i] at the same steps in the same order, reproduces
    `ddpm_sample(variance="small")` sample for sample. Timesteps: `ddim_timesteps`.
    `progress`, when given, is called with no arguments after every step.
    """
    check_generators(noise, generators)
    taus = ddim_timesteps(schedule.timesteps, steps, spacing, schedule=schedule).tolist()
    return sample_loop(DDIMStepper(schedule, taus, generators, eta),
                       Denoiser(model, schedule, prediction, clip_x0), noise,
                       trajectory_frames=trajectory_frames, progress=progress)
