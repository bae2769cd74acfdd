"""Benchmark: sample quality and training speed at equal steps, ddpm against a peer.

The peer is lucidrains' denoising-diffusion-pytorch, the most used small-scale
DDPM codebase (a benchmark-only extra: `pip install -e ".[bench]"`). Protocol,
the same for both sides:

- data: the same real faces, prepared once by ddpm's own prepare (celeba crop,
  `--img-size` px); a key-hash holdout split (`--holdout`) that neither side
  trains on is the FID reference;
- training: `--steps` optimizer steps of `--batch` images, horizontal flips,
  parameter counts within 10% (ddpm's default layout with channels [32, 64, 128], ~0.78M; the peer's Unet at
  dim 16, dim_mults (1, 2, 4), 0.72M);
- sampling: `--samples` images with DDIM, `--sampler-steps` steps, η = 0, from
  each side's EMA weights;
- FID: the same Inception weights (real, or `ddpm inception --standin`),
  pytorch-fid's network and Fréchet distance, same N.

Each side keeps its own recipe: ddpm trains with the project's params.yaml
defaults (only size, steps and batch set by the protocol); the peer with its
`Trainer` and `GaussianDiffusion` defaults (v-prediction, sigmoid schedule,
Adam lr 1e-4, EMA 0.995 every 10 steps). Training images/s is steps × batch over
the wall time of each side's training call (setup included for both), and
again from optimizer steps of the two networks timed in alternating windows, a
ratio that holds when other work shares the machine; a third window runs the
peer in ddpm's training formats (bf16 autocast, channels-last), to show how much
of the gap is the formats and how much the network.

    python scripts/bench_quality.py ../shared/data/faces-a --steps 800 --batch 32
"""

from __future__ import annotations

import contextlib
import tempfile
from itertools import islice
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import typer
from PIL import Image

from ddpm.data.config import DataConfig
from ddpm.data.prepare import prepare_dataset
from ddpm.evaluation.reference import prepared_arrays, rebatch
from ddpm.io.precision import resolve_train
from ddpm.metrics.fid import (feature_statistics, frechet_distance, inception_features,
                              load_inception)
from ddpm.reporting.config import Params, load_all
from ddpm.sampling.generate import generate, iter_shards
from ddpm.training.run import train

PEER_DIM, PEER_MULTS = 16, (1, 2, 4)


def fid(arrays, reference: tuple[np.ndarray, np.ndarray], inception) -> float:
    features = inception_features(arrays, inception)
    return frechet_distance(*feature_statistics(features), *reference)


def batches(images: np.ndarray, size: int = 50):
    return (images[i:i + size] for i in range(0, len(images), size))


