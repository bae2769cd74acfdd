"""The `autoencoder` section of params.yaml: train our own small autoencoder, or load one.

The factor f (pixels per latent, per side) and the latent channel count are not here:
they belong to the model (they fix the diffusion model's input) and are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ddpm.config import bounded
from ddpm.errors import ConfigError


@dataclass(frozen=True)
class AutoencoderConfig:
    source: Literal["train", "pretrained"] = "train"
    # source = pretrained: a folder written by diffusers' save_pretrained, or a hub id.
    pretrained: str = ""
    # Width at each resolution level; level i uses channels[min(i, len - 1)], and there
    # are log2(factor) + 1 levels.
    channels: list[int] = bounded([32, 64, 64], ge=1)
    num_res_blocks: int = bounded(1, ge=1)
    norm_groups: int = bounded(8, ge=1)
    kl_weight: float = bounded(1e-6, ge=0.0)
    # 400 steps reach only the bicubic baseline's PSNR on 32 px demo faces at f = 4 (21.8
    # against 21.7 dB); 800 beat it by 2.1-2.4 dB (tests/test_autoencoder.py).
    max_steps: int = bounded(800, ge=1)
    batch_size: int = bounded(8, ge=1)
    lr: float = bounded(1e-3, gt=0.0)
    warmup_steps: int = bounded(20, ge=0)
    # Train on random crop × crop windows (0 = whole images). The network is convolutional:
    # it learns from crops and encodes whole images (LDM trains on 256 px crops). At 256 px
    # a crop of 64 makes a step 16× cheaper. A multiple of the factor.
    crop: int = bounded(64, ge=0)
    seed: int = 0
    checkpoint_every: int = bounded(100, ge=1)
    # Holdout images for PSNR, the bicubic baseline and the reconstruction grid; at
    # least 2, so that the PSNR has a standard error.
    eval_images: int = bounded(64, ge=2)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"

    def __post_init__(self) -> None:
        if self.source == "pretrained" and not self.pretrained:
            raise ConfigError("autoencoder.pretrained = '': source = pretrained needs a folder "
                              "written by diffusers' save_pretrained (or a hub id); set "
                              "autoencoder.pretrained or use autoencoder.source = train")
        if not self.channels:
            raise ConfigError("autoencoder.channels = []: must list at least one width, "
                              "e.g. [32, 64, 64]")
        for i, width in enumerate(self.channels):
            if width % self.norm_groups:
                raise ConfigError(f"autoencoder.channels[{i}] = {width}: must be a multiple of "
                                  f"autoencoder.norm_groups = {self.norm_groups}; change one "
                                  "of them")
