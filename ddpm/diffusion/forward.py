"""Forward process q(x_t | x_0), training targets and the denoising loss.

Model convention: `model(x_t, t)` with x_t [B, C, H, W] float and t int64 [B]
(0-indexed timesteps, on x_t's device) returns a tensor of x_t's shape.

Legend: x0 = x_0, noise/eps = ε, a = √ᾱ_t (`sqrt_alphas_cumprod`),
σ = √(1 − ᾱ_t) (`sqrt_one_minus_alphas_cumprod`); a² + σ² = 1.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from ddpm.diffusion.schedules import NoiseSchedule, extract
from ddpm.errors import ConfigError

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PREDICTIONS = ("eps", "v", "x0")
LOSS_WEIGHTINGS = ("none", "min_snr")


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ConfigError(f"diffusion.prediction = {prediction!r}: must be one of "
                          + ", ".join(repr(p) for p in PREDICTIONS))


def _a_sigma(schedule: NoiseSchedule, t: torch.Tensor,
             x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1 − ᾱ_t)) per batch element, [B,1,1,1] in x's dtype."""
    return (extract(schedule.sqrt_alphas_cumprod, t, x.shape, x.dtype),
            extract(schedule.sqrt_one_minus_alphas_cumprod, t, x.shape, x.dtype))


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, a draw from q(x_t | x_0) (Ho et al. 2020, eq. 4)."""
    a, sigma = _a_sigma(schedule, t, x0)
    return a * x0 + sigma * noise


def prediction_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor,
                      t: torch.Tensor, prediction: str) -> torch.Tensor:
    """What the network learns to output at (x_t, t).

    "eps": ε (Ho et al. 2020, eq. 14); "x0": x_0; "v": v = √ᾱ_t · ε − √(1 − ᾱ_t) · x_0
    (Salimans & Ho 2022 "Progressive Distillation", §4).
    """
    check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    a, sigma = _a_sigma(schedule, t, x0)
    return a * noise - sigma * x0


def predict_x0_and_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor,
                       model_output: torch.Tensor, prediction: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert `prediction_target`: (x̂_0, ε̂) consistent with x_t = a·x̂_0 + σ·ε̂.

    For v, x_0 = a·x_t − σ·v and ε = σ·x_t + a·v (Salimans & Ho 2022, §4), which
    follow from a² + σ² = 1 and never divide, so v is well conditioned at every t.
    """
    check_prediction(prediction)
    a, sigma = _a_sigma(schedule, t, x_t)
    if prediction == "eps":
        return (x_t - sigma * model_output) / a, model_output
    if prediction == "x0":
        return model_output, (x_t - a * model_output) / sigma
    return a * x_t - sigma * model_output, sigma * x_t + a * model_output


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, prediction: str,
                   gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weight per timestep (Hang et al. 2023, "Efficient Diffusion Training
    via Min-SNR Weighting Strategy", §3.4), float32 [B] on t's device.

    The weight min(SNR_t, γ) is defined for the x0 loss ‖x̂0 − x0‖². The ε and v losses
    are that x0 loss scaled by SNR_t and SNR_t + 1 (‖ε̂ − ε‖² = SNR·‖x̂0 − x0‖²,
    ‖v̂ − v‖² = (SNR + 1)·‖x̂0 − x0‖²), so they are divided by those factors to give
    the same weighting of x0 errors whatever the network predicts.
    """
    check_prediction(prediction)
    snr = schedule.log_snr(t.cpu()).exp()                          # float64 [B]
    clipped = snr.clamp(max=gamma)
    weight = {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}[prediction]
    return weight.to(device=t.device, dtype=torch.float32)


class TrainingLoss(NamedTuple):
    """`loss`: what is minimised, a scalar with gradient. `mse`: the unweighted mean
    per-pixel squared error of the same outputs against the same target (detached), the
    quantity `val/loss` measures; equal to `loss` when `loss_weighting` is "none"."""

    loss: torch.Tensor
    mse: torch.Tensor


def training_losses(model: Model, schedule: NoiseSchedule, x0: torch.Tensor, prediction: str,
                    generator: torch.Generator | None = None, loss_weighting: str = "none",
                    min_snr_gamma: float = 5.0,
                    draws: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainingLoss:
    """L_simple (Ho et al. 2020, eq. 14), for any prediction target, and its unweighted MSE.

    t ~ Uniform{0..T−1} and ε ~ N(0, I) per image; the loss is the mean per-pixel
    squared error between model(x_t, t) and the target, each image weighted by
    `min_snr_weight` when `loss_weighting` is "min_snr". `draws` = (t [B], ε like
    x0) gives them (training draws them per image: `ddpm.training.draws`); otherwise
    they are drawn here, from `generator` on its own device and then moved to x0's
    device, so a seeded CPU generator gives the same t and ε wherever x0 lives.
    """
    check_prediction(prediction)
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ConfigError(f"diffusion.loss_weighting = {loss_weighting!r}: must be one of "
                          + ", ".join(repr(w) for w in LOSS_WEIGHTINGS))
    t, noise = draws if draws is not None else _draw_t_and_noise(schedule, x0, generator)
    x_t = q_sample(schedule, x0, t, noise)
    target = prediction_target(schedule, x0, noise, t, prediction)
    # Float32 loss even under mixed precision: the mean of many small squares
    # loses most of its bits in bf16.
    per_image = (model(x_t, t).float() - target.float()).pow(2).flatten(1).mean(1)  # [B]
    mse = per_image.detach().mean()
    if loss_weighting == "min_snr":
        per_image = per_image * min_snr_weight(schedule, t, prediction, min_snr_gamma)
    return TrainingLoss(per_image.mean(), mse)


def _draw_t_and_noise(schedule: NoiseSchedule, x0: torch.Tensor,
                      generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    draw_device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.timesteps, (x0.shape[0],), generator=generator,
                      device=draw_device).to(x0.device)  # [B]
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                        device=draw_device).to(x0.device)
    return t, noise


def training_loss(model: Model, schedule: NoiseSchedule, x0: torch.Tensor, prediction: str,
                  generator: torch.Generator | None = None, loss_weighting: str = "none",
                  min_snr_gamma: float = 5.0) -> torch.Tensor:
    """The (weighted) training loss alone: `training_losses(...).loss`, a scalar."""
    return training_losses(model, schedule, x0, prediction, generator, loss_weighting,
                           min_snr_gamma).loss


@torch.no_grad()
def loss_per_timestep(model: Model, schedule: NoiseSchedule, x0: torch.Tensor,
                      timesteps: Sequence[int], noise: torch.Tensor, prediction: str,
                      batch_size: int = 64) -> torch.Tensor:
    """Per-image mean per-pixel MSE at each timestep, float32 [len(timesteps), N] on the CPU.

    The same `noise` (x0's shape) is reused at every t, so differences between
    timesteps are not sampling noise. The model's train/eval mode is left as is.
    """
    check_prediction(prediction)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    bad = [t for t in timesteps if not 0 <= int(t) < schedule.timesteps]
    if bad:
        raise ValueError(f"timestep {bad[0]} outside 0..{schedule.timesteps - 1}")
    losses = torch.empty(len(timesteps), x0.shape[0])
    for row, step in enumerate(timesteps):
        for start in range(0, x0.shape[0], batch_size):
            x0_b = x0[start:start + batch_size]
            noise_b = noise[start:start + batch_size].to(x0_b.device)
            t = torch.full((x0_b.shape[0],), int(step), dtype=torch.int64, device=x0_b.device)
            x_t = q_sample(schedule, x0_b, t, noise_b)
            target = prediction_target(schedule, x0_b, noise_b, t, prediction)
            err = (model(x_t, t).float() - target.float()) ** 2
            losses[row, start:start + x0_b.shape[0]] = err.flatten(1).mean(1).cpu()  # [b]
    return losses