def step_rates(params: Params, img_size: int, batch: int, windows: int = 5,
               steps: int = 5) -> dict[str, float]:
    """Median img/s of one optimizer step of each network, in alternating windows.

    Interleaving makes all sides see the same background load, so the ratios hold
    on a busy machine where the full runs' wall times do not. "ours" steps in
    the project's training formats (params.train precision and memory layout);
    "peer" in its own defaults (float32, contiguous); "peer, our formats" shows
    how much of the gap those formats alone would close for the peer.
    """
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    from ddpm.diffusion import NoiseSchedule, training_loss
    from ddpm.models.registry import build_model

    params = replace(params, train=resolve_train(params.train, "cpu")[0])
    bf16 = params.train.precision == "bf16-mixed"
    layout = torch.channels_last if params.train.channels_last else torch.contiguous_format
    ours = build_model(params.model).to(memory_format=layout)
    schedule = NoiseSchedule.from_name(params.diffusion.schedule, params.diffusion.timesteps)
    peer = GaussianDiffusion(Unet(dim=PEER_DIM, dim_mults=PEER_MULTS), image_size=img_size)
    peer_formatted = GaussianDiffusion(Unet(dim=PEER_DIM, dim_mults=PEER_MULTS),
                                       image_size=img_size).to(memory_format=layout)
    x = torch.rand(batch, 3, img_size, img_size)
    x_formatted = x.contiguous(memory_format=layout)

    def formatted(loss):  # autocast as Lightning's "bf16-mixed" does on the CPU
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return loss()
        return step

    sides = {
        "ours": (torch.optim.AdamW(ours.parameters()), formatted(lambda: training_loss(
            ours, schedule, x_formatted * 2 - 1, params.diffusion.prediction,
            loss_weighting=params.diffusion.loss_weighting))),
        "peer": (torch.optim.Adam(peer.parameters()), lambda: peer(x)),
        "peer, our formats": (torch.optim.Adam(peer_formatted.parameters()),
                              formatted(lambda: peer_formatted(x_formatted))),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for window in range(windows + 1):
        for name, (optimizer, loss) in sides.items():
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.zero_grad()
                loss().backward()
                optimizer.step()
            if window:  # the first window warms up allocators and caches
                rates[name].append(steps * batch / (time.perf_counter() - start))
    return {name: float(np.median(r)) for name, r in rates.items()}


def run_ddpm(params: Params, prepared: Path, work: Path) -> tuple[float, float, np.ndarray, int]:
    """Train and sample with the pipeline's own code; (train img/s, sample img/s, images, params)."""
    start = time.perf_counter()
    train(params, prepared, work / "models", work / "state", work / "live")
    train_rate = params.train.max_steps * params.train.batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    generate(work / "models", work / "samples", params.sample)
    sample_rate = params.sample.n / (time.perf_counter() - start)
    from ddpm.models.checkpoint import load_model
    net, _, _ = load_model(work / "models")
    n_params = sum(p.numel() for p in net.parameters())
    return train_rate, sample_rate, np.concatenate(list(iter_shards(work / "samples"))), n_params


def run_peer(prepared: Path, work: Path, img_size: int, steps: int, batch: int, n: int,
             sampler_steps: int) -> tuple[float, float, np.ndarray, int]:
    """The peer's own Trainer on the same training images written as PNGs."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Trainer, Unet

    folder = work / "peer_images"
    folder.mkdir()
    for i, image in enumerate(prepared_arrays(prepared, "train")):
        Image.fromarray(image[0]).save(folder / f"{i:06d}.png")
    torch.manual_seed(0)
    net = Unet(dim=PEER_DIM, dim_mults=PEER_MULTS)
    diffusion = GaussianDiffusion(net, image_size=img_size, timesteps=1000,
                                  sampling_timesteps=sampler_steps)
    trainer = Trainer(diffusion, str(folder), train_batch_size=batch, train_num_steps=steps,
                      save_and_sample_every=10 ** 9, calculate_fid=False,
                      results_folder=str(work / "peer_results"))
    start = time.perf_counter()
    trainer.train()
    train_rate = steps * batch / (time.perf_counter() - start)
    torch.manual_seed(0)
    start, images = time.perf_counter(), []
    with torch.no_grad():
        for i in range(0, n, 100):
            x = trainer.ema.ema_model.sample(batch_size=min(100, n - i))  # [b, 3, H, W] in [0, 1]
            images.append((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    sample_rate = n / (time.perf_counter() - start)
    n_params = sum(p.numel() for p in net.parameters())
    return train_rate, sample_rate, torch.cat(images).numpy(), n_params


def main(faces: Path = typer.Argument(..., help="folder of real face images (CelebA aligned)"),
         steps: int = 800, batch: int = 32, img_size: int = 32, samples: int = 1000,
         sampler_steps: int = 50, holdout: float = 0.2, params_file: Path = Path("params.yaml"),
         work_dir: Path | None = None) -> None:
    scratch = (contextlib.nullcontext(str(work_dir)) if work_dir
               else tempfile.TemporaryDirectory(prefix="bench-quality-"))
    with scratch as tmp:
        work = Path(tmp)
        prepared = work / "prepared"
        data = replace(DataConfig(), source=str(faces), crop="celeba", holdout_fraction=holdout)
        manifest = prepare_dataset(data, img_size, prepared)
        inception = load_inception()
        ref_features = inception_features(rebatch(prepared_arrays(prepared, "holdout"), 50),
                                          inception)
        reference = feature_statistics(ref_features)
        defaults = load_all(params_file)
        params = replace(
            # [32, 64, 128]: 0.78 M parameters, within 10% of the peer's 0.72 M (the
            # demo's default since 2026-12-06 is the smaller [24, 48, 96], 0.44 M).
            defaults, model=replace(defaults.model, img_size=img_size, channels=[32, 64, 128]),
            train=replace(defaults.train, max_steps=steps, batch_size=batch),
            sample=replace(defaults.sample, n=samples, sampler="ddim", steps=sampler_steps,
                           eta=0.0))
        rate = step_rates(params, img_size, batch)  # img/s per side, interleaved windows
        (work / "ddpm").mkdir()
        ours = run_ddpm(params, prepared, work / "ddpm")
        (work / "peer").mkdir()
        peer = run_peer(prepared, work / "peer", img_size, steps, batch, samples, sampler_steps)
        rows = []
        for name, (train_rate, sample_rate, images, n_params) in (
                ("ddpm (this project, defaults)", ours),
                ("denoising-diffusion-pytorch (defaults)", peer)):
            score = fid(batches(images), reference, inception)
            rows.append((name, n_params, train_rate, sample_rate, score))
        # Real training faces, as many as the samples: the floor a perfect model would reach.
        real = fid(rebatch(islice(prepared_arrays(prepared, "train"), samples), 50), reference,
                   inception)
    counts = manifest["counts"]
    print(f"\n{steps} steps x batch {batch}, {img_size} px, {counts['train']} training faces, "
          f"FID of {samples} DDIM-{sampler_steps} samples against {counts['holdout']} held-out "
          f"faces (as many real training faces against them: {real:.1f})\n")
    print("| model | params | train img/s | sample img/s | FID |\n| --- | --- | --- | --- | --- |")
    for name, n_params, train_rate, sample_rate, score in rows:
        print(f"| {name} | {n_params / 1e6:.2f}M | {train_rate:.1f} | {sample_rate:.1f} | "
              f"{score:.1f} |")
    print(f"\nddpm / peer: training speed {rows[0][2] / rows[1][2]:.2f}x over the full runs, "
          f"{rate['ours'] / rate['peer']:.2f}x in interleaved step windows "
          f"({rate['ours']:.1f} vs {rate['peer']:.1f} img/s; the peer in ddpm's formats "
          f"{resolve_train(params.train, 'cpu')[0].precision}, channels_last="
          f"{resolve_train(params.train, 'cpu')[0].channels_last}: "
          f"{rate['peer, our formats']:.1f} img/s, "
          f"{rate['ours'] / rate['peer, our formats']:.2f}x); "
          f"FID {rows[0][4]:.1f} vs {rows[1][4]:.1f}")

if __name__ == "__main__":
    typer.run(main)
