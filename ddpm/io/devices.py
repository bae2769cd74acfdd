"""Whether the accelerator that params ask for exists on this machine.

Checked before any work starts, so `accelerator: gpu` on a machine without one
ends with one line naming the key, not a Lightning or Fabric traceback.
"""

from __future__ import annotations

import torch

from ddpm.errors import ConfigError


def check_accelerator(section: str, accelerator: str, devices: int) -> None:
    """Raise ConfigError if `section.accelerator` = gpu but this machine lacks the GPUs."""
    if accelerator != "gpu":
        return
    gpus = torch.cuda.device_count()
    if gpus == 0 and torch.backends.mps.is_available():
        gpus = 1  # Apple silicon: Lightning's "gpu" means its one MPS device
    if gpus == 0:
        raise ConfigError(f"{section}.accelerator = 'gpu': no GPU is visible on this machine "
                          "(torch.cuda.is_available() is False); use auto or cpu")
    if devices > gpus:
        raise ConfigError(f"{section}.devices = {devices}: only {gpus} GPU(s) visible on this "
                          f"machine; lower it or use {section}.accelerator = cpu")


def torch_device(section: str, accelerator: str) -> str:
    """The torch device for `section.accelerator`: the GPU for gpu, and for auto when
    CUDA sees one; else the CPU. One line (ConfigError) if gpu is asked for and absent."""
    check_accelerator(section, accelerator, 1)
    if accelerator == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if accelerator == "gpu" else "cpu"  # gpu passed the check: Apple's MPS
