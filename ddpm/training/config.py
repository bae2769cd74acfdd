"""The `train` section of params.yaml: optimisation, hardware, logging and the preview grids.

The preview grids have their own keys (train.preview_sampler, train.preview_steps), so
training reads no `sample.*` key: a sampler default or value changes the generate
stage, never the trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from ddpm.config import bounded, listed
from ddpm.diffusion.config import refuse_steps_beyond_timesteps
from ddpm.diffusion.registry import SAMPLER_NAMES, takes_steps
from ddpm.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = bounded(600, ge=1)
    batch_size: int = bounded(32, ge=1)
    accumulate_grad_batches: int = bounded(1, ge=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"  # ddpm/io/precision.py
    lr: float = bounded(1e-3, gt=0.0)
    warmup_steps: int = bounded(100, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = bounded(0.0, ge=0.0)
    grad_clip: float = bounded(1.0, ge=0.0)
    ema_decay: float = bounded(0.999, ge=0.0, lt=1.0)
    seed: int = 0
    hflip: bool = True
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = bounded(1, ge=1)
    num_nodes: int = bounded(1, ge=1)
    strategy: Literal["auto", "ddp"] = "auto"
    compile: bool = False
    channels_last: Literal["auto", True, False] = "auto"  # ddpm/io/precision.py
    num_workers: int = bounded(0, ge=0)
    val_every: int = bounded(200, ge=1)
    val_images: int = bounded(64, ge=1)
    sample_every: int = bounded(200, ge=1)
    preview_sampler: Literal[SAMPLER_NAMES] = "unipc"  # the sampler registry's names
    preview_steps: int = bounded(10, ge=1)
    checkpoint_every: int = bounded(200, ge=1)
    loggers: list[Literal["dvclive", "mlflow"]] = listed(["dvclive"])

    def __post_init__(self) -> None:
        if "dvclive" not in self.loggers:
            raise ConfigError(f"train.loggers = {self.loggers!r}: must include dvclive (the "
                              "pipeline's metrics and report are read from its files); add "
                              "mlflow beside it, e.g. [dvclive, mlflow]")

    def check_sections(self, loaded: Mapping[str, Any]) -> None:
        """Loaded with `diffusion`: the preview's steps must not exceed T (when its sampler
        takes steps; ddpm runs all T)."""
        if "diffusion" in loaded and takes_steps(self.preview_sampler):
            refuse_steps_beyond_timesteps("train.preview_steps", self.preview_steps,
                                          self.preview_steps, loaded["diffusion"].timesteps)
