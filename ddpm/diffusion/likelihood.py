"""An upper bound on the negative log-likelihood of images, in bits per dimension.

The variational bound of Ho et al. 2020 ("DDPM", eq. 5), in the paper's 1-indexed steps:

    −log p_θ(x_0) ≤ L_T + Σ_{t=2..T} L_{t−1} + L_0
    L_T     = KL(q(x_T | x_0) ‖ N(0, I))                           prior
    L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))         diffusion
    L_0     = −log p_θ(x_0 | x_1)                                  discretised decoder

summed over the D = C·H·W dimensions of an image and divided by D·ln 2 to give
bits/dim, the unit of Nichol & Dhariwal 2021 ("Improved DDPM", their L_vlb).

Index mapping. Code timesteps are 0-indexed (`NoiseSchedule`): index t is the
paper's step t+1, so the term evaluated at index t is the paper's L_t:
    index 0          → L_0, the decoder −log p(x_0 | x_1), with x_1 = q_sample at index 0;
    index t ≥ 1      → L_t = KL at the paper's step t+1 (T−1 terms, indices 1..T−1);
    L_T, the prior KL of q(x_T | x_0), uses ᾱ at index T−1 (no network call).
`alphas_cumprod[t]` is ᾱ_{t+1}, `alphas_cumprod_prev[t]` is ᾱ_t (1 at index 0).

The reverse model p_θ(x_{t−1} | x_t) = N(μ̃_t(x_t, x̂_0), σ_t² I) is the one
`ddpm_sample` draws from: x̂_0 from the network (ε, v or x0 converted by the
`Denoiser`, optionally clipped to [−1, 1]) and σ_t² = β̃_t ("small")
or β_t ("large").

Estimator (`bits_per_dim_bound`): every index below `exact_below` is evaluated
(one noise draw each); the rest are split into strata of near-equal size, one
index drawn uniformly per stratum and image and weighted by the stratum's size,
an unbiased estimate of their sum. Noise and draws come from one generator per
image (`sample_generators`), so reruns, batch sizes and devices give the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.forward import Model, check_prediction, q_sample
from ddpm.diffusion.samplers import VARIANCES, sample_generators
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import ConfigError

BIN_HALF_WIDTH = 1 / 255  # uint8 data in [−1, 1] (x = u/127.5 − 1): bins 2/255 wide
EDGE = 0.999              # |x| beyond this is the first or last bin, open to ±∞


def check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise ConfigError(f"sample.variance = {variance!r}: must be one of "
                          + ", ".join(repr(v) for v in VARIANCES))


def _per_image_sum(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)  # [B, ...] → [B]


def _column(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] as float64 [B, 1] (broadcasts against flattened images)."""
    return values[t.cpu()].reshape(-1, 1)


# ---------------------------------------------------------------- closed forms


