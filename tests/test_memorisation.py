"""The memorisation check on synthetic features and pixels (no Inception, seconds):
flipped training images are searched, copies and mirrored copies are flagged, and the
flagged fraction of a model that does not copy stays within the stated null bound.

The same functions run on stand-in Inception features in tests/test_sample_metrics.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import betabinom

from ddpm.metrics import memorisation as memo
from ddpm.metrics.memorisation import (flagged, memorisation, nearest_with_flips,
                                       null_flag_bound, threshold_rank)

RNG = np.random.default_rng
SIDE = 6                                              # px: 6 × 6 × 3 synthetic images
PROJECTION = RNG(99).normal(size=(SIDE * SIDE * 3, 24))  # a fixed "feature network"


def features_of(pixels: np.ndarray) -> np.ndarray:
    """24-d features of uint8 images: a fixed random projection, not flip-invariant, so a
    mirror image has other features (as Inception's do) and needs its own."""
    return (pixels.reshape(len(pixels), -1) / 255.0) @ PROJECTION


def images(rng, n: int) -> np.ndarray:
    """n random uint8 images [n, SIDE, SIDE, 3], smooth enough to be far from symmetric."""
    return rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)


def mirror(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels[:, :, ::-1])


def as_sets(generated: np.ndarray, holdout: np.ndarray, train: np.ndarray):
    """The three arguments of `memorisation`, features computed as fid_ref would."""
    return ({"features": features_of(generated), "pixels": generated},
            {"features": features_of(holdout), "pixels": holdout},
            {"features": features_of(train), "features_flipped": features_of(mirror(train)),
             "pixels": train})


# ------------------------------------------------------------------ copies and flips


def test_exact_copies_and_exact_flips_are_flagged_at_distance_zero_in_both_spaces():
    rng = RNG(0)
    train, holdout, unseen = images(rng, 120), images(rng, 60), images(rng, 40)
    copied, flipped = [3, 17, 58], [5, 44, 101]
    generated = np.concatenate([unseen, train[copied], mirror(train[flipped])])
    metrics, nearest = memorisation(*as_sets(generated, holdout, train))
    assert metrics["n_train"] == metrics["n_train_flipped"] == 120
    for name in ("cosine", "pixel"):
        d, index = nearest[f"{name}_distance"][-6:], nearest[f"{name}_index"][-6:]
        assert (d < 1e-6).all(), (name, d)
        assert index.tolist() == copied + flipped, name
        assert nearest[f"{name}_flipped"][-6:].tolist() == [False] * 3 + [True] * 3, name
        assert nearest[f"{name}_flagged"][-6:].all(), name
        assert metrics[f"flagged_{name}"] >= 6, name
        assert metrics[f"exact_copies_{name}"] == 6, name


def test_flipped_training_images_are_searched_in_both_spaces():
    # A mirror image of a training image is far from every unflipped training image,
    # in features and in pixels: found only because the flips are searched.
    rng = RNG(1)
    train = images(rng, 50)
    query = mirror(train[[7, 21]])
    sets = {"features": features_of(train), "features_flipped": features_of(mirror(train)),
            "pixels": train}
    for space, q in (("cosine", features_of(query)), ("pixel", query)):
        d, index, flipped = nearest_with_flips(space, q, sets)
        assert index.tolist() == [7, 21] and flipped.all() and (d < 1e-6).all(), space
    plain_d, _ = memo.nearest_pixel(query, train)
    assert (plain_d > 0.1).all()          # the unflipped search alone misses them


def test_a_holdout_copy_of_a_training_image_still_lets_copies_be_flagged():
    # prepare drops identical files, not identical pixels: a holdout image that is a
    # training image makes the threshold 0; copies sit at it, and "at or below" flags them.
    rng = RNG(2)
    train, holdout, unseen = images(rng, 80), images(rng, 40), images(rng, 30)
    holdout[0] = train[9]
    generated = np.concatenate([unseen, train[[9, 12]]])
    metrics, nearest = memorisation(*as_sets(generated, holdout, train))
    for name in ("cosine", "pixel"):
        assert metrics[f"threshold_{name}"] == pytest.approx(0, abs=1e-6), name
        assert nearest[f"{name}_flagged"][-2:].all(), name


