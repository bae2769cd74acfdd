"""The `data` section of params.yaml: what the prepare stage reads, crops and splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ddpm.config import bounded


@dataclass(frozen=True)
class DataConfig:
    source: str = "demo"
    crop: Literal["celeba", "center", "none"] = "center"
    demo_size: int = bounded(1000, ge=1)
    seed: int = 0
    holdout_fraction: float = bounded(0.1, gt=0.0, lt=1.0)
    min_size: int = bounded(16, ge=1)
    shard_size: int = bounded(4096, ge=1)
    workers: int = bounded(0, ge=0)
    image_column: str = ""
    identity_file: str = ""
    partition_file: str = ""