def prior_kl(schedule: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(N(√ᾱ_T x_0, (1 − ᾱ_T) I) ‖ N(0, I)) in nats, float64 [B].

    Per dimension ½(ᾱ_T x_0² + (1 − ᾱ_T) − 1 − log(1 − ᾱ_T)); ᾱ_T is
    `alphas_cumprod[T − 1]`. No network: the bound's cost of not reaching pure noise.
    """
    alpha_bar = schedule.alphas_cumprod[-1]
    x0 = x0.double().flatten(1)
    per_dim = 0.5 * (alpha_bar * x0**2 - alpha_bar - torch.log1p(-alpha_bar))
    return per_dim.sum(1)


def snr(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) at 0-indexed t, float64 (Kingma et al. 2021, VDM)."""
    alpha_bar = schedule.alphas_cumprod[t.cpu()]
    return alpha_bar / (1 - alpha_bar)


def diffusion_kl_small(schedule: NoiseSchedule, t: torch.Tensor, x0: torch.Tensor,
                       x0_hat: torch.Tensor) -> torch.Tensor:
    """L_t (index t ≥ 1) with σ_t² = β̃_t, in nats, float64 [B].

    Both Gaussians share the variance β̃_t, so the KL is ‖μ̃_t(x_0) − μ̃_t(x̂_0)‖² / (2β̃_t)
    = coef1² ‖x_0 − x̂_0‖² / (2β̃_t) (the x_t parts of the means cancel), and
    coef1²/β̃_t = SNR(t−1) − SNR(t): the discrete-time loss of Kingma et al. 2021 (VDM),
        L_t = ½ (SNR(t−1) − SNR(t)) ‖x_0 − x̂_0‖².
    """
    t = t.cpu()
    if bool((t < 1).any()):
        raise ValueError("the diffusion KL is defined for indices t >= 1 (index 0 is the decoder)")
    weight = (snr(schedule, t - 1) - snr(schedule, t)).reshape(-1, 1)  # [B, 1]
    error2 = (x0.double() - x0_hat.double()).flatten(1).pow(2)        # [B, D]
    return 0.5 * (weight * error2).sum(1)


def diffusion_kl_large(schedule: NoiseSchedule, t: torch.Tensor, x0: torch.Tensor,
                       x0_hat: torch.Tensor) -> torch.Tensor:
    """L_t (index t ≥ 1) with σ_t² = β_t, in nats, float64 [B].

    KL(N(μ̃_t, β̃_t) ‖ N(μ_θ, β_t)) per dimension (Ho et al. 2020, §3.2, σ_t² = β_t):
        ½ [log(β_t / β̃_t) + β̃_t / β_t − 1] + (μ̃_t − μ_θ)² / (2β_t),
    with μ̃_t − μ_θ = coef1 · (x_0 − x̂_0), coef1 = `posterior_mean_coef1` (eq. 7).
    """
    t = t.cpu()
    if bool((t < 1).any()):
        raise ValueError("the diffusion KL is defined for indices t >= 1 (index 0 is the decoder)")
    beta = _column(schedule.betas, t)
    beta_tilde = _column(schedule.posterior_variance, t)
    coef1 = _column(schedule.posterior_mean_coef1, t)
    error2 = (x0.double() - x0_hat.double()).flatten(1).pow(2)  # [B, D]
    variance_term = 0.5 * (torch.log(beta / beta_tilde) + beta_tilde / beta - 1)  # [B, 1]
    return (variance_term + coef1**2 * error2 / (2 * beta)).sum(1)


def diffusion_kl(schedule: NoiseSchedule, t: torch.Tensor, x0: torch.Tensor,
                 x0_hat: torch.Tensor, variance: str) -> torch.Tensor:
    """L_t at indices t ≥ 1 for `sample.variance` (small: β̃_t, large: β_t), nats [B]."""
    check_variance(variance)
    kl = diffusion_kl_small if variance == "small" else diffusion_kl_large
    return kl(schedule, t, x0, x0_hat)


# ---------------------------------------------------------------- decoder L_0


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_normal_interval(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a < b, without cancellation in either tail."""
    upper = a > 0  # both in the upper tail: Φ(b) − Φ(a) = Φ(−a) − Φ(−b)
    hi = torch.special.log_ndtr(torch.where(upper, -a, b))
    lo = torch.special.log_ndtr(torch.where(upper, -b, a))
    return hi + _log1mexp(lo - hi)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor | float) -> torch.Tensor:
    """log P(x) per element for a Gaussian N(mean, e^{2·log_scale}) discretised to 256 bins.

    Ho et al. 2020, eq. 13: bin [x − 1/255, x + 1/255] around each of the 256 values
    of uint8 data in [−1, 1], the first bin open to −∞ and the last to +∞, so the
    bins cover the line and their probabilities sum to 1. improved-diffusion's
    `discretized_gaussian_log_likelihood`, with the exact normal CDF in log space
    (`log_ndtr`) instead of its tanh approximation and 1e-12 floor. Float64.
    """
    x, mean = x.double(), mean.double()
    inv_scale = torch.exp(-torch.as_tensor(log_scale, dtype=torch.float64))
    a = (x - BIN_HALF_WIDTH - mean) * inv_scale  # lower edge, standardised
    b = (x + BIN_HALF_WIDTH - mean) * inv_scale  # upper edge
    return torch.where(x < -EDGE, torch.special.log_ndtr(b),
                       torch.where(x > EDGE, torch.special.log_ndtr(-a),
                                   _log_normal_interval(a, b)))


def decoder_log_scale(schedule: NoiseSchedule, variance: str) -> float:
    """log σ_1 of the decoder p_θ(x_0 | x_1), the reverse variance at index 0.

    "small": β̃ at index 0 is 0, so `posterior_log_variance_clipped[0]` (β̃ of index 1,
    improved-diffusion's clip); "large": β_1 (Ho et al. 2020, σ_1² = β_1; improved-
    diffusion's FIXED_LARGE uses β̃ of index 1 there instead).
    """
    check_variance(variance)
    if variance == "small":
        return float(0.5 * schedule.posterior_log_variance_clipped[0])
    return float(0.5 * torch.log(schedule.betas[0]))


def decoder_nll(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor,
                x0_hat: torch.Tensor, variance: str) -> torch.Tensor:
    """L_0 = −log p_θ(x_0 | x_1) in nats, float64 [B] (Ho et al. 2020, eq. 13).

    x_t is x_1 (index 0); the decoder's mean is μ_θ(x_1, 1) = μ̃ at index 0
    (coef1 = 1 and coef2 = 0 there, so the mean is x̂_0).
    """
    mean = (float(schedule.posterior_mean_coef1[0]) * x0_hat.double()
            + float(schedule.posterior_mean_coef2[0]) * x_t.double())
    log_p = discretized_gaussian_log_likelihood(x0, mean, decoder_log_scale(schedule, variance))
    return -_per_image_sum(log_p)


def vlb_terms(schedule: NoiseSchedule, t: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
              x0_hat: torch.Tensor, variance: str) -> torch.Tensor:
    """The bound's term at each element's index t (L_0 at 0, L_t at t ≥ 1), nats float64 [B]."""
    t = t.cpu()
    out = torch.empty(len(t), dtype=torch.float64)
    first = t == 0
    if bool(first.any()):
        out[first] = decoder_nll(schedule, x0[first], x_t[first], x0_hat[first], variance)
    if bool((~first).any()):
        rest = ~first
        out[rest] = diffusion_kl(schedule, t[rest], x0[rest], x0_hat[rest], variance)
    return out


# ---------------------------------------------------------------- estimator


def timestep_strata(timesteps: int, exact_below: int, strata: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges splitting indices exact_below..T−1 into ≤ `strata` near-equal parts."""
    start = min(exact_below, timesteps)
    count = min(strata, timesteps - start)
    if count <= 0:
        return []
    edges = np.round(np.linspace(start, timesteps, count + 1)).astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]


@dataclass
class BoundEstimate:
    """Per-image bits/dim (CPU float64 [N]): the total and its three parts."""

    total: torch.Tensor
    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor

    @property
    def mean(self) -> float:
        return float(self.total.mean())

    @property
    def standard_error(self) -> float:
        """sd/√n over images (Monte-Carlo noise and image-to-image spread together)."""
        n = len(self.total)
        return float(self.total.std() / math.sqrt(n)) if n > 1 else float("nan")

    def summary(self) -> dict:
        return {"bits_per_dim": self.mean, "bits_per_dim_se": self.standard_error,
                "bits_per_dim_prior": float(self.prior.mean()),
                "bits_per_dim_diffusion": float(self.diffusion.mean()),
                "bits_per_dim_decoder": float(self.decoder.mean()),
                "n_images": len(self.total)}


def evaluations_per_image(timesteps: int, exact_below: int, strata: int) -> int:
    """Network calls per image: the exact indices plus one per stratum."""
    return min(exact_below, timesteps) + len(timestep_strata(timesteps, exact_below, strata))


def _jobs(schedule: NoiseSchedule, generators: Sequence[torch.Generator], exact_below: int,
          strata: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, t, weight) per network call, slot-major: every image's slot 0, then slot 1, ….

    Slots are the exact indices 0..exact_below−1, then one per stratum, whose index
    each image draws (first, from its own generator) uniformly in the stratum.
    """
    n, T = len(generators), schedule.timesteps
    exact = list(range(min(exact_below, T)))
    bounds = timestep_strata(T, exact_below, strata)
    drawn = np.array([[int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in bounds]
                      for g in generators], dtype=np.int64).reshape(n, len(bounds))
    slots = len(exact) + len(bounds)
    image = np.tile(np.arange(n), slots)
    t = np.concatenate([np.full(n, s) for s in exact] + [drawn[:, k] for k in range(len(bounds))])
    weight = np.concatenate([np.ones(n)] * len(exact) + [np.full(n, hi - lo) for lo, hi in bounds])
    return image, t.astype(np.int64), weight


@torch.no_grad()
def bits_per_dim_bound(model: Model, schedule: NoiseSchedule, x0: torch.Tensor, prediction: str,
                       *, variance: str = "small", clip_x0: bool = True, seed: int = 0,
                       exact_below: int = 50, strata: int = 50, batch_size: int = 64,
                       progress: Callable[[int], object] | None = None) -> BoundEstimate:
    """Estimate of the bound L_T + Σ L_{t−1} + L_0 for each image of x0 (in [−1, 1], uint8
    levels), in bits/dim; see the module docstring for the indices and the estimator.

    Each (image, index) pair gets fresh noise from the image's generator (seeded by
    (seed, image index)), drawn in a fixed order, so the result does not depend on
    `batch_size` or the device. The network runs in eval mode (restored after).
    `progress`, when given, is called after every batch with its number of network
    calls (`evaluations_per_image` × N in all).
    """
    check_prediction(prediction)
    check_variance(variance)
    if exact_below < 1:
        raise ValueError(f"exact_below = {exact_below}: must be >= 1 (index 0, the decoder, "
                         "is always evaluated)")
    if strata < 1:
        raise ValueError(f"strata = {strata}: must be >= 1")
    n, shape, device = x0.shape[0], tuple(x0.shape[1:]), x0.device
    generators = sample_generators(seed, range(n))
    denoiser = Denoiser(model, schedule, prediction, clip_x0)  # the x̂_0 ddpm_sample steps with
    image, t_all, weight = _jobs(schedule, generators, exact_below, strata)
    nats = {"diffusion": torch.zeros(n, dtype=torch.float64),
            "decoder": torch.zeros(n, dtype=torch.float64)}
    training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        for start in range(0, len(t_all), batch_size):
            idx = image[start:start + batch_size]
            t_np = t_all[start:start + batch_size]
            noise = torch.stack([torch.randn(shape, generator=generators[i], dtype=x0.dtype)
                                 for i in idx]).to(device)                  # [b, C, H, W]
            x0_b = x0[torch.as_tensor(idx, device=device)]                 # [b, C, H, W]
            t = torch.as_tensor(t_np, device=device)                        # [b]
            x_t = q_sample(schedule, x0_b, t, noise)
            x0_hat, _ = denoiser(x_t, t)
            terms = vlb_terms(schedule, t.cpu(), x0_b.cpu(), x_t.cpu(), x0_hat.cpu(),
                              variance) * torch.from_numpy(weight[start:start + batch_size])
            for part, mask in (("decoder", t_np == 0), ("diffusion", t_np != 0)):
                nats[part].index_add_(0, torch.from_numpy(idx[mask]), terms[mask])
            if progress is not None:
                progress(len(idx))
    finally:
        if training:
            model.train()
    to_bits = 1 / (math.prod(shape) * math.log(2))
    prior = prior_kl(schedule, x0.cpu()) * to_bits
    diffusion, decoder = nats["diffusion"] * to_bits, nats["decoder"] * to_bits
    return BoundEstimate(total=prior + diffusion + decoder, prior=prior, diffusion=diffusion,
                         decoder=decoder)
