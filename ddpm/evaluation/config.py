"""The `fid` section (stages fid_ref, fid, fid_sweep) and the `analysis` section
(stage timestep_loss) of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ddpm.config import bounded
from ddpm.errors import ConfigError


@dataclass(frozen=True)
class FidConfig:
    ref_split: Literal["train", "holdout"] = "train"
    batch_size: int = bounded(50, ge=1)
    weights: str = ""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"  # where Inception runs
    splits: int = bounded(4, ge=2)             # FID of this many disjoint sample blocks: ± sd
    kid_subsets: int = bounded(100, ge=1)      # KID: random subsets averaged (± std over them)
    kid_subset_size: int = bounded(100, ge=2)  # KID: images per subset, capped at each side's N
    bootstrap: int = bounded(50, ge=0)         # bootstrap draws for the FID/KID standard errors; 0 = off (never 1)
    max_real: int = bounded(300, ge=2)         # real images per split Inception sees (FID ref, KID, P/R, memorisation)
    memorisation_train: int = bounded(300, ge=0)  # training images (+ their flips) memorisation searches; 0 = all

    def __post_init__(self) -> None:
        if self.bootstrap == 1:
            raise ConfigError("fid.bootstrap = 1: one draw has no spread; use 0 (off) or >= 2 "
                              "(e.g. 50)")


@dataclass(frozen=True)
class AnalysisConfig:
    t_points: int = bounded(100, ge=1)
    n_images: int = bounded(32, ge=1)
    seed: int = 0
    nll_images: int = bounded(32, ge=2)       # bits/dim bound: holdout images (>= 2: an se)
    nll_exact_below: int = bounded(50, ge=1)  # timesteps 0..this−1 exact (0: the decoder)
    nll_strata: int = bounded(50, ge=1)       # one timestep drawn per stratum above them
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"  # ddpm/io/devices.py's rule
