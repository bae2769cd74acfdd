"""Architecture registry: `model.arch` → a builder taking the `model` config.

A dict of real callables (never class names looked up as strings), so tools
and readers can follow every name to its code.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.config import ModelConfig
from ddpm.models.dit import DiT
from ddpm.models.unet import UNet
from ddpm.models.unetpp import UNetPP

ARCHITECTURES: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "unet": UNet.from_config,
    "unetpp": UNetPP.from_config,
    "dit": DiT.from_config,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The denoising network named by `config.arch`, built and layout-checked."""
    try:
        builder = ARCHITECTURES[config.arch]
    except KeyError:
        raise ConfigError(f"model.arch = {config.arch!r}: unknown architecture; allowed "
                          "values are " + ", ".join(repr(a) for a in ARCHITECTURES)) from None
    return builder(config)
