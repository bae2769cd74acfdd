"""Sample metrics on feature matrices: closed forms and Gaussians (no Inception, seconds).

The same functions run on Inception features in tests/test_sample_metrics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

from ddpm.errors import DdpmError
from ddpm.metrics.fid_spread import block_slices, fid_blocks, frechet_to_reference, psd_sqrt
from ddpm.metrics.kid import kernel_inception_distance
from ddpm.metrics.memorisation import flagged, nearest_cosine, nearest_pixel
from ddpm.metrics.precision_recall import precision_recall, precision_recall_equal_n

RNG = np.random.default_rng


# ------------------------------------------------------------------ KID


def direct_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (aᵀb / D + 1)³, written out from Bińkowski et al. eq. (4)."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def test_kid_equals_the_direct_formula_on_random_features():
    x, y = RNG(0).normal(size=(40, 64)), RNG(1).normal(0.3, 1.2, size=(40, 64))
    # One subset of all 40: any permutation is the whole set, so the value is determined.
    kid = kernel_inception_distance(x, y, subsets=3, subset_size=40)
    assert kid["mean"] == pytest.approx(direct_kid(x, y), abs=1e-6, rel=1e-9)
    assert kid["std"] == pytest.approx(0.0, abs=1e-9)   # every subset is the full set


def test_kid_caps_the_subset_size_and_is_seeded():
    x, y = RNG(2).normal(size=(30, 8)), RNG(3).normal(size=(50, 8))
    first = kernel_inception_distance(x, y, subsets=20, subset_size=1000)
    assert first["subset_size"] == 30
    assert kernel_inception_distance(x, y, subsets=20, subset_size=1000) == first
    assert first["std"] > 0     # y's subsets of 30 out of 50 differ
    with pytest.raises(DdpmError, match="at least 2"):
        kernel_inception_distance(x[:1], y, subsets=2, subset_size=10)


def test_kid_of_one_distribution_is_near_zero_and_of_shifted_far_above():
    x, y = RNG(4).normal(size=(400, 16)), RNG(5).normal(size=(400, 16))
    same = kernel_inception_distance(x, y, subsets=50, subset_size=100)
    shifted = kernel_inception_distance(x, y + 0.5, subsets=50, subset_size=100)
    assert abs(same["mean"]) < 2 * same["std"]
    assert shifted["mean"] > 5 * shifted["std"] > 0


# ------------------------------------------------------------------ FID spread


def test_block_fid_equals_pytorch_fid_in_both_rank_regimes():
    rng = RNG(6)
    ref = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24)) / 5
    mu_r, sigma_r = ref.mean(0), np.cov(ref, rowvar=False)
    root, trace = psd_sqrt(sigma_r), np.trace(sigma_r)
    for n in (100, 12):     # n > D (a D×D eigenproblem) and n < D (n×n, rank-deficient Σ)
        x = rng.normal(0.2, 1.0, size=(n, 24))
        theirs = calculate_frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu_r, sigma_r)
        ours = frechet_to_reference(x, mu_r, root, trace)
        assert ours == pytest.approx(theirs, rel=1e-6), n


def test_blocks_are_disjoint_cover_every_sample_and_are_deterministic():
    slices = block_slices(10, 3)
    covered = np.concatenate([np.arange(10)[s] for s in slices])
    assert covered.tolist() == list(range(10))
    assert [s.stop - s.start for s in slices] == [3, 3, 4]
    rng = RNG(7)
    ref = rng.normal(size=(500, 8))
    stats = ref.mean(0), np.cov(ref, rowvar=False)
    x = rng.normal(size=(200, 8))
    blocks = fid_blocks(x, *stats, k=4)
    assert blocks["k"] == 4 and blocks["block_n"] == 50 and len(blocks["values"]) == 4
    assert blocks == fid_blocks(x, *stats, k=4)
    # Block 2 alone is samples 100..149: scoring them directly gives the same FID.
    alone = frechet_to_reference(x[100:150], stats[0], psd_sqrt(stats[1]), np.trace(stats[1]))
    assert blocks["values"][2] == pytest.approx(alone, abs=1e-4)
    assert blocks["mean"] == pytest.approx(np.mean(blocks["values"]), abs=1e-4)
    assert blocks["sd"] > 0
    # A shifted sample set is far outside the spread of the matching one.
    shifted = fid_blocks(x + 1.0, *stats, k=4)
    assert shifted["mean"] - blocks["mean"] > 5 * (blocks["sd"] + shifted["sd"])


def test_too_few_samples_per_block_is_one_clear_error():
    with pytest.raises(DdpmError, match="fid.splits = 4: 6 samples give blocks of 1"):
        fid_blocks(np.zeros((6, 3)), np.zeros(3), np.eye(3), k=4)


# ------------------------------------------------------------------ precision / recall


def test_precision_recall_density_coverage_closed_form():
    # Real points 0..9 on a line, k = 1: every real ball has radius 1.
    real = np.arange(10.0)[:, None]
    fake = np.array([[0.5], [20.0], [4.2], [-3.0]])
    # Fake radii (k = 1): -3→3.5, 0.5→3.5, 4.2→3.7, 20→15.8, which cover all of 0..9.
    pr = precision_recall(real, fake, k=1)
    assert pr["precision"] == pytest.approx(2 / 4)    # 0.5 and 4.2 lie in real balls
    assert pr["recall"] == pytest.approx(10 / 10)
    assert pr["density"] == pytest.approx((2 + 2) / 4 / 1)  # 0.5 in balls of 0,1; 4.2 of 4,5
    assert pr["coverage"] == pytest.approx(4 / 10)   # 0, 1 (by 0.5), 4, 5 (by 4.2)


def test_precision_recall_on_gaussians():
    # Low dimension: with k = 3, P and R of one distribution against itself fall below 1
    # as D grows at fixed N (0.94 at D = 4, 0.75 at D = 16 for these 500 points).
    rng = RNG(8)
    real, same = rng.normal(size=(500, 4)), rng.normal(size=(500, 4))
    pr = precision_recall(real, same)
    assert pr["precision"] >= 0.9 and pr["recall"] >= 0.9
    # Density is 1 in expectation for identical distributions (Naeem et al. 2020), at any D.
    wide = precision_recall(rng.normal(size=(500, 16)), rng.normal(size=(500, 16)))
    assert wide["density"] == pytest.approx(1.0, abs=0.1)
    collapsed = precision_recall(real, 0.3 * rng.normal(size=(500, 4)))  # a narrow mode
    assert collapsed["precision"] >= 0.9 and collapsed["recall"] < 0.5
    far = precision_recall(real, rng.normal(size=(500, 4)) + 5.0)
    assert far["precision"] < 0.05 and far["recall"] < 0.05 and far["coverage"] < 0.05
    with pytest.raises(DdpmError, match="more than 3"):
        precision_recall(real[:3], same)


def expected_coverage(n_real: int, n_fake: int, k: int = 3) -> float:
    """E[coverage] for one distribution: a real point is covered when one of the n_fake
    is among its k nearest of the other n_real − 1 + n_fake points (exchangeable)."""
    return 1 - math.prod((n_real - i) / (n_real + n_fake - i) for i in range(1, k + 1))


def test_coverage_on_equal_n_does_not_depend_on_the_reference_size():
    # One distribution, 900 real and 200 generated points. Scored as they are, coverage
    # follows the ratio (closed form 0.453 at 900:200 against 0.877 at 200:200); on
    # equal N (a seeded subset of 200 real points) it lands on the 200:200 value. Over
    # 40 fresh data sets the coverage had sd 0.028 at both ratios (means 0.456 and
    # 0.880, the closed forms): 0.085 is 3 sd, and the two values lie 15 sd apart.
    rng = RNG(12)
    real, fake = rng.normal(size=(900, 16)), rng.normal(size=(200, 16))
    assert precision_recall(real, fake)["coverage"] == pytest.approx(
        expected_coverage(900, 200), abs=0.085)
    equal = precision_recall_equal_n(real, fake, seed=0)
    assert equal["n_reference"] == 200 == equal["n_generated"]
    assert equal["coverage"] == pytest.approx(expected_coverage(200, 200), abs=0.085)
    direct = precision_recall(real[:200], fake)["coverage"]   # a 200:200 draw of its own
    assert direct == pytest.approx(expected_coverage(200, 200), abs=0.085)
    assert precision_recall_equal_n(real, fake, seed=0) == equal             # seeded
    # The larger side is subsampled whichever it is (unsubsampled, 200 real against 900
    # generated points would cover 0.994); equal sizes are left whole.
    swapped = precision_recall_equal_n(fake, real, seed=0)
    assert swapped["n_reference"] == swapped["n_generated"] == 200
    assert swapped["coverage"] == pytest.approx(expected_coverage(200, 200), abs=0.085)
    assert precision_recall_equal_n(real[:200], fake) == {**precision_recall(real[:200], fake),
                                                          "n_reference": 200, "n_generated": 200}


# ------------------------------------------------------------------ memorisation


def test_nearest_neighbours_and_the_flag_threshold():
    train = RNG(9).normal(size=(50, 6))
    query = np.concatenate([train[[7, 3]] * 2.0, RNG(10).normal(size=(3, 6))])
    d, index = nearest_cosine(query, train)
    assert index[:2].tolist() == [7, 3] and np.allclose(d[:2], 0, atol=1e-6)  # scale-free
    pixels = RNG(11).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    d, index = nearest_pixel(pixels[[5]], pixels)
    assert index.tolist() == [5] and d[0] == pytest.approx(0, abs=1e-6)
    # RMS distance in [0, 1] units: all-black vs all-white is 1.
    black, white = np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 255, np.uint8)
    assert nearest_pixel(black, white)[0][0] == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(DdpmError, match="same size"):
        nearest_pixel(black, np.zeros((1, 8, 8, 3), np.uint8))
    # 199 holdout distances 1…199: the threshold is the 2nd smallest (r = round(0.01 · 200)),
    # and a sample at it counts (at or below).
    fraction, threshold = flagged(np.array([0.0, 0.5, 2.0, 3.0]), np.arange(1.0, 200.0))
    assert threshold == pytest.approx(2.0) and fraction == pytest.approx(3 / 4)
