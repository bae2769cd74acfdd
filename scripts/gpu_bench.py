"""GPU benchmark: the research log's #5 UNet at 64×64 in bf16 on real faces (see gpu_check.sh).

Prints training images/s, DDIM-50 sampling images/s and peak GPU memory for the
plain model and for torch.compile + channels_last, in one run on one card.
Imports nothing outside torch, lightning, numpy, pandas, pyarrow, pillow, pyyaml,
tqdm, typer and safetensors, all present on the device image (no dvclive).

    python scripts/gpu_bench.py FACES_DIR --train-steps 300
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import typer

from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, TrainConfig
from ddpm.data.prepare import prepare_dataset
from ddpm.log_layouts import LOG9_LISTS, LOG_RES_BLOCKS, WIDE_CHANNELS
from ddpm.diffusion.samplers import ddim_sample, initial_noise, sample_generators
from ddpm.training.data import FaceDataModule
from ddpm.training.run import build_trainer
from ddpm.training.system import DiffusionSystem

# Research log #5: channels [64..1024]; attention/index lists as written in #9.
LOG5 = ModelConfig(img_size=64, channels=WIDE_CHANNELS, num_res_blocks=LOG_RES_BLOCKS,
                   **LOG9_LISTS)


CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # CPU only for a smoke run of this script


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")


def reset_peak() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


class StepTimer(L.Callback):
    """Wall time of optimizer steps after `warmup` (compilation and cuDNN autotuning)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync()
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.steps = trainer.global_step - self.warmup
            self.elapsed = time.perf_counter() - self.start


def train_rate(prepared: Path, compile_: bool, channels_last: bool, steps: int, batch: int):
    cfg = TrainConfig(max_steps=steps, batch_size=batch, precision="bf16-mixed",
                      accelerator="gpu" if CUDA else "cpu",
                      compile=compile_, channels_last=channels_last, num_workers=8,
                      val_every=10**6, sample_every=10**6, checkpoint_every=10**6)
    system = DiffusionSystem(LOG5, DiffusionConfig(), cfg)
    data = FaceDataModule(prepared, batch_size=batch, num_workers=8, val_images=64,
                          timesteps=1000, seed=0)
    timer = StepTimer(warmup=min(30, steps // 3))
    reset_peak()
    build_trainer(cfg, logger=False, callbacks=[timer], progress=False).fit(system, datamodule=data)
    rate = timer.steps * batch / timer.elapsed
    return system, rate, peak_gib()


def sample_rate(system: DiffusionSystem, n: int, channels_last: bool) -> tuple[float, float]:
    net = system.ema_net.to(DEVICE).eval()
    generators = sample_generators(0, range(n))
    noise = initial_noise(generators, (3, 64, 64), DEVICE)
    if channels_last:
        noise = noise.contiguous(memory_format=torch.channels_last)
    reset_peak()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        ddim_sample(net, system.schedule, noise[:8], generators[:8], steps=5)  # warm-up
        sync()
        start = time.perf_counter()
        ddim_sample(net, system.schedule, noise, generators, steps=50)
        sync()
    return n / (time.perf_counter() - start), peak_gib()


def main(faces: Path, train_steps: int = 300, batch: int = 128, sample_n: int = 512) -> None:
    print(f"device: {torch.cuda.get_device_name() if CUDA else 'CPU (smoke run)'}, "
          f"torch {torch.__version__}, "
          f"lightning {L.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        data = dataclasses.replace(DataConfig(), source=str(faces), crop="celeba", workers=8)
        manifest = prepare_dataset(data, 64, prepared, progress=False)
        print(f"data: {manifest['counts']} images from {faces} (celeba crop, 64 px)")
        print("| variant | train img/s (bf16, batch %d) | train peak GiB | DDIM-50 img/s | "
              "sample peak GiB |" % batch)
        print("| --- | --- | --- | --- | --- |")
        for compile_, channels_last in ((False, False), (True, True))[:2 if CUDA else 1]:
            system, rate, train_mem = train_rate(prepared, compile_, channels_last,
                                                 train_steps, batch)
            s_rate, s_mem = sample_rate(system, sample_n, channels_last)
            name = "compile + channels_last" if compile_ else "plain"
            print(f"| {name} | {rate:.0f} | {train_mem:.1f} | {s_rate:.0f} | {s_mem:.1f} |",
                  flush=True)


if __name__ == "__main__":
    typer.run(main)
