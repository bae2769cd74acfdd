"""Sampler registry: `sample.sampler` → the sampling function, as `ddpm/models/registry.py` does
for networks.

A dict of real functions (never names looked up as strings elsewhere). Every entry is a
pure function `fn(model, schedule, noise, generators, *, <its options>, prediction,
clip_x0, trajectory_frames, progress) -> SampleResult`; `options` maps its keyword
options to the `sample.*` settings they come from, so one call site (`sample_images`)
serves the generate stage, the FID sweep and the training sample grids. A new sampler is
one function, one line here and its tests; `sample.sampler`'s allowed values
(ddpm/sampling/config.py) and `train.preview_sampler`'s (ddpm/training/config.py) come
from this dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ddpm.diffusion.forward import Model
from ddpm.diffusion.samplers import SampleResult, ddim_sample, ddpm_sample
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.diffusion.solvers import dpm_solver_pp_sample, unipc_sample
from ddpm.errors import ConfigError


def _all_timesteps(steps: int, timesteps: int) -> int:
    return timesteps


def _one_per_step(steps: int, timesteps: int) -> int:
    return steps


@dataclass(frozen=True)
class Sampler:
    """A registered sampler.

    `fn`: the sampling function. `options`: its keyword argument → the `sample.*` setting
    that feeds it, besides prediction and clip_x0 (settings not named are ignored for it).
    `nfe`: network evaluations per sample, from (sample.steps, T).
    """

    fn: Callable[..., SampleResult]
    options: dict[str, str] = field(default_factory=dict)
    nfe: Callable[[int, int], int] = _one_per_step


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ddpm_sample, {"variance": "variance"}, _all_timesteps),
    "ddim": Sampler(ddim_sample, {"steps": "steps", "eta": "eta", "spacing": "spacing"}),
    "dpmpp_2m": Sampler(dpm_solver_pp_sample, {"steps": "steps", "spacing": "solver_spacing"}),
    "unipc": Sampler(unipc_sample, {"steps": "steps", "spacing": "solver_spacing"}),
}

SAMPLER_NAMES = tuple(SAMPLERS)


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"sample.sampler = {name!r}: unknown sampler; allowed values are "
                          + ", ".join(repr(s) for s in SAMPLERS)) from None


def sampler_nfe(name: str, steps: int, timesteps: int) -> int:
    """Network evaluations per sample of sampler `name` with `steps` steps out of T."""
    return get_sampler(name).nfe(steps, timesteps)


def sample_images(sampler: str, model: Model, schedule: NoiseSchedule, noise: torch.Tensor,
                  generators: Sequence[torch.Generator], *, steps: int, eta: float,
                  spacing: str, solver_spacing: str, variance: str, clip_x0: bool,
                  prediction: str, frames: int = 0,
                  progress: Callable[[], object] | None = None) -> SampleResult:
    """Run the sampler named `sampler` (a `sample.sampler` value): the one entry point.

    `noise` is x_T [B, C, H, W] on the sampling device and `generators` one CPU generator
    per row (`sample_generators` / `initial_noise`). steps, eta, spacing, solver_spacing,
    variance and clip_x0 are the `sample.*` settings; those the sampler does not read are
    ignored (see `SAMPLERS[...].options`). `prediction` is the model's `diffusion.prediction`.
    `frames` > 0 asks for that many (t, x_t, x̂_0) trajectory frames; `progress` is
    called after every step.
    """
    spec = get_sampler(sampler)
    settings = {"steps": steps, "eta": eta, "spacing": spacing,
                "solver_spacing": solver_spacing, "variance": variance}
    return spec.fn(model, schedule, noise, generators,
                   **{arg: settings[key] for arg, key in spec.options.items()},
                   prediction=prediction, clip_x0=clip_x0, trajectory_frames=frames,
                   progress=progress)
