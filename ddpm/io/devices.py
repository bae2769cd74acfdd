"""Where an `accelerator: auto | cpu | gpu` setting runs, and whether it exists on this machine.

`torch_device` is the one rule for "auto" (every stage's accelerator key and `ddpm
sample --device`). Checked before any work starts, so `accelerator: gpu` on a machine without one
ends with one line naming the key, not a Lightning or Fabric traceback.
"""

from __future__ import annotations

from typing import Callable

import torch

from ddpm.errors import ConfigError


def check_accelerator(section: str, accelerator: str, devices: int,
                      key: Callable[[str], str] | None = None) -> None:
    """Raise ConfigError if `section.accelerator` = gpu but this machine lacks the GPUs.

    Messages name a setting as `key(name)`, by default `section.name`; the command
    line passes its own (`--device`).
    """
    key = key or (lambda name: f"{section}.{name}")
    if accelerator != "gpu":
        return
    gpus = torch.cuda.device_count()
    if gpus == 0 and torch.backends.mps.is_available():
        gpus = 1  # Apple silicon: Lightning's "gpu" means its one MPS device
    if gpus == 0:
        raise ConfigError(f"{key('accelerator')} = 'gpu': no GPU is visible on this machine "
                          "(torch.cuda.is_available() is False); use auto or cpu")
    if devices > gpus:
        raise ConfigError(f"{key('devices')} = {devices}: only {gpus} GPU(s) visible on this "
                          f"machine; lower it or use {key('accelerator')} = cpu")


def torch_device(section: str, accelerator: str,
                 key: Callable[[str], str] | None = None) -> str:
    """The torch device for `section.accelerator`: the GPU for gpu, and for auto when
    CUDA sees one; else the CPU. One line (ConfigError) if gpu is asked for and absent.

    The one "auto" rule: every stage and `ddpm sample` resolve their accelerator here.
    """
    check_accelerator(section, accelerator, 1, key)
    if accelerator == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if accelerator == "gpu" else "cpu"  # gpu passed the check: Apple's MPS
