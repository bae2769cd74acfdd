"""The `sample` section of params.yaml: the generate stage's sampler and the FID sweep's grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from ddpm.config import bounded, listed
from ddpm.diffusion.config import refuse_steps_beyond_timesteps
from ddpm.diffusion.registry import SAMPLER_NAMES
from ddpm.diffusion.samplers import SPACINGS


@dataclass(frozen=True)
class SampleConfig:
    n: int = bounded(200, ge=1)
    sampler: Literal[SAMPLER_NAMES] = "unipc"  # the sampler registry's names
    steps: int = bounded(10, ge=1)
    eta: float = bounded(0.0, ge=0.0)
    spacing: Literal[SPACINGS] = "trailing"
    solver_spacing: Literal[SPACINGS] = "trailing"
    variance: Literal["small", "large"] = "small"
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
        """Loaded with `diffusion` (the generate and fid_sweep stages, `load_all`)."""
        if "diffusion" in loaded:
            check_steps_within_timesteps(self, loaded["diffusion"].timesteps)


def check_steps_within_timesteps(sample: SampleConfig, timesteps: int) -> None:
    """Sampler step counts must not exceed T: refused when params load, before any sampling."""
    checks = [("sample.sweep_steps", sample.sweep_steps, max(sample.sweep_steps, default=0))]
    if sample.sampler != "ddpm":  # ancestral DDPM runs all T steps and ignores sample.steps
        checks.insert(0, ("sample.steps", sample.steps, sample.steps))
    for key, value, steps in checks:
        refuse_steps_beyond_timesteps(key, value, steps, timesteps)
