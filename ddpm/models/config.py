"""The `model` section of params.yaml: the denoising network's architecture.

Importing it builds no network: ddpm/models/__init__.py re-exports nothing, so the
prepare stage (which reads model.img_size) does not import the networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ddpm.config import bounded, listed
from ddpm.errors import ConfigError

IMAGE_CHANNELS = 3  # RGB


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["unet", "unetpp", "dit"] = "unet"
    img_size: int = bounded(32, ge=8)
    channels: list[int] = bounded([24, 48, 96], ge=1)
    down_attn: list[bool] = listed([False, False])
    down_channel_indices: list[list[int]] = listed([[0, 0], [0, 1]])
    mid_attn: list[bool] = listed([True, False])
    mid_channel_indices: list[list[int]] = listed([[1, 2], [2, 1]])
    up_attn: list[bool] = listed([True])
    up_channel_indices: list[list[int]] = listed([[1, 0]])
    num_res_blocks: int = bounded(1, ge=1)
    num_heads: int = bounded(4, ge=1)
    norm_groups: int = bounded(8, ge=1)
    dropout: float = bounded(0.0, ge=0.0, lt=1.0)
    attn_dropout: float = bounded(0.0, ge=0.0, lt=1.0)
    dropout_kind: Literal["element", "channel"] = "element"
    time_injection: Literal["add", "scale_shift"] = "scale_shift"
    zero_init: bool = True
    patch_size: int = bounded(4, ge=1)
    dit_size: Literal["custom", "S", "B", "L"] = "custom"
    depth: int = bounded(6, ge=1)
    hidden_size: int = bounded(192, ge=8)
    space: Literal["pixel", "latent"] = "pixel"
    latent_factor: int = bounded(8, ge=1)
    latent_channels: int = bounded(4, ge=1)

    def __post_init__(self) -> None:
        if self.space != "latent":
            return
        f = self.latent_factor
        if f & (f - 1):
            raise ConfigError(f"model.latent_factor = {f}: must be a power of two (each "
                              "autoencoder level halves the image): use 4 or 8")
        if self.img_size % f:
            raise ConfigError(f"model.img_size = {self.img_size} is not divisible by "
                              f"model.latent_factor = {f}: use a multiple of {f}, such as "
                              f"{max(f, self.img_size // f * f)}")

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of what the network denoises: RGB images in pixel
        space, the autoencoder's latents (img_size / latent_factor per side) in latent space."""
        if self.space == "latent":
            side = self.img_size // self.latent_factor
            return (self.latent_channels, side, side)
        return (IMAGE_CHANNELS, self.img_size, self.img_size)

