"""Sampler registry: `sample.sampler` → the sampling function, as `ddpm/models/registry.py` does
for networks.

A dict of real functions (never names looked up as strings elsewhere). Every entry is a
pure function `fn(model, schedule, noise, generators, *, <its options>, prediction,
clip_x0, trajectory_frames, progress) -> SampleResult`, a stepper run by the one loop
(`ddpm.diffusion.loop`); `options` maps its keyword options to the `sample.*` settings
they come from, so one call site (`sample_images`) serves the generate stage, the FID
sweep and the training sample grids, and whether they include `steps` answers, here
alone, whether a sampler takes steps (`takes_steps`). A new sampler is
one function, one line here and its tests; `sample.sampler`'s allowed values
(ddpm/sampling/config.py) and `train.preview_sampler`'s (ddpm/training/config.py) come
from this dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ddpm.diffusion.forward import Model
from ddpm.diffusion.loop import SampleResult
from ddpm.diffusion.samplers import ddim_sample, ddpm_sample
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.diffusion.solvers import dpm_solver_pp_sample, unipc_sample
from ddpm.errors import ConfigError


@dataclass(frozen=True)
class Sampler:
    """A registered sampler.

    `fn`: the sampling function. `options`: its keyword argument → the `sample.*` setting
    that feeds it, besides prediction and clip_x0 (settings not named are ignored for it).
    """

    fn: Callable[..., SampleResult]
    options: dict[str, str] = field(default_factory=dict)


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ddpm_sample, {"variance": "variance"}),
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


def takes_steps(name: str) -> bool:
    """Whether sampler `name` reads `sample.steps`; one that does not (ancestral DDPM)
    runs all T. The one place that answers it: the params checks, `ddpm sample` and the
    FID sweep ask here."""
    return "steps" in get_sampler(name).options.values()


def sampler_nfe(name: str, steps: int, timesteps: int) -> int:
    """Network evaluations per sample of sampler `name` with `steps` steps out of T:
    one per step, or all T for a sampler that takes no steps."""
    return steps if takes_steps(name) else timesteps


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