def test_the_threshold_is_the_rank_r_holdout_distance_and_ties_with_it_are_flagged():
    holdout = np.arange(1.0, 301.0)          # 300 distances: r = round(0.01 · 301) = 3
    assert threshold_rank(300) == 3 and threshold_rank(89) == 1 and threshold_rank(5) == 1
    fraction, threshold = flagged(np.array([0.5, 2.9, 3.0, 3.1, 7.0]), holdout)
    assert threshold == 3.0 and fraction == pytest.approx(3 / 5)


def test_train_blocks_change_no_result(monkeypatch):
    # A real run's training set is converted block by block; blocks of 7 rows (features)
    # and of 1 image (pixels) put block edges everywhere, where a wrong offset or a wrong
    # choice between blocks would move an index.
    rng = RNG(3)
    train, holdout, unseen = images(rng, 40), images(rng, 20), images(rng, 25)
    generated = np.concatenate([unseen, train[[4, 39]], mirror(train[[0, 22]])])
    whole = memorisation(*as_sets(generated, holdout, train))
    monkeypatch.setattr(memo, "TRAIN_BLOCK", 7 * 24)
    blocked = memorisation(*as_sets(generated, holdout, train))
    assert blocked[0] == whole[0]
    for key, value in whole[1].items():
        np.testing.assert_allclose(blocked[1][key], value, rtol=1e-6, atol=1e-12, err_msg=key)


# ------------------------------------------------------------------ the null bound


def test_null_bound_is_the_beta_binomial_quantile_in_the_upper_tail():
    # K ~ Beta-binomial(n_g, r, n_h − r + 1): simulate it as the binomial of a Beta rate.
    rng = RNG(4)
    n_g, n_h = 200, 89
    r = threshold_rank(n_h)
    bound = null_flag_bound(n_g, n_h, r, confidence=0.99)
    assert bound["rate"] == pytest.approx(1 / 90)
    k = rng.binomial(n_g, rng.beta(r, n_h - r + 1, size=200_000))
    assert np.mean(k > bound["upper_count"]) <= 0.01 + 0.001         # a 99% bound …
    assert np.mean(k > bound["upper_count"] - 1) > 0.01              # … and the tightest one
    assert bound["upper"] == bound["upper_count"] / n_g
    # The reviewer's run: 89 holdout images, 200 samples, 4.5% flagged is within chance.
    assert bound["upper"] > 0.045


def test_fewer_holdout_images_give_a_wider_interval():
    uppers = [null_flag_bound(200, n_h, threshold_rank(n_h))["upper"]
              for n_h in (30, 89, 300, 3000)]
    assert uppers == sorted(uppers, reverse=True) and uppers[0] > uppers[-1] + 0.03
    # Many holdout images and samples: the bound closes in on the 1% rate.
    big = null_flag_bound(50_000, 20_000, threshold_rank(20_000))
    assert big["rate"] == pytest.approx(0.01, rel=1e-3) and big["upper"] < 0.0125


