"""What the FID's Inception weights react to: real images, degraded on purpose, scored.

Scores N training images against the run's reference statistics as they are,
blurred, lowered in contrast and with added noise. With official weights blur
and noise both cost FID; the calibrated stand-in (`ddpm inception --standin`)
reacts to blur and contrast far more than to noise, which is why undertrained,
softer samples score worse than noisy ones with it.

    python scripts/standin_sensitivity.py data/prepared fid_ref/stats.npz --n 200
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from PIL import Image, ImageFilter

from ddpm.evaluation.reference import prepared_arrays, rebatch
from ddpm.metrics.fid import (feature_statistics, frechet_distance, inception_features,
                              load_inception, load_statistics)


def blurred(images: np.ndarray, radius: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius)))
                     for x in images])


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    mean = images.reshape(len(images), -1).mean(1)[:, None, None, None]
    return np.clip(mean + (images - mean) * factor, 0, 255).astype(np.uint8)


def noisy(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, std, images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


def main(prepared: Path, ref: Path, n: int = 200, weights: str = "") -> None:
    inception = load_inception(weights)
    mu_ref, sigma_ref = load_statistics(ref)
    real = np.concatenate(list(prepared_arrays(prepared, "train")))[:n]
    variants = {"as is": real, "blur σ 0.5 px": blurred(real, 0.5),
                "blur σ 1 px": blurred(real, 1.0), "contrast × 0.8": contrast(real, 0.8),
                "contrast × 0.9": contrast(real, 0.9), "noise σ 8/255": noisy(real, 8)}
    print(f"| {n} training images | pixel std | FID | ‖μ − μ_ref‖² |\n| --- | ---: | ---: | ---: |")
    for name, images in variants.items():
        features = inception_features(rebatch(iter([images]), 50), inception)
        mu, sigma = feature_statistics(features)
        print(f"| {name} | {images.std():.1f} | {frechet_distance(mu, sigma, mu_ref, sigma_ref):,.0f}"
              f" | {((mu - mu_ref) ** 2).sum():,.0f} |", flush=True)


if __name__ == "__main__":
    typer.run(main)
