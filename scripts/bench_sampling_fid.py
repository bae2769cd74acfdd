"""Benchmark: sampling images/s (DDIM-50, DDPM-1000) and FID feature images/s on this machine.

Our FID feature extraction (uint8 arrays straight into pytorch-fid's network)
runs next to `python -m pytorch_fid` on the same images written as PNG, in the
same invocation, so the ratio is meaningful on a noisy machine. Needs Inception
weights in torch hub's cache (real, or `ddpm inception --standin`).

    python scripts/bench_sampling_fid.py --n-fid 200
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import typer
from PIL import Image

from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.metrics.fid import (feature_statistics, frechet_distance, inception_features,
                              load_inception)
from ddpm.models.config import ModelConfig
from ddpm.models.registry import build_model
from ddpm.sampling.config import SampleConfig
from ddpm.sampling.generate import run_sampler


def sampling_rate(net, schedule, sample: SampleConfig, n: int, img_size: int) -> float:
    start = time.perf_counter()
    run_sampler(net, schedule, sample, "eps", range(n), img_size, "cpu")
    return n / (time.perf_counter() - start)


def main(n_ddim: int = 64, n_ddpm: int = 8, n_fid: int = 200, img_size: int = 32) -> None:
    net = build_model(replace(ModelConfig(), img_size=img_size)).eval()
    schedule = NoiseSchedule.from_name("linear", 1000)
    ddim = SampleConfig(sampler="ddim", steps=50, batch_size=n_ddim)
    ddpm = SampleConfig(sampler="ddpm", batch_size=n_ddpm)
    print(f"default UNet at {img_size} px, torch threads {torch.get_num_threads()}")
    print(f"DDIM-50:   {sampling_rate(net, schedule, ddim, n_ddim, img_size):8.2f} img/s "
          f"(batch {n_ddim})")
    print(f"DDPM-1000: {sampling_rate(net, schedule, ddpm, n_ddpm, img_size):8.2f} img/s "
          f"(batch {n_ddpm})")

    rng = np.random.default_rng(0)
    sets = [rng.integers(0, 256, (n_fid, img_size, img_size, 3), dtype=np.uint8)
            for _ in range(2)]
    model = load_inception()
    start = time.perf_counter()
    stats = [feature_statistics(inception_features(np.array_split(s, max(1, n_fid // 50)),
                                                   model)) for s in sets]
    ours_fid = frechet_distance(*stats[0], *stats[1])
    ours_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for k, images in enumerate(sets):
            folder = Path(tmp) / f"set{k}"
            folder.mkdir()
            for i, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{i:05d}.png")
            dirs.append(str(folder))
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pytorch_fid", *dirs, "--device", "cpu",
                              "--batch-size", "50", "--num-workers", "0"],
                             capture_output=True, text=True, check=True).stdout
        theirs_s = time.perf_counter() - start
    theirs_fid = float(out.split("FID:")[1])
    print(f"FID of 2 x {n_fid} images: ours {2 * n_fid / ours_s:6.2f} img/s (incl. the "
          f"Frechet distance), python -m pytorch_fid {2 * n_fid / theirs_s:6.2f} img/s "
          f"(incl. start-up and PNG decoding); ratio {theirs_s / ours_s:.2f}x; "
          f"FID {ours_fid:.4f} vs {theirs_fid:.4f}")


if __name__ == "__main__":
    typer.run(main)