def test_a_model_that_does_not_copy_stays_within_the_bound_in_99_percent_of_runs():
    # 200 seeded runs of the demo's sizes (89 holdout images, 200 samples): samples and
    # holdout drawn from the same distribution (the null), Gaussian features and
    # Gaussian-ish pixels. The bound is a 99% one: ≥ 95% of runs must stay within it.
    rng = RNG(5)
    n_g, n_h, n_t, reps = 200, 89, 150, 200
    within = {"cosine": 0, "pixel": 0}
    mean_fraction = {"cosine": 0.0, "pixel": 0.0}
    for _ in range(reps):
        def pixels(n):
            return np.clip(rng.normal(128, 40, (n, 3, 3, 3)), 0, 255).round().astype(np.uint8)
        train = {"features": rng.normal(size=(n_t, 16)),
                 "features_flipped": rng.normal(size=(n_t, 16)), "pixels": pixels(n_t)}
        samples = {"features": rng.normal(size=(n_g, 16)), "pixels": pixels(n_g)}
        holdout = {"features": rng.normal(size=(n_h, 16)), "pixels": pixels(n_h)}
        metrics, _ = memorisation(samples, holdout, train)
        for name in within:
            assert metrics[f"copying_evidence_{name}"] == (metrics[f"excess_{name}"] > 0)
            within[name] += not metrics[f"copying_evidence_{name}"]
            mean_fraction[name] += metrics[f"fraction_{name}"] / reps
    assert metrics["null_rate"] == pytest.approx(1 / 90, abs=1e-4)
    for name in within:
        assert within[name] >= 0.95 * reps, (name, within[name])
        # The flagged rate averages r / (n_h + 1) = 1/90 (sd over 200 runs ~ 0.0008).
        assert mean_fraction[name] == pytest.approx(1 / 90, abs=0.003), name


def test_copies_beyond_the_bound_are_evidence_and_fewer_are_not():
    rng = RNG(6)
    train, holdout = images(rng, 300), images(rng, 89)
    for copies, evidence in ((20, True), (2, False)):
        generated = np.concatenate([images(rng, 200 - copies), train[:copies]])
        metrics, _ = memorisation(*as_sets(generated, holdout, train))
        upper = metrics["null_upper_count"]
        assert betabinom(200, 1, 89).cdf(upper) >= 0.99
        for name in ("cosine", "pixel"):
            assert metrics[f"copying_evidence_{name}"] is evidence, (name, copies)
            excess = max(0, metrics[f"flagged_{name}"] - upper) / 200
            assert metrics[f"excess_{name}"] == pytest.approx(excess, abs=1e-4)
            assert (metrics[f"excess_{name}"] > 0) is evidence
            assert metrics[f"exact_copies_{name}"] == copies   # counted whatever the bound


# ------------------------------------------------------------------ every number, recounted


def brute_force(generated, holdout, train):
    """memorisation()'s metrics and nearest neighbours from full distance matrices, in
    numpy: cosine 1 − cos of the features, RMS of the pixels / 255, each against the
    training images and their mirror images (a tie counts as unflipped)."""
    def cosine(a, b):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return np.clip(1 - a @ b.T, 0, None)

    def rms(a, b):
        a, b = a.reshape(len(a), -1) / 255, b.reshape(len(b), -1) / 255
        return np.sqrt(((a[:, None] - b[None]) ** 2).mean(-1))

    queries = np.concatenate([generated, holdout])
    n_g, n_h = len(generated), len(holdout)
    rank = min(n_h, max(1, round(0.01 * (n_h + 1))))
    upper = int(betabinom(n_g, rank, n_h - rank + 1).ppf(0.99))
    metrics = {"percentile": 1.0, "threshold_rank": rank, "confidence": 0.99,
               "n_generated": n_g, "n_holdout": n_h, "n_train": len(train),
               "n_train_flipped": len(train), "null_rate": round(rank / (n_h + 1), 4),
               "null_upper": round(upper / n_g, 4), "null_upper_count": upper}
    nearest = {}
    spaces = {"cosine": (cosine, features_of(queries), features_of(train),
                         features_of(mirror(train))),
              "pixel": (rms, queries, train, mirror(train))}
    for name, (distance, q, plain, flipped) in spaces.items():
        d_plain, d_flip = distance(q, plain), distance(q, flipped)
        best_plain, best_flip = d_plain.min(1), d_flip.min(1)
        is_flip = best_flip < best_plain - 1e-9
        d = np.where(is_flip, best_flip, best_plain)
        d = np.where(d <= 1e-6, 0.0, d)
        index = np.where(is_flip, d_flip.argmin(1), d_plain.argmin(1))
        threshold = np.sort(d[n_g:])[rank - 1]
        hits = d[:n_g] <= threshold
        count = int(hits.sum())
        nearest.update({f"{name}_distance": d[:n_g], f"{name}_index": index[:n_g],
                        f"{name}_flipped": is_flip[:n_g], f"{name}_flagged": hits,
                        f"holdout_{name}_distance": d[n_g:]})
        metrics.update({f"fraction_{name}": round(count / n_g, 4), f"flagged_{name}": count,
                        f"threshold_{name}": round(float(threshold), 6),
                        f"excess_{name}": round(max(0, count - upper) / n_g, 4),
                        f"copying_evidence_{name}": count > upper,
                        f"exact_copies_{name}": int((d[:n_g] == 0).sum())})
    return metrics, nearest


