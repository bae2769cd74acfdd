"""Latent space → images: the autoencoder and scale a latent-space model was trained with.

The train stage copies the autoencoder into the trained-model folder (models/autoencoder/)
and records the scale in models/config.json's `latent` section, so everything that
samples (generate, fid_sweep, the trajectory) needs the models folder alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ddpm.autoencoder.files import load_autoencoder
from ddpm.errors import DataError

AUTOENCODER_DIR = "autoencoder"  # inside the trained-model folder


class LatentDecoder:
    """Scaled latents [B, C, h, w] → images [B, 3, h·f, w·f] in about [-1, 1]."""

    def __init__(self, codec, scale: float):
        self.codec, self.scale, self.factor = codec, scale, int(codec.factor)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        device = next(self.codec.parameters()).device
        return self.codec.decode(z.float().to(device) / self.scale)


def copy_autoencoder(autoencoder_dir: str | Path, model_dir: str | Path) -> None:
    """Put the autoencoder beside the trained weights (replacing an older copy)."""
    target = Path(model_dir) / AUTOENCODER_DIR
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # What loading needs; not the quality files (reconstructions, grid).
    shutil.copytree(autoencoder_dir, tmp, ignore=shutil.ignore_patterns("*.npy", "*.png"))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def load_decoder(model_dir: str | Path, config: dict,
                 device: str | torch.device = "cpu") -> LatentDecoder | None:
    """The decoder of a latent-space model (None for a pixel-space one)."""
    if config["model"].get("space", "pixel") != "latent":
        return None
    folder = Path(model_dir) / AUTOENCODER_DIR
    if "latent" not in config or not folder.is_dir():
        raise DataError(f"{model_dir}: a latent-space model without its autoencoder "
                        f"({AUTOENCODER_DIR}/) or scale; re-run train (dvc repro train)")
    return LatentDecoder(load_autoencoder(folder, device), config["latent"]["scale"])
