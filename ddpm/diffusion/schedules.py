"""Noise schedules β_1..β_T and the quantities the forward and reverse processes need.

Timesteps are 0-indexed in code: index t ∈ {0, …, T−1} is the paper's step t+1, so
`betas[0]` is β_1 and `alphas_cumprod[t]` is ᾱ_{t+1}. Everything here is float64;
`extract` casts to the working dtype only at the point of use, so the schedule
algebra never loses precision (ᾱ_t near 1 and near 0 both need it).

Schedules may be added, never silently changed: a trained model is tied to the
exact β sequence it saw (improved-diffusion's rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ddpm.errors import ConfigError


def linear_betas(timesteps: int) -> torch.Tensor:
    """β linear from 1e-4 to 0.02 at T = 1000 (Ho et al. 2020 "DDPM", §4).

    For other T the endpoints are scaled by 1000/T, as improved-diffusion's
    `get_named_beta_schedule` does, so the total noise added stays comparable.
    That makes β_T = 20/T, so T must exceed 20.
    """
    if timesteps <= 20:
        raise ConfigError(f"diffusion.timesteps = {timesteps}: must be > 20 for the linear "
                          "schedule (its last beta, 20/T, must stay below 1)")
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021 "Improved DDPM", eq. 17).

    ᾱ(t) = f(t)/f(0) with f(t) = cos²(((t/T) + s)/(1 + s) · π/2), and
    β_t = min(1 − ᾱ(t)/ᾱ(t−1), max_beta). The clip stops β reaching 1 at t = T,
    where f(T) = 0 and the reverse process would be singular.
    """
    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    t = torch.arange(timesteps + 1, dtype=torch.float64)  # [T+1]: paper's t = 0..T
    alphas_bar = f(t) / f(t[:1])
    betas = 1 - alphas_bar[1:] / alphas_bar[:-1]  # [T]
    return betas.clamp(max=max_beta)


def sigmoid_betas(timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                  max_beta: float = 0.999) -> torch.Tensor:
    """Sigmoid schedule (Jabri et al. 2022 "Scalable Adaptive Computation for Iterative
    Generation", Algorithm/§C "sigmoid_schedule").

    ᾱ(t) = (σ(end/τ) − σ((t/T·(end − start) + start)/τ)) / (σ(end/τ) − σ(start/τ)),
    a slice [start, end] of the logistic curve rescaled to run from 1 at t = 0 to 0
    at t = T; β_t = min(1 − ᾱ(t)/ᾱ(t−1), max_beta) as for the cosine schedule. It
    spends fewer steps than cosine at the nearly clean and nearly pure-noise ends.
    """
    def alpha_bar(t: torch.Tensor) -> torch.Tensor:
        v_start, v_end = (torch.sigmoid(torch.tensor(v / tau, dtype=torch.float64))
                          for v in (start, end))
        return (v_end - torch.sigmoid((t / timesteps * (end - start) + start) / tau)) / (
            v_end - v_start)

    t = torch.arange(timesteps + 1, dtype=torch.float64)  # [T+1]: paper's t = 0..T
    alphas_bar = alpha_bar(t)
    betas = 1 - alphas_bar[1:] / alphas_bar[:-1]  # [T]
    return betas.clamp(max=max_beta)


SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Float64 tensors [T] precomputed from β; index t is the paper's step t+1.

    Legend (Ho et al. 2020, eqs. 4, 6, 7):
        betas                          β_t
        alphas                         α_t = 1 − β_t
        alphas_cumprod                 ᾱ_t = ∏_{s≤t} α_s
        alphas_cumprod_prev            ᾱ_{t−1}, with ᾱ_0 = 1 before the first step
        posterior_variance             β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
        posterior_log_variance_clipped log β̃_t, with β̃_1 = 0 replaced by β̃_2
        posterior_mean_coef1/2         μ̃_t = coef1 · x_0 + coef2 · x_t
    """

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or len(betas) < 2:
            raise ConfigError(f"diffusion.timesteps = {betas.numel()}: must be >= 2")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        # β̃ at the first step is 0 (x_0 is then known exactly); its log is -inf, so
        # borrow the next value as improved-diffusion does. Samplers add no noise there.
        log_variance = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        return cls(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=log_variance,
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            posterior_mean_coef2=(1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
        )

    @classmethod
    def from_name(cls, name: str, timesteps: int) -> NoiseSchedule:
        if name not in SCHEDULES:
            raise ConfigError(f"diffusion.schedule = {name!r}: must be one of "
                              + ", ".join(repr(k) for k in SCHEDULES))
        if timesteps < 2:
            raise ConfigError(f"diffusion.timesteps = {timesteps}: must be >= 2")
        return cls.from_betas(SCHEDULES[name](timesteps))

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    def log_snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """log SNR(t) = log(ᾱ_t / (1 − ᾱ_t)) (Kingma et al. 2021 "Variational DM"), float64."""
        alpha_bar = self.alphas_cumprod[torch.as_tensor(t, device="cpu")]
        return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def extract(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size | tuple[int, ...],
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """a[t] per batch element, as `dtype` on t's device, shaped [B, 1, …, 1] to broadcast.

    The gather happens on the CPU in float64 and the cast comes last, so the
    schedule keeps full precision and no float64 kernel is needed on the device.
    """
    values = a[t.cpu()].to(dtype=dtype)  # [B]
    return values.to(t.device).reshape(len(t), *([1] * (len(x_shape) - 1)))  # [B,1,1,1]
