"""Multi-scale sliced Wasserstein distance (ddpm/metrics/swd.py).

References: Karras et al.'s numpy/scipy pyramid (`metrics/sliced_wasserstein.py` of
progressive_growing_of_gans, transcribed below), the closed form of W₁ between 1-D
Gaussians, and the published behaviour (grows with noise and blur). Images are the
built-in demo faces at 32 px, no network.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import convolve, gaussian_filter

from ddpm.data.demo import draw_face
from ddpm.errors import DdpmError
from ddpm.metrics.swd import (descriptors, laplacian_pyramid, pyr_down, pyr_up,
                              pyramid_sides, sliced_wasserstein, sliced_wasserstein_distance)

# Karras et al.'s filter and pyramid steps, as in their sliced_wasserstein.py
KARRAS_FILTER = np.float64([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6],
                            [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256.0


def karras_pyr_down(minibatch):
    return convolve(minibatch, KARRAS_FILTER[np.newaxis, np.newaxis, :, :],
                    mode="mirror")[:, :, ::2, ::2]


def karras_pyr_up(minibatch):
    s = minibatch.shape
    res = np.zeros((s[0], s[1], s[2] * 2, s[3] * 2), minibatch.dtype)
    res[:, :, ::2, ::2] = minibatch
    return convolve(res, KARRAS_FILTER[np.newaxis, np.newaxis, :, :] * 4.0, mode="mirror")


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.stack([np.asarray(draw_face(0, i).resize((32, 32), Image.BICUBIC))
                     for i in range(200)])


def test_pyramid_matches_karras_and_sums_back_to_the_image():
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, 32, 32))
    down = pyr_down(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(down, karras_pyr_down(x), atol=1e-9)
    np.testing.assert_allclose(pyr_up(torch.as_tensor(down)).numpy(), karras_pyr_up(down),
                               atol=1e-9)
    bands = laplacian_pyramid(torch.as_tensor(x), 3)
    assert [b.shape[-1] for b in bands] == [32, 16, 8]
    collapsed = bands[-1]
    for band in reversed(bands[:-1]):
        collapsed = band + pyr_up(collapsed)
    np.testing.assert_allclose(collapsed.numpy(), x, atol=1e-9)
    assert pyramid_sides(32) == [32, 16] and pyramid_sides(64) == [64, 32, 16]
    assert pyramid_sides(16) == [16] and pyramid_sides(12) == [12]


def test_descriptors_are_normalised_per_channel_over_the_set():
    # Karras et al. normalise each level's descriptors per colour channel over the set:
    # every channel has mean 0 and sd 1, so a per-channel gain and offset change nothing.
    rng = np.random.default_rng(2)
    level = torch.as_tensor(rng.normal(size=(10, 3, 16, 16)))
    index, ys, xs = np.arange(40) % 10, *rng.integers(0, 16 - 7 + 1, (2, 40))
    desc = descriptors(level, index, ys, xs).reshape(40, 3, 49)
    np.testing.assert_allclose(desc.mean(dim=(0, 2)).numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(desc.std(dim=(0, 2), correction=0).numpy(), 1, atol=1e-12)
    gain = torch.tensor([2.0, 0.5, 3.0])[None, :, None, None]
    shifted = descriptors(level * gain + 7.0, index, ys, xs)
    np.testing.assert_allclose(shifted.numpy(), desc.reshape(40, -1).numpy(), atol=1e-9)
    # each row is the 7×7×3 neighbourhood at its position, in (channel, row, column) order
    raw = level[index[5], :, ys[5]:ys[5] + 7, xs[5]:xs[5] + 7]
    assert torch.corrcoef(torch.stack([raw.flatten(), desc[5].flatten()]))[0, 1] > 0.99


def test_sliced_w1_of_one_dimensional_gaussians_is_the_closed_form():
    # In 1-D every direction is ±1, so sliced W₁ is W₁; for N(0, 1) and N(μ, s²) the
    # quantile coupling gives W₁ = E|μ + (s − 1) Z|, = √(2/π) for μ = 0, s = 2 (0.798).
    # Sampling error with 200,000 points: about 0.002.
    rng = np.random.default_rng(0)
    a = torch.as_tensor(rng.normal(size=(200_000, 1)))
    b = torch.as_tensor(rng.normal(0.0, 2.0, size=(200_000, 1)))
    assert sliced_wasserstein(a, b, rng, repeats=1, dirs=4) == pytest.approx(
        math.sqrt(2 / math.pi), abs=0.01)
    # In d = 3, N(0, I) against N(m, I): W₁ along θ is |θᵀm|, and over random unit θ
    # E|θ₁| = Γ(3/2)/(√π Γ(2)) = 1/2, so the sliced distance is |m|/2 (512 directions:
    # ±2.5% from the directions' draw).
    a3 = torch.as_tensor(rng.normal(size=(20_000, 3)))
    b3 = torch.as_tensor(rng.normal(size=(20_000, 3)) + [2.0, 0.0, 0.0])
    assert sliced_wasserstein(a3, b3, rng) == pytest.approx(1.0, rel=0.07)


def test_swd_is_zero_for_a_copy_and_at_its_floor_for_a_fresh_patch_draw(faces):
    a, b = faces[:100], faces[100:200]
    same = sliced_wasserstein_distance(a, a.copy(), seed=3)
    assert same["mean_x1e3"] == 0.0 and set(same["levels_x1e3"]) == {"32", "16"}
    # The same images with the neighbourhoods drawn twice (different positions): only
    # the draw differs, and the distance is the metric's sampling floor, about that of
    # two disjoint sets of faces (measured 17.7 and 22.9 ×10³ at 32 px), far below a
    # 1 px blur (measured 75). SWD too is biased up at small N: 13.5 for 200 vs 300 faces.
    rng = np.random.default_rng(1)
    band = laplacian_pyramid(torch.as_tensor(a).permute(0, 3, 1, 2).float(), 2)[0]
    count, index = 128 * len(a), np.arange(128 * len(a)) % len(a)
    draw = lambda: descriptors(band, index, *rng.integers(0, 32 - 7 + 1, (2, count)))  # noqa: E731
    redrawn = 1e3 * sliced_wasserstein(draw(), draw(), rng)
    other = sliced_wasserstein_distance(a, b)["levels_x1e3"]["32"]
    blurred = sliced_wasserstein_distance(
        a, gaussian_filter(b.astype(float), (0, 1, 1, 0)).round().astype(np.uint8))
    assert 0 < redrawn < 1.5 * other < 0.5 * blurred["levels_x1e3"]["32"], (redrawn, other,
                                                                         blurred)


def test_swd_grows_with_noise_and_blur(faces):
    # Heusel et al. (Fig. 3) and Karras et al. use such disturbances: each level of
    # Gaussian noise (σ in grey levels) and of blur (σ in px) scores worse than the last,
    # starting from the floor of two disjoint sets of clean faces. Measured (mean ×10³):
    # floor 39.8; noise 44, 57, 82, 104; blur 45, 67, 99.
    a, b = faces[:100], faces[100:200]
    rng = np.random.default_rng(0)
    floor = sliced_wasserstein_distance(a, b)["mean_x1e3"]
    noisy = [sliced_wasserstein_distance(
        a, np.clip(b + rng.normal(0, s, b.shape), 0, 255).round().astype(np.uint8))["mean_x1e3"]
        for s in (4, 8, 16, 32)]
    blurred = [sliced_wasserstein_distance(
        a, gaussian_filter(b.astype(float), (0, s, s, 0)).round().astype(np.uint8))["mean_x1e3"]
        for s in (0.5, 1.0, 2.0)]
    assert floor < noisy[0] and np.all(np.diff(noisy) > 0), (floor, noisy)
    assert floor < blurred[0] and np.all(np.diff(blurred) > 0), (floor, blurred)


def test_swd_sets_of_different_sizes_and_bad_input():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (35, 16, 16, 3), dtype=np.uint8)
    result = sliced_wasserstein_distance(a, b, seed=1)
    assert result == sliced_wasserstein_distance(a, b, seed=1)           # seeded
    assert list(result["levels_x1e3"]) == ["16"] and result["directions"] == 512
    with pytest.raises(DdpmError, match="same size"):
        sliced_wasserstein_distance(a, b[:, :8, :8])
    with pytest.raises(DdpmError, match="uint8"):
        sliced_wasserstein_distance(a.astype(np.float32), b)
    with pytest.raises(DdpmError, match="at least 2 images"):
        sliced_wasserstein_distance(a[:1], b)
