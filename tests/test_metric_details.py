"""The metrics' exact arithmetic, where spread-based tests cannot see it: leave-one-out
jackknife and per-draw bootstrap recomputed by hand, ties on ball edges, default seeds,
set-size caps, the device argument and the one-line errors (fast tier; see
docs/testing.md for the mutants these were written against)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm.errors import DdpmError
from ddpm.metrics import memorisation as memo
from ddpm.metrics.kid import kernel_inception_distance
from ddpm.metrics.precision_recall import precision_recall, precision_recall_equal_n
from ddpm.metrics.resampling import (bootstrap_counts, frechet_lowrank, kid_full,
                                     standard_errors)

RNG = np.random.default_rng
STATISTIC = {"fid": frechet_lowrank, "kid": kid_full}


def two_sets(n_x: int, n_y: int, d: int = 4, seed: int = 0):
    rng = RNG(seed)
    return rng.normal(size=(n_x, d)), rng.normal(0.5, 1.3, size=(n_y, d))


# ------------------------------------------------------------------ resampling


@pytest.mark.parametrize("statistic", ["fid", "kid"])
def test_jackknife_with_one_row_per_group_is_the_leave_one_out_formula(statistic):
    """10 rows a side and groups = min(20, 10, 10) = 10: each group is one row, so the
    SE is √(Σ_side (n − 1)/n Σ_i (θ₍ᵢ₎ − θ̄)²), whatever order the groups were drawn in."""
    x, y = two_sets(10, 10)
    f = STATISTIC[statistic]
    variance = 0.0
    for side in (0, 1):
        loo = np.array([f(np.delete(x, i, 0), y) if side == 0 else f(x, np.delete(y, i, 0))
                        for i in range(10)])
        variance += 9 / 10 * ((loo - loo.mean()) ** 2).sum()
    se = standard_errors(statistic, x, y, draws=0)
    assert se["groups"] == 10 and se["se_bootstrap"] is None
    assert se["value"] == pytest.approx(f(x, y), rel=1e-12)
    assert se["se_jackknife"] == pytest.approx(np.sqrt(variance), rel=1e-9)


def weighted_kid(x, y, cx, cy):
    """Unbiased MMD² (cubic kernel) of rows drawn cx and cy times, pairs of copies of one
    row left out of the within-set means (weights cᵢcⱼ, i ≠ j), written out in numpy."""
    def k(a, b):
        return (a @ b.T / a.shape[1] + 1) ** 3

    def within(z, c):
        w = np.outer(c, c)
        np.fill_diagonal(w, 0)
        return (w * k(z, z)).sum() / w.sum()
    return within(x, cx) + within(y, cy) - 2 * (np.outer(cx, cy) * k(x, y)).sum() / (cx.sum() * cy.sum())


@pytest.mark.parametrize("statistic", ["fid", "kid"])
def test_bootstrap_se_is_the_sd_over_its_draws_recomputed_by_hand(statistic):
    """Draw d takes row j of x counts[d, j] times (rng([seed, 0]), x's draws then y's);
    the statistic of each draw recomputed directly (FID on the repeated rows, KID with
    copy weights) has sd (ddof 1) = the SE."""
    x, y = two_sets(12, 9, seed=1)
    rng = np.random.default_rng([0, 0])
    cx, cy = bootstrap_counts(12, 5, rng), bootstrap_counts(9, 5, rng)
    if statistic == "fid":
        values = [frechet_lowrank(np.repeat(x, cx[d], 0), np.repeat(y, cy[d], 0))
                  for d in range(5)]
    else:
        values = [weighted_kid(x, y, cx[d], cy[d]) for d in range(5)]
    se = standard_errors(statistic, x, y, draws=5)
    assert se["se_bootstrap"] == pytest.approx(np.std(values, ddof=1), rel=1e-8)
    assert se == standard_errors(statistic, x, y, draws=5, seed=0)   # the default seed is 0
    assert se["se_bootstrap"] != standard_errors(statistic, x, y, draws=5, seed=1)["se_bootstrap"]


def test_bootstrap_counts_draw_every_row_and_n_in_all():
    counts = bootstrap_counts(5, 4000, RNG(0))
    assert (counts.sum(1) == 5).all() and (counts[:, 0] > 0).any()
    assert counts.mean(0) == pytest.approx(np.ones(5), abs=0.05)   # each row 1× on average


def test_jackknife_groups_are_capped_by_the_smaller_side():
    x, y = two_sets(25, 10)
    assert standard_errors("fid", x, y, draws=0)["groups"] == 10
    assert standard_errors("fid", y, x, draws=0)["groups"] == 10


@pytest.mark.parametrize("statistic, name", [("fid", "FID"), ("kid", "KID")])
def test_bad_feature_sets_are_one_line_naming_the_statistic(statistic, name):
    x, y = two_sets(6, 6)
    bad = {"a vector": (x[:, 0], y), "other D": (x, y[:, :3]), "3 rows": (x[:3], y)}
    for what, (a, b) in bad.items():
        if what == "3 rows":   # 3 is enough: the jackknife leaves 1 out and keeps 2
            standard_errors(statistic, a, b, draws=2)
            a = a[:2]
        with pytest.raises(DdpmError, match=rf"^{name} standard error: need "):
            standard_errors(statistic, a, b, draws=2)
    with pytest.raises(DdpmError, match=rf"^{name}: need two feature matrices"):
        STATISTIC[statistic](x, y[:, :3])


# ------------------------------------------------------------------ KID


def test_kid_caps_its_subsets_at_the_smaller_side_and_keeps_two():
    x, y = two_sets(30, 5)
    assert kernel_inception_distance(x, y, subsets=4, subset_size=10)["subset_size"] == 5
    assert kernel_inception_distance(y, x, subsets=4, subset_size=10)["subset_size"] == 5
    kid = kernel_inception_distance(x[:2], y[:2], subsets=3, subset_size=10)
    assert kid == {**kid, "subsets": 3, "subset_size": 2}
    with pytest.raises(DdpmError, match="^KID needs at least 2 real and 2 generated images, "
                                        "got 1 and 2$"):
        kernel_inception_distance(x[:1], y[:2], subsets=3, subset_size=10)


def test_kid_seed_subsets_and_precision_change_what_they_should():
    x, y = two_sets(40, 40)
    kid = kernel_inception_distance(x, y, subsets=20, subset_size=10)
    assert kid == kernel_inception_distance(x, y, subsets=20, subset_size=10, seed=0)
    assert kid["mean"] != kernel_inception_distance(x, y, subsets=20, subset_size=10, seed=1)["mean"]
    # float64 features: float32 would move the mean by ~1e-7 relative
    x32 = kernel_inception_distance(x.astype(np.float32), y.astype(np.float32), 20, 10)
    assert kid["mean"] == pytest.approx(x32["mean"], rel=1e-5)
    one = kernel_inception_distance(x, y, subsets=1, subset_size=10)
    assert one["std"] == 0 and one["subsets"] == 1


# ------------------------------------------------------------------ precision / recall


def test_points_on_a_balls_edge_are_inside():
    """Integer points, exact distances: with k = 1 every real point's ball has radius 1,
    so a generated point at distance exactly 1 is inside (≤, Kynkäänniemi et al.)."""
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[4.0], [6.0], [7.0], [9.0]])    # radii 2, 1, 1, 2
    pr = precision_recall(real, fake, k=1)
    # 4 is on real 3's ball edge; real 2 and 3 are on (inside) fake 4's ball of radius 2.
    assert pr == {"precision": 0.25, "recall": 0.5, "density": 0.25, "coverage": 0.25, "k": 1}


def test_k_is_the_kth_other_point_not_the_point_itself():
    real = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    fake = np.array([[0.0], [2.0], [20.0]])   # k = 2 radii of real: 3, 2, 3, 4, 7
    pr = precision_recall(real, fake, k=2)
    # 0 is in the balls of 0, 1 and 3; 2 in those of 0, 1, 3 and 6; 20 in none.
    assert pr["density"] == pytest.approx((3 + 4) / (3 * 2))


def test_equal_n_subsets_the_larger_side_without_replacement_and_seeded():
    real, fake = RNG(0).normal(size=(40, 3)), RNG(1).normal(size=(10, 3))
    pr = precision_recall_equal_n(real, fake)
    assert pr == precision_recall_equal_n(real, fake, seed=0)
    keep = np.sort(np.random.default_rng(0).choice(40, 10, replace=False))
    assert pr == {**precision_recall(real[keep], fake), "n_reference": 10, "n_generated": 10}
    same = precision_recall_equal_n(real[:10], fake)    # equal sizes: nothing drawn
    assert same == {**precision_recall(real[:10], fake), "n_reference": 10, "n_generated": 10}


# ------------------------------------------------------------------ devices


CALLS = {
    "precision_recall": lambda a, b, dev: precision_recall(a, b, 3, dev),
    "precision_recall_equal_n": lambda a, b, dev: precision_recall_equal_n(a, b, 3, dev),
    "standard_errors": lambda a, b, dev: standard_errors("fid", a, b, 2, device=dev),
    "frechet_lowrank": lambda a, b, dev: frechet_lowrank(a, b, dev),
    "kid_full": lambda a, b, dev: kid_full(a, b, dev),
    "nearest_cosine": lambda a, b, dev: memo.nearest_cosine(a, b, dev),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", sorted(CALLS))
def test_the_device_argument_is_used_not_ignored(name):
    """Asked for a GPU on a machine without one, each fails rather than quietly using
    the CPU: the device argument reaches the tensors."""
    a, b = two_sets(8, 8)
    CALLS[name](a, b, "cpu")
    with pytest.raises((RuntimeError, AssertionError)):
        CALLS[name](a, b, "cuda")
