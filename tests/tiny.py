"""Tiny configurations shared by the tests: a UNet and data set that train in seconds on a CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from ddpm.data.config import DataConfig
from ddpm.data.prepare import prepare_dataset
from ddpm.errors import ConfigError
from ddpm.reporting.config import params_from_dict

IMG = 16
MODEL = {"img_size": IMG, "channels": [16, 32], "down_attn": [False, True],
         "down_channel_indices": [[0, 0], [0, 1]], "mid_attn": [False],
         "mid_channel_indices": [[1, 1]], "up_attn": [False], "up_channel_indices": [[1, 0]],
         "num_res_blocks": 1, "num_heads": 2, "norm_groups": 4,
         # The shipped zero_init makes an untrained UNet output exactly 0 for every
         # input: a test network must compute something.
         "zero_init": False}
TRAIN = {"max_steps": 20, "batch_size": 8, "num_workers": 0, "val_every": 10, "val_images": 8,
         "sample_every": 10, "checkpoint_every": 10, "warmup_steps": 1, "accelerator": "cpu",
         # float32, contiguous: the tests' tolerances and byte-equality checks were set
         # for float32; bf16 + channels-last (the demo's defaults, chosen for speed on
         # this CPU) train in the GPU check's CPU smoke run (tests/test_gpu_check.py).
         "precision": "32-true", "channels_last": False}


def raw_params(data=None, model=None, train=None, **sections) -> dict:
    """A params.yaml mapping: the tiny defaults, updated section by section."""
    raw = {"data": {"demo_size": 64, **(data or {})}, "model": {**MODEL, **(model or {})},
           "train": {**TRAIN, **(train or {})}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def params(**kwargs):
    return params_from_dict(raw_params(**kwargs))


def write_params(path: Path, **kwargs) -> Path:
    path.write_text(yaml.safe_dump(raw_params(**kwargs), sort_keys=False))
    return path


def untrained_model(out: Path, diffusion: dict | None = None, **model) -> Path:
    """A tiny UNet (seed 0, `model` overrides) saved in `out` as the train stage saves it,
    with the default diffusion section updated by `diffusion`."""
    from ddpm.models.checkpoint import save_model
    from ddpm.models.registry import build_model

    config = params(model=model, diffusion=diffusion or {})
    torch.manual_seed(0)
    net = build_model(config.model)
    sections = {"model": vars(config.model), "diffusion": vars(config.diffusion)}
    save_model(net, net, out, json.loads(json.dumps(sections)))
    return out


def prepared(out: Path, n: int = 64) -> Path:
    """A prepared tiny demo data set (n images at IMG px)."""
    prepare_dataset(replace(DataConfig(), demo_size=n, workers=1), IMG, out, progress=False)
    return out


def overfit_losses(model: torch.nn.Module, lr: float, max_steps: int = 300) -> list[float]:
    """Adam on one fixed batch (x_t, t, random target) until the loss falls 10× or steps run out."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 3, IMG, IMG, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    target = torch.randn(4, 3, IMG, IMG, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    for _ in range(max_steps):
        loss = torch.nn.functional.mse_loss(model(x_t, t), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < losses[0] / 10:
            break
    return losses


def run_stage(stage: str, *args: str, cwd: Path | None = None):
    """Run `python -m stages.STAGE ARGS` in this process through typer's CliRunner, as
    `typer.run` would: click's Result with exit_code, stdout and stderr kept apart.

    For tests of what a stage prints and exits with; a subprocess adds ~6 s of imports
    and is only the point where the process itself is (signals, DDP, a pipe's buffering).
    """
    import importlib
    import os

    import typer
    from typer.testing import CliRunner

    app = typer.Typer(add_completion=False)
    app.command()(importlib.import_module(f"stages.{stage}").main)
    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(here)


# Layout mistakes the UNet and UNet++ refuse alike (their shared check_layout), on log #9's
# layout at 256 px: (overrides, the key the one-line error must name).
BAD_LAYOUTS_OF_BOTH_UNETS = [
    (dict(down_attn=[], down_channel_indices=[]), "model.down_attn"),
    (dict(down_channel_indices=[[0, 0], [0, 1], [1, 2]]), "model.down_channel_indices"),
    (dict(mid_attn=[True]), "model.mid_channel_indices"),
    (dict(channels=[64, 0, 256, 512, 1024]), "model.channels[1]"),
    (dict(mid_channel_indices=[[2, 4], [4, 4], [4, 3]]), "model.mid_channel_indices[0]"),
    (dict(img_size=100), "model.img_size"),
    (dict(channels=[64, 128, 250, 512, 1024]), "model.norm_groups"),
    (dict(num_heads=3), "model.num_heads"),
]


def assert_one_line_config_error(build: Callable[[], object], key: str) -> None:
    """`build()` raises a ConfigError on one line naming `key`: what is wrong, then the fix."""
    with pytest.raises(ConfigError) as err:
        build()
    message = str(err.value)
    assert key in message
    assert "\n" not in message and ": " in message


def attention_sites(model: torch.nn.Module, size: int) -> list[tuple[str, int]]:
    """(top-level module, resolution) of every attention block a forward pass at size² runs."""
    from ddpm.models.layers import AttentionBlock

    seen = []
    for name, module in model.named_modules():
        if isinstance(module, AttentionBlock):
            module.register_forward_hook(
                lambda m, args, out, name=name: seen.append((name.split(".")[0], out.shape[-1])))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size), torch.zeros(1, dtype=torch.int64))
    return seen


def kill_after_checkpoint(proc: subprocess.Popen, ckpt: Path, min_step: int, *,
                          kill: Callable[[subprocess.Popen], None] | None = None,
                          deadline_s: float = 900) -> int:
    """SIGKILL `proc` (or call `kill` on it: a whole process group, say) once its checkpoint
    has reached `min_step`; the step of the checkpoint it left."""
    from ddpm.training.run import read_checkpoint
    kill = kill or (lambda p: p.send_signal(signal.SIGKILL))
    deadline = time.time() + deadline_s  # generous: a shared, busy CPU can be 20x slower
    while time.time() < deadline and proc.poll() is None:
        checkpoint, _ = read_checkpoint(ckpt) if ckpt.exists() else (None, "")
        if checkpoint and checkpoint["global_step"] >= min_step:
            kill(proc)
            proc.wait()
            # Re-read: training may have saved a later step while the check read this one.
            return read_checkpoint(ckpt)[0]["global_step"]
        time.sleep(0.1)
    kill(proc)
    raise AssertionError("training finished or stalled before it could be killed")
