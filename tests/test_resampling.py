"""Standard errors of the full-N FID and of KID (ddpm/metrics/resampling.py).

References independent of the code: pytorch-fid's `calculate_frechet_distance`
(scipy sqrtm) for the low-rank FID, torchmetrics' `KernelInceptionDistance` for the
full-set KID, and for the standard errors the spread over fresh draws of both data
sets, simulated (no closed form needed). Gaussians only: seconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from torchmetrics.image.kid import KernelInceptionDistance

from ddpm.errors import ConfigError, DdpmError
from ddpm.metrics.resampling import frechet_lowrank, kid_full, standard_errors
from ddpm.reporting.config import params_from_dict

RNG = np.random.default_rng


def pytorch_fid(x: np.ndarray, y: np.ndarray) -> float:
    return float(calculate_frechet_distance(x.mean(0), np.cov(x, rowvar=False),
                                            y.mean(0), np.cov(y, rowvar=False)))


@pytest.mark.parametrize("n1, n2, dim", [(100, 150, 256),   # both N < D: rank-deficient Σ
                                         (40, 200, 64),     # one side each way
                                         (300, 500, 24)])   # both N > D: QR factors
def test_lowrank_fid_equals_pytorch_fid(n1, n2, dim):
    rng = RNG(dim)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)       # correlated features
    x = rng.normal(size=(n1, dim)) @ mix
    y = rng.normal(0.1, 1.2, size=(n2, dim)) @ mix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # sqrtm's "singular product" note at N < D
        theirs = pytorch_fid(x, y)
    assert frechet_lowrank(x, y) == pytest.approx(theirs, rel=1e-6)
    assert frechet_lowrank(x, y) == pytest.approx(frechet_lowrank(y, x), rel=1e-9)


def test_full_set_kid_equals_torchmetrics_with_one_subset_of_everything():
    # torchmetrics draws subsets without replacement: a subset of all N is the full set.
    rng = RNG(0)
    x, y = rng.normal(size=(60, 32)), rng.normal(0.2, 1.1, size=(60, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=60)
    metric.update(torch.as_tensor(x), real=True)
    metric.update(torch.as_tensor(y), real=False)
    theirs = float(metric.compute()[0])
    assert kid_full(x, y) == pytest.approx(theirs, rel=1e-9)
    assert standard_errors("kid", x, y, draws=0)["value"] == pytest.approx(theirs, rel=1e-9)


def test_full_set_kid_is_unbiased_at_unequal_sizes():
    # Two samples of one distribution, 40 vs 90: the unbiased MMD² averages 0 over fresh
    # data (the biased V-statistic would average ~1/40 + 1/90 of the kernel's spread,
    # here 0.07, 25 of the mean's standard errors).
    rng = RNG(1)
    values = [kid_full(rng.normal(size=(40, 8)), rng.normal(size=(90, 8))) for _ in range(300)]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_a_draw_weighted_by_counts_equals_recomputing_on_the_drawn_rows():
    # The resampling passes counts (how often each row is drawn) instead of copying rows.
    # Reference: the drawn rows written out. FID: pytorch-fid on them. KID: the unbiased
    # MMD² over pairs of drawn rows that are different rows of the data (a copy paired
    # with itself would bring back the k(x, x) terms the unbiased form leaves out).
    from ddpm.metrics.resampling import _frechet, _mmd2_unbiased, bootstrap_counts

    rng = RNG(9)
    x, y = rng.normal(size=(30, 6)), rng.normal(0.3, 1.0, size=(40, 6))
    cx, cy = bootstrap_counts(30, 1, rng), bootstrap_counts(40, 1, rng)
    assert cx.max() > 1 and (cx == 0).any()           # copies and left-out rows
    rows_x, rows_y = np.repeat(x, cx[0], axis=0), np.repeat(y, cy[0], axis=0)
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    assert _frechet(t(x), t(y), t(cx), t(cy))[0] == pytest.approx(pytorch_fid(rows_x, rows_y),
                                                                  rel=1e-9)
    source_x, source_y = np.repeat(np.arange(30), cx[0]), np.repeat(np.arange(40), cy[0])

    def within(rows, source):
        k = (rows @ rows.T / 6 + 1) ** 3
        other = source[:, None] != source[None, :]
        return k[other].mean()

    cross = ((rows_x @ rows_y.T / 6 + 1) ** 3).mean()
    brute = within(rows_x, source_x) + within(rows_y, source_y) - 2 * cross
    assert _mmd2_unbiased(t(x), t(y), t(cx), t(cy))[0] == pytest.approx(brute, rel=1e-9)


def test_standard_errors_do_not_depend_on_which_set_comes_first():
    # FID and KID are symmetric, so are their errors: both sides are resampled. With 60
    # against 600 rows nearly all the error comes from the 60; resampling one argument
    # only would give 3× different errors in the two orders. Measured ratios 0.85–1.06
    # (different draws per order: 50 draws or 20 groups give ±10%).
    rng = RNG(10)
    x, y = rng.normal(size=(60, 16)), rng.normal(0.5, 1.0, size=(600, 16))
    for statistic in ("fid", "kid"):
        ab, ba = (standard_errors(statistic, *pair, draws=50) for pair in ((x, y), (y, x)))
        assert ab["value"] == pytest.approx(ba["value"], rel=1e-9)
        for name in ("se_bootstrap", "se_jackknife"):
            assert 0.75 < ab[name] / ba[name] < 1.33, (statistic, name, ab, ba)


def spread_and_errors(draw, statistic: str, fresh: int = 150, estimates: int = 6) -> dict:
    """sd of the statistic over `fresh` independent data sets, and the median ratio of
    each standard error (on `estimates` other data sets) to it."""
    value = {"fid": frechet_lowrank, "kid": kid_full}[statistic]
    truth = np.std([value(*draw()) for _ in range(fresh)], ddof=1)
    found = [standard_errors(statistic, *draw(), draws=50, seed=i) for i in range(estimates)]
    return {name: float(np.median([f[f"se_{name}"] for f in found])) / truth
            for name in ("bootstrap", "jackknife")}


def gaussians(shift: float, dim: int = 64, n1: int = 200, n2: int = 300, seed: int = 0):
    rng, scale = RNG(seed), np.linspace(0.5, 2.0, dim)      # unequal variances
    return lambda: (rng.normal(size=(n1, dim)) * scale,
                    rng.normal(size=(n2, dim)) * scale + shift)


# Monte Carlo noise of a ratio below: the sd over 150 fresh sets is within ±6% (1 sd),
# the median of 6 standard errors (50 draws or 20 groups each) within about ±5%; the
# bounds sit about 2 of those ~8% from the measured ratios (fixed seeds: deterministic).
# The D = 512 case of the resampling docstring behaves the same.
def test_fid_standard_errors_match_the_spread_over_fresh_data():
    # A real difference, FID 5× the same-data floor (80 against 16): both estimators
    # are first-order right. Measured: bootstrap 1.12, jackknife 0.98.
    apart = spread_and_errors(gaussians(1.0), "fid")
    assert 0.8 < apart["bootstrap"] < 1.35 and 0.8 < apart["jackknife"] < 1.35, apart
    # One distribution (the degenerate case): the bootstrap's draws scatter around an
    # observed FID that noise pushed up, so it overestimates (Arcones & Giné 1992);
    # the jackknife much less. Measured: bootstrap 2.16, jackknife 1.31.
    same = spread_and_errors(gaussians(0.0), "fid")
    assert 1.0 < same["jackknife"] < 1.6 and 1.6 < same["bootstrap"] < 3.0, same


def test_kid_standard_errors_match_the_spread_over_fresh_data():
    # Measured: shifted bootstrap 1.07, jackknife 1.00; same distribution 1.53 and 1.26.
    apart = spread_and_errors(gaussians(0.25), "kid")
    assert 0.8 < apart["bootstrap"] < 1.3 and 0.8 < apart["jackknife"] < 1.3, apart
    same = spread_and_errors(gaussians(0.0), "kid")
    assert 0.9 < same["jackknife"] < 1.5 and 1.2 < same["bootstrap"] < 2.0, same


def test_standard_errors_are_seeded_and_bad_input_is_one_line():
    x, y = RNG(3).normal(size=(30, 5)), RNG(4).normal(size=(40, 5))
    first = standard_errors("fid", x, y, draws=20, seed=7)
    assert standard_errors("fid", x, y, draws=20, seed=7) == first
    assert standard_errors("fid", x, y, draws=20, seed=8)["se_bootstrap"] != first["se_bootstrap"]
    assert first["groups"] == 20 and first["draws"] == 20
    assert standard_errors("kid", x[:5], y, draws=0) == {**standard_errors(
        "kid", x[:5], y, draws=0), "se_bootstrap": None, "groups": 5}  # delete-one below 20
    with pytest.raises(DdpmError, match="need 0 .off. or at least 2"):
        standard_errors("fid", x, y, draws=1)
    with pytest.raises(DdpmError, match="at least 3 rows"):
        standard_errors("kid", x[:2], y, draws=10)
    with pytest.raises(DdpmError, match="same D"):
        frechet_lowrank(x, y[:, :4])
    with pytest.raises(ConfigError, match="fid.bootstrap = 1: one draw has no spread"):
        params_from_dict({"fid": {"bootstrap": 1}})
    with pytest.raises(ConfigError, match="fid.bootstrap = -1"):
        params_from_dict({"fid": {"bootstrap": -1}})
