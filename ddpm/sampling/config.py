"""The `sample` section of params.yaml: the generate stage's sampler and the FID sweep's grid.

The one place its values are checked: the samplers trust what they are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from ddpm.config import bounded, listed
from ddpm.diffusion.config import refuse_steps_beyond_timesteps
from ddpm.diffusion.registry import SAMPLER_NAMES, takes_steps
from ddpm.diffusion.samplers import SPACINGS, VARIANCES


@dataclass(frozen=True)
class SampleConfig:
    n: int = bounded(200, ge=1)
    sampler: Literal[SAMPLER_NAMES] = "unipc"  # the sampler registry's names
    steps: int = bounded(10, ge=1)
    eta: float = bounded(0.0, ge=0.0)
    spacing: Literal[SPACINGS] = "trailing"
    solver_spacing: Literal[SPACINGS] = "trailing"
    variance: Literal[VARIANCES] = "small"
    clip_x0: bool = True
    batch_size: int = bounded(100, ge=1)
    shard_size: int = bounded(1000, ge=1)
    seed: int = 0
    use_ema: bool = True
    precision: Literal["auto", "32-true", "bf16-mixed"] = "auto"  # ddpm/io/precision.py
    compile: Literal["none", "default", "reduce-overhead"] = "none"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = bounded(1, ge=1)
    num_nodes: int = bounded(1, ge=1)
    sweep_samplers: list[Literal[SAMPLER_NAMES]] = listed(["ddim", "unipc"])
    sweep_steps: list[int] = bounded([5, 10, 20], ge=1)
    sweep_n: int = bounded(50, ge=2)

    def check_sections(self, loaded: Mapping[str, Any]) -> None:
        """Loaded with `diffusion` (the generate and fid_sweep stages, `load_all`):
        sampler step counts must not exceed T, refused before any sampling."""
        if "diffusion" in loaded:
            check_steps(self, loaded["diffusion"].timesteps)
            check_sweep_steps(self, loaded["diffusion"].timesteps)


def params_key(name: str) -> str:
    """A `sample` field as params.yaml spells it."""
    return f"sample.{name}"


def check_steps(sample: SampleConfig, timesteps: int,
                key: Callable[[str], str] = params_key) -> None:
    """`sample.steps` <= T, when the sampler takes steps (ancestral DDPM runs all T).

    `key` spells the setting in the message; `ddpm sample` checks against the trained
    model's T and names its option.
    """
    if takes_steps(sample.sampler):
        refuse_steps_beyond_timesteps(key("steps"), sample.steps, sample.steps, timesteps)


def check_sweep_steps(sample: SampleConfig, timesteps: int) -> None:
    """`sample.sweep_steps` <= T, when a swept sampler takes steps."""
    if any(takes_steps(name) for name in sample.sweep_samplers):
        refuse_steps_beyond_timesteps("sample.sweep_steps", sample.sweep_steps,
                                      max(sample.sweep_steps, default=0), timesteps)
