"""The network as the samplers see it: (x_t, t) → (x̂_0, ε̂), whatever it was trained to predict.

The wrapper owns the parametrisation, as EDM's denoiser D_θ wraps the raw network F_θ
(Karras et al. 2022 "EDM", Table 1 and §5): what the network outputs (`diffusion.prediction`:
ε, v or x_0) is read here alone, and the sampler loop and the likelihood bound receive
the same pair (x̂_0, ε̂) whatever it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddpm.diffusion.forward import Model, predict_x0_and_eps
from ddpm.diffusion.schedules import NoiseSchedule


@dataclass(frozen=True)
class Denoiser:
    """`model` (which outputs `prediction`) on `schedule`, as (x̂_0, ε̂).

    With `clip_x0`, x̂_0 is clamped to [−1, 1] and ε̂ recomputed from the clamped
    x̂_0, which keeps x_t = √ᾱ·x̂_0 + √(1−ᾱ)·ε̂ true after the clamp: that is what
    makes DDIM with η = 1 and every step equal DDPM (DDIM code, diffusers).
    """

    model: Model
    schedule: NoiseSchedule
    prediction: str
    clip_x0: bool

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) at x_t [B, C, H, W] and t int64 [B] on x_t's device, in x_t's dtype."""
        output = self.model(x, t).to(x.dtype)  # float32 even from a bf16-autocast network
        x0_hat, eps_hat = predict_x0_and_eps(self.schedule, x, t, output, self.prediction)
        if self.clip_x0:
            x0_hat = x0_hat.clamp(-1, 1)
            eps_hat = predict_x0_and_eps(self.schedule, x, t, x0_hat, "x0")[1]
        return x0_hat, eps_hat
