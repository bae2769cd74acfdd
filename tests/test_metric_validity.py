"""The disturbances of scripts/bench_metric_validity.py (fast: no Inception run)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_metric_validity import pixelate, swirl

from ddpm.metrics.inception_standin import demo_drawings


def laplacian_energy(x: np.ndarray) -> float:
    a = x.astype(float)
    lap = (4 * a[:, 1:-1, 1:-1] - a[:, :-2, 1:-1] - a[:, 2:, 1:-1]
           - a[:, 1:-1, :-2] - a[:, 1:-1, 2:])
    return float((lap ** 2).mean())


def test_swirl_is_the_identity_at_strength_zero_and_leaves_rings_about_the_centre():
    faces = demo_drawings(4, size=32)
    assert np.array_equal(swirl(faces, 0.0), faces)
    # a radially symmetric image is its own swirl: the map only rotates about the centre
    yy, xx = np.mgrid[:32, :32] - 15.5
    rings = (127.5 + 100 * np.cos(np.hypot(xx, yy) / 2))[None, :, :, None].repeat(3, 3)
    rings = rings.round().astype(np.uint8)
    inside = np.hypot(xx, yy) <= 14  # corners rotate out of the square: edge pixels
    assert np.abs(swirl(rings, 4.0).astype(int) - rings)[0][inside].max() <= 3


def test_a_mild_swirl_keeps_the_detail_a_blur_would_remove():
    """Bilinear resampling at 32 px kept about half the Laplacian energy at strength 1,
    so the row scored a blur; the bench's bicubic swirl keeps most of it."""
    faces = demo_drawings(16, size=32)
    kept = laplacian_energy(swirl(faces, 1.0)) / laplacian_energy(faces)
    assert kept > 0.75
    assert np.abs(swirl(faces, 1.0).astype(int) - faces).mean() > 2  # it did move pixels


def test_pixelation_is_flat_in_each_block_and_keeps_block_means():
    faces = demo_drawings(2, size=32)
    out = pixelate(faces, 4).astype(float)
    blocks = out.reshape(2, 8, 4, 8, 4, 3)
    assert np.all(blocks == blocks[:, :, :1, :, :1])
    means = faces.astype(float).reshape(2, 8, 4, 8, 4, 3).mean(axis=(2, 4))
    assert np.abs(blocks[:, :, 0, :, 0] - means).max() <= 0.5
