"""Trained-model files: EMA weights as safetensors + the config that built them, as JSON.

Loadable without unpickling training code: `load_model(dir)` rebuilds the
network from `config.json` through the model registry and loads the tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ddpm.config import build_section
from ddpm.diffusion.config import DiffusionConfig
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import DataError
from ddpm.io.atomic import write_atomically, write_json_atomically
from ddpm.models.config import ModelConfig
from ddpm.models.registry import build_model

WEIGHTS_FILES = {True: "ema.safetensors", False: "net.safetensors"}  # keyed by use_ema
CONFIG_FILE = "config.json"


def save_model(ema_net: torch.nn.Module, net: torch.nn.Module, out_dir: str | Path,
               config: dict) -> None:
    """Write both weight sets and `config` (must hold 'model' and 'diffusion' sections)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for use_ema, module in ((True, ema_net), (False, net)):
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        write_atomically(out_dir / WEIGHTS_FILES[use_ema],
                         lambda tmp, tensors=tensors: save_file(tensors, str(tmp)))
    write_json_atomically(out_dir / CONFIG_FILE, config, sort_keys=True)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu", *,
               use_ema: bool = True) -> tuple[torch.nn.Module, NoiseSchedule, dict]:
    """(network in eval mode, noise schedule, saved config) from a trained-model folder."""
    model_dir = Path(model_dir)
    weights = model_dir / WEIGHTS_FILES[use_ema]
    if not weights.is_file() or not (model_dir / CONFIG_FILE).is_file():
        raise DataError(f"{model_dir}: no trained model ({weights.name} + {CONFIG_FILE}); "
                        "run the train stage first (dvc repro train)")
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    model = build_section(ModelConfig, config["model"], "model")
    diffusion = build_section(DiffusionConfig, config["diffusion"], "diffusion")
    net = build_model(model)
    net.load_state_dict(load_file(str(weights)))
    schedule = NoiseSchedule.from_name(diffusion.schedule, diffusion.timesteps)
    return net.to(device).eval(), schedule, config