@pytest.mark.parametrize("n_holdout, copies", [(2, 0), (150, 6), (40, 1)])
def test_every_metric_and_neighbour_equals_a_brute_force_recount(n_holdout, copies):
    rng = RNG(n_holdout)
    train, holdout, unseen = images(rng, 90), images(rng, n_holdout), images(rng, 30)
    picked = rng.choice(90, copies, replace=False)
    copied = np.concatenate([train[picked[: copies // 2]], mirror(train[picked[copies // 2:]])])
    generated = np.concatenate([unseen, copied]) if copies else unseen
    metrics, nearest = memorisation(*as_sets(generated, holdout, train))
    expected_metrics, expected_nearest = brute_force(generated, holdout, train)
    assert metrics.keys() == expected_metrics.keys()
    for key, value in expected_metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    assert nearest.keys() == expected_nearest.keys()
    for key, value in expected_nearest.items():
        np.testing.assert_allclose(nearest[key], value, atol=1e-6, err_msg=key)


def test_bad_sets_are_one_clear_error_each():
    rng = RNG(5)
    generated, holdout, train = as_sets(images(rng, 4), images(rng, 1), images(rng, 10))
    with pytest.raises(memo.DdpmError, match="^memorisation: need at least 2 holdout images "
                                             "for the baseline$"):
        memorisation(generated, holdout, train)
    generated, holdout, train = as_sets(images(rng, 4), images(rng, 3), images(rng, 10))
    short = {**train, "features_flipped": train["features_flipped"][:9]}
    with pytest.raises(memo.DdpmError, match="^memorisation: 9 flipped training features "
                                             "for 10 training images$"):
        memorisation(generated, holdout, short)
    for bigger in ({**generated, "pixels": np.zeros((4, 8, 8, 3), np.uint8)},):
        with pytest.raises(memo.DdpmError, match=r"generated images are \(8, 8\) px but "
                                                 r"training images \(6, 6\) px"):
            memorisation(bigger, holdout, train)
    small_holdout = {**holdout, "pixels": np.zeros((3, 8, 8, 3), np.uint8)}
    with pytest.raises(memo.DdpmError, match=r"are \(8, 8\) px but training images \(6, 6\)"):
        memorisation(generated, small_holdout, train)


# ------------------------------------------------------------------ edges (mutation survivors)


@pytest.mark.parametrize("n_g, n_h, rank, confidence", [
    (200, 89, 1, 0.99), (3, 2, 2, 0.99),    # the quantile can be n_g itself
    (1, 5, 3, 0.5),                         # Beta-binomial(1, 3, 3): cdf(0) = 0.5 exactly
    (50, 10, 5, 0.9), (7, 300, 3, 0.999)])
def test_null_upper_count_is_scipys_quantile(n_g, n_h, rank, confidence):
    # scipy's ppf: the smallest k with P(K ≤ k) ≥ q, computed its own way.
    expected = betabinom(n_g, rank, n_h - rank + 1).ppf(confidence)
    assert null_flag_bound(n_g, n_h, rank, confidence)["upper_count"] == expected


def test_flagged_uses_the_percentile_it_is_given():
    holdout_d = np.arange(1.0, 20.0)          # 19 distances: rank r = p/100 · 20
    sample_d = np.array([4.0, 5.0, 9.0, 10.0, 11.0])
    assert flagged(sample_d, holdout_d, percentile=50) == (0.8, 10.0)
    assert flagged(sample_d, holdout_d, percentile=25) == (0.4, 5.0)


def test_a_symmetric_image_is_its_own_mirror_and_counts_as_unflipped():
    rng = RNG(6)
    half = images(rng, 1)[:, :, : SIDE // 2]
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)   # equal to its mirror
    train = np.concatenate([images(rng, 3), symmetric])
    sets = as_sets(symmetric, images(rng, 3), train)[2]
    for space, key in (("pixel", "pixels"), ("cosine", "features")):
        query = symmetric if key == "pixels" else features_of(symmetric)
        d, index, flipped = nearest_with_flips(space, query, sets)
        assert (d, index, flipped) == (0, 3, False), space


def test_cosine_distances_of_copies_are_zero_up_to_rounding_never_negative():
    # 1 − cos(q, q) rounds below 0 for about a quarter of random float64 vectors.
    q = RNG(7).normal(size=(200, 24))
    d, index = memo.nearest_cosine(q, q)
    assert (index == np.arange(200)).all() and (d >= 0).all() and d.max() < 1e-12


def test_thresholds_are_reported_to_6_decimals():
    rng = RNG(8)
    metrics, _ = memorisation(*as_sets(images(rng, 20), images(rng, 30), images(rng, 40)))
    for name in ("cosine", "pixel"):
        value = metrics[f"threshold_{name}"]
        assert value == round(value, 6) and value != round(value, 5), name


def test_a_tie_between_training_images_keeps_the_first_across_blocks(monkeypatch):
    # Training images 2 and 9 are the same picture; one search would return 2, and so
    # must a blocked one (1 image per block: the copy comes in a later block).
    rng = RNG(9)
    train = images(rng, 12)
    train[9] = train[2]
    monkeypatch.setattr(memo, "TRAIN_BLOCK", 1)
    for space in ("pixel", "cosine"):
        sets = as_sets(train[[2]], images(rng, 3), train)
        query = sets[0]["pixels" if space == "pixel" else "features"]
        d, index, flipped = nearest_with_flips(space, query, sets[2])
        assert (index, flipped) == (2, False) and d == pytest.approx(0, abs=1e-12), space


def test_an_empty_training_set_is_one_clear_error():
    rng = RNG(10)
    generated, holdout, _ = as_sets(images(rng, 4), images(rng, 3), images(rng, 1))
    train = {"features": np.zeros((0, 24)), "features_flipped": np.zeros((0, 24)),
             "pixels": np.zeros((0, SIDE, SIDE, 3), np.uint8)}
    with pytest.raises(memo.DdpmError, match="^memorisation: no training images to search$"):
        memorisation(generated, holdout, train)


def test_threshold_rank_rounds_p_times_n_plus_1():
    # r/(n_h + 1) ≈ p/100: 1.49 rounds to 1, 1.51 to 2; 50 % of 19 is rank 10.
    assert threshold_rank(148) == 1 and threshold_rank(150) == 2
    assert threshold_rank(19, percentile=50) == 10 and threshold_rank(3, percentile=1) == 1


def test_cosine_search_runs_in_float32_even_for_float16_features():
    # fid_ref may store features as float16; 1 − cos of 5e-5 and 7e-5 both round to 0 in
    # float16, where the search would take the first (farther) row.
    q = np.zeros((1, 8), np.float16)
    q[0, 0] = 1
    far, near = q.copy(), q.copy()
    far[0, 1], near[0, 2] = 0.012, 0.01
    d, index = memo.nearest_cosine(q, np.concatenate([far, near]))
    assert index.tolist() == [1] and d[0] == pytest.approx(5e-5, rel=0.01)
