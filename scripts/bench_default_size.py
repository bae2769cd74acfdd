"""Benchmark: sample quality against training time, to size the default run.

Trains the default model (params.yaml, formats resolved for this machine) on
the demo data set for each `STEPSxBATCH` variant, samples `--n` images with each
`--samplers` setting (sampler:steps:spacing), and prints per variant: training
seconds, images/s, and the samples' high-frequency energy relative to the
training images' (mean absolute difference of horizontally adjacent pixels;
colour noise scores about 3x). A blur or a vague blob also scores near or below
1x, so each grid is written to `--out` to be looked at: the number alone does
not show faces.

    python scripts/bench_default_size.py 300x32 450x32 600x32 --out /tmp/sizing
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import typer

from ddpm.data.prepare import prepare_dataset
from ddpm.evaluation.reference import prepared_arrays
from ddpm.reporting.config import load_all
from ddpm.sampling.generate import generate, iter_shards
from ddpm.training.run import train


def hf_energy(images: np.ndarray) -> float:
    """Mean |x[:, :, j+1] - x[:, :, j]| of uint8 [N, H, W, 3] images, in levels."""
    x = images.astype(np.float32)
    return float(np.abs(x[:, :, 1:] - x[:, :, :-1]).mean())


def main(variants: list[str], out: Path = Path("/tmp/sizing"), n: int = 200,
         samplers: str = "unipc:10:logsnr,unipc:10:trailing",
         params_file: Path = Path("params.yaml")) -> None:
    base = load_all(params_file)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_dataset(base.data, base.model.img_size, tmp / "prepared", progress=False)
        train_images = np.concatenate(list(prepared_arrays(tmp / "prepared", "train")))
        reference = hf_energy(train_images)
        for variant in variants:
            steps, batch = (int(v) for v in variant.split("x"))
            params = dataclasses.replace(base, train=dataclasses.replace(
                base.train, max_steps=steps, batch_size=batch))
            run = tmp / variant
            start = time.perf_counter()
            train(params, tmp / "prepared", run / "models", run / "state", run / "live",
                  mlruns_dir=run / "mlruns", progress=False)
            seconds = time.perf_counter() - start
            ratios = []
            for spec in samplers.split(","):
                name, steps_, spacing = spec.split(":")
                sample = dataclasses.replace(base.sample, n=n, sampler=name, steps=int(steps_),
                                             spacing=spacing, solver_spacing=spacing)
                folder = run / spec.replace(":", "-")
                generate(run / "models", folder, sample, progress=False)
                samples = np.concatenate(list(iter_shards(folder)))
                (folder / "grid.png").replace(out / f"{variant}-{spec.replace(':', '-')}.png")
                ratios.append(hf_energy(samples) / reference)
            rows.append((variant, seconds, steps * batch / seconds, ratios))
            print(f"{variant}: {seconds:.0f} s, HF ratios {ratios}", flush=True)
    print(f"\ndemo data ({len(train_images)} training images, HF energy {reference:.2f} levels); "
          f"{n} samples per setting; HF energy of the samples ÷ the training images'")
    specs = samplers.split(",")
    print("| steps × batch | train s | img/s | " + " | ".join(specs) + " |")
    print("| --- | ---: | ---: |" + " ---: |" * len(specs))
    for variant, seconds, rate, ratios in rows:
        print(f"| {variant.replace('x', ' × ')} | {seconds:.0f} | {rate:.0f} | "
              + " | ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    typer.run(main)
