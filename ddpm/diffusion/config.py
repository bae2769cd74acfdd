"""The `diffusion` section of params.yaml: noise schedule, T, target and loss weighting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ddpm.config import bounded
from ddpm.errors import ConfigError


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: Literal["linear", "cosine", "sigmoid"] = "cosine"
    timesteps: int = bounded(1000, ge=2)
    prediction: Literal["eps", "v", "x0"] = "v"
    loss_weighting: Literal["none", "min_snr"] = "min_snr"
    min_snr_gamma: float = bounded(5.0, gt=0.0)


def refuse_steps_beyond_timesteps(key: str, value: Any, steps: int, timesteps: int) -> None:
    """The one-line error for a sampler step count (`key` = `value`) above T."""
    if steps > timesteps:
        raise ConfigError(f"{key} = {value!r}: must be <= diffusion.timesteps ({timesteps}); "
                          f"lower {key} or raise diffusion.timesteps")
