"""KID, precision/recall and the memorisation check on images, and their path through
the fid_ref/fid stages into metrics/fid.json and the report.

Images are the built-in demo faces (ddpm/data/demo.py), always available. Their
features come from the calibrated stand-in Inception weights (tests/conftest.py):
the values compare the sets here with each other only. Inception costs ~0.3 s per
image on one busy CPU core, so the sets are small and computed once per module.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

import tiny
from ddpm.data.demo import draw_face
from ddpm.evaluation import reference, score
from ddpm.evaluation.config import FidConfig
from ddpm.metrics.fid import inception_features, load_inception, load_statistics
from ddpm.metrics.kid import kernel_inception_distance
from ddpm.metrics.memorisation import flagged, memorisation, nearest_pixel
from ddpm.metrics.precision_recall import precision_recall
from ddpm.reporting.config import Params
from ddpm.reporting.report import RunOutputs, build_report, fmt, pm

HALF = 40   # faces per half: the train side and the "generated"/holdout side


def demo_faces(start: int, stop: int, size: int) -> np.ndarray:
    return np.stack([np.asarray(draw_face(0, i).resize((size, size), Image.BICUBIC))
                     for i in range(start, stop)])


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    faces = demo_faces(0, 2 * HALF, 32)
    blurred = gaussian_filter(faces[HALF:].astype(float), sigma=(0, 3, 3, 0))
    noise = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    return {"train": faces[:HALF], "other": faces[HALF:], "noise": noise,
            "blurred": blurred.round().astype(np.uint8),
            "train_flipped": np.ascontiguousarray(faces[:HALF, :, ::-1])}


@pytest.fixture(scope="module")
def features(images, standin_inception) -> dict[str, np.ndarray]:
    model = load_inception()
    return {name: inception_features([x], model) for name, x in images.items()}


# ------------------------------------------------------------------ on Inception features


def test_kid_of_disjoint_halves_is_zero_within_noise_and_noise_is_far(features):
    halves = kernel_inception_distance(features["train"], features["other"], subsets=50,
                                       subset_size=20)
    assert abs(halves["mean"]) < 2 * halves["std"]
    noise = kernel_inception_distance(features["train"], features["noise"], subsets=50,
                                      subset_size=20)
    assert noise["subset_size"] == 16   # capped at the 16 noise images
    assert noise["mean"] > 20 * halves["std"] > 0


def test_precision_recall_of_halves_is_high_and_blur_lowers_precision(features):
    halves = precision_recall(features["train"], features["other"])
    # at least 36 of 40 (fractions come as float32: 36/40 is 0.89999998)
    assert halves["precision"] >= 0.9 - 1e-6 and halves["recall"] >= 0.9 - 1e-6
    # Blurred faces (σ = 3 px of 32) leave the real manifold: precision and density fall
    # (stand-in features: about 1.0 → 0.8 and 1.1 → 0.7).
    blurred = precision_recall(features["train"], features["blurred"])
    assert blurred["precision"] <= halves["precision"] - 0.1
    assert blurred["density"] < 0.8 * halves["density"]


def test_memorisation_flags_copies_and_mirrored_copies_of_training_images(images, features):
    # 34 unseen faces, copies of 4 training faces and mirror images of 2 (training flips
    # images): 15% copies. The unseen faces are the holdout baseline too, so at most one
    # of them (the threshold, holdout distance 1 of 40) is flagged.
    copied, flipped = [3, 11, 22, 37], [5, 30]
    samples = {key: np.concatenate([source["other"][:HALF - 6], source["train"][copied],
                                    source["train_flipped"][flipped]])
               for key, source in (("features", features), ("pixels", images))}
    holdout = {"features": features["other"], "pixels": images["other"]}
    train = {"features": features["train"], "features_flipped": features["train_flipped"],
             "pixels": images["train"]}
    metrics, nearest = memorisation(samples, holdout, train)
    for name in ("cosine", "pixel"):
        assert 0.15 <= metrics[f"fraction_{name}"] <= 0.15 + 1 / HALF, name
        assert nearest[f"{name}_index"][-6:].tolist() == copied + flipped, name
        assert nearest[f"{name}_flipped"][-6:].tolist() == [False] * 4 + [True] * 2, name
        assert (nearest[f"{name}_distance"][-6:] == 0).all(), name
    # With 40 holdout images chance alone allows up to 6 of 40 flagged (99%): 6 copies
    # are evidence only with one unseen face flagged beside them.
    assert metrics["null_upper_count"] == 6
    for name in ("cosine", "pixel"):
        evidence = metrics[f"flagged_{name}"] > 6
        assert metrics[f"copying_evidence_{name}"] is evidence, name


def test_memorisation_does_not_flag_unseen_images():
    # Pixels only, so N can be large: 1,000 training faces, 300 holdout faces as the
    # baseline, 300 other unseen faces as "samples" (~1% flagged by chance), and the
    # same with 10% of them replaced by training copies.
    faces = demo_faces(0, 1600, 16)
    train, baseline, unseen = faces[:1000], faces[1000:1300], faces[1300:]
    base, _ = nearest_pixel(baseline, train)
    d_unseen, _ = nearest_pixel(unseen, train)
    assert flagged(d_unseen, base)[0] <= 0.02
    d_copies, _ = nearest_pixel(np.concatenate([unseen[:270], train[:30]]), train)
    assert flagged(d_copies, base)[0] >= 0.09


def test_row_blocks_change_no_result(monkeypatch):
    # Real runs rarely pass 1,024 rows; blocks of 7 rows put block edges inside these
    # sets (and a last, shorter block), where an off-by-one would drop or repeat rows.
    from ddpm.metrics import blocks
    from ddpm.metrics.memorisation import nearest_cosine

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(30, 5)), rng.normal(0.3, 1.0, size=(25, 5))
    pixels = rng.integers(0, 256, (25, 4, 4, 3), dtype=np.uint8)
    whole = (precision_recall(real, fake), nearest_cosine(fake, real),
             nearest_pixel(pixels[:11], pixels))
    monkeypatch.setattr(blocks, "CHUNK", 7)
    blocked = (precision_recall(real, fake), nearest_cosine(fake, real),
               nearest_pixel(pixels[:11], pixels))
    assert blocked[0] == whole[0]
    for (d, i), (d_whole, i_whole) in zip(blocked[1:], whole[1:]):
        assert len(d) == len(d_whole) and (i == i_whole).all()
        np.testing.assert_allclose(d, d_whole, rtol=1e-6)
    assert (blocked[2][1] == np.arange(11)).all()          # each image is its own nearest


# ------------------------------------------------------------------ stages and report


def stub_features(arrays, count, weights, batch_size, device, desc):
    """9-d features of uint8 images (channel means, stds, brightness range, left half
    minus right half): no Inception. The last one changes sign with a mirror image, so
    mirrored images have their own features, as with Inception.

    Stands in for `reference._features` so the wiring test runs in seconds; FID's
    sqrtm of an 8×8 matrix is instant.
    """
    rows = []
    for batch in arrays:
        x = batch.astype(np.float64) / 255
        rows.append(np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)),
                                    x.mean(axis=3).max(axis=(1, 2))[:, None],
                                    x.mean(axis=3).min(axis=(1, 2))[:, None],
                                    (x[:, :, :x.shape[2] // 2].mean(axis=(1, 2, 3))
                                     - x[:, :, x.shape[2] // 2:].mean(axis=(1, 2, 3)))[:, None]],
                                   axis=1))
    return np.concatenate(rows)


def brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    """Kynkäänniemi et al.'s precision/recall and Naeem et al.'s density/coverage from
    the full distance matrices (the k-th neighbour radius skips the point itself).

    A ball holds the points at distance ≤ its radius. A sample that copies a real point
    is at exactly a radius from that point's neighbours; the radii are widened by 1e-9
    relative so such ties count as inside whatever order the sums were taken in.
    """
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_real = np.sort(dist(real, real), axis=1)[:, k] * (1 + 1e-9)
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k] * (1 + 1e-9)
    fake_real = dist(fake, real)                           # [M, N]
    inside = (fake_real <= r_real[None, :]).sum(axis=1)
    return {"precision": (inside > 0).mean(),
            "recall": (fake_real.T <= r_fake[None, :]).any(axis=1).mean(),
            "density": inside.mean() / k,
            "coverage": (fake_real.min(axis=0) <= r_real).mean()}


@pytest.fixture(scope="module")
def scored(tmp_path_factory, standin_inception):
    """fid_ref + fid on a tiny prepared demo set and 'samples' that are holdout-like faces
    plus two training copies and a mirrored one, with stub features; then the report."""
    root = tmp_path_factory.mktemp("scored")
    prepared = tiny.prepared(root / "data", n=64)
    train = np.concatenate(list(reference.prepared_arrays(prepared, "train")))
    generated = np.concatenate([demo_faces(500, 517, tiny.IMG), train[:2],   # 20 "samples"
                                train[5:6, :, ::-1]])
    samples = root / "samples"
    samples.mkdir()
    np.save(samples / "shard-00000.npy", generated)
    manifest = {"n": len(generated), "shards": ["shard-00000.npy"], "nfe": 10,
                "sample": {"sampler": "ddim", "steps": 10, "eta": 0.0, "use_ema": True}}
    (samples / "manifest.json").write_text(json.dumps(manifest))
    # max_real keeps 30 of the ~57 training images, memorisation_train = 0 searches all.
    fid = FidConfig(splits=4, kid_subsets=10, kid_subset_size=10, max_real=30,
                    memorisation_train=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reference, "_features", stub_features)
        patch.setattr(score, "_features", stub_features)   # score.py's own name for it
        reference.reference_statistics(prepared, root / "fid_ref/stats.npz", split="train",
                                       weights="", batch_size=8, max_real=fid.max_real,
                                       memorisation_train=fid.memorisation_train)
        metrics = score.score_samples(samples, root / "fid_ref/stats.npz",
                                      root / "metrics/fid.json", fid=fid,
                                      prepared_dir=prepared,
                                      figures_dir=root / "memorisation")
    outputs = RunOutputs(prepared=prepared, models=root / "models", live=root / "dvclive",
                         samples=samples, fid=root / "metrics/fid.json",
                         analysis=root / "analysis", memorisation=root / "memorisation")
    report = build_report(Params(), outputs, root / "reports/report.md")
    return root, metrics, report


def test_fid_ref_keeps_capped_features_of_both_splits(scored):
    root, _, _ = scored
    meta = json.loads((root / "fid_ref/stats.json").read_text())
    with np.load(root / "fid_ref/features.npz") as f:
        assert len(f["train"]) == 30 == len(f["train_index"])    # capped by max_real
        assert f["train_index"][0] == 0 and f["train_index"][-1] == meta["splits"]["train"]["n"] - 1
        assert len(f["holdout"]) == meta["splits"]["holdout"]["n"] < 30   # all of them
        assert f["train"].dtype == np.float32
        # The memorisation check's: every training image (memorisation_train = 0), and its
        # mirror image, as float16; the kept ones have the features the cap kept.
        n_train = meta["splits"]["train"]["n"]
        assert (f["memorisation_train_index"] == np.arange(n_train)).all()
        assert f["memorisation_train"].shape == f["memorisation_train_flipped"].shape
        assert f["memorisation_train"].dtype == np.float16
        assert len(f["memorisation_train"]) == n_train
        np.testing.assert_allclose(f["memorisation_train"][f["train_index"]], f["train"],
                                   rtol=1e-3, atol=1e-3)
        assert meta["memorisation"] == {"memorisation_train": 0, "train": n_train,
                                        "train_flipped": n_train}
        # The mirror images' features are their own (the left-right feature changes sign);
        # μ is that of the kept images unflipped.
        side = f["memorisation_train"][:, -1].astype(float)
        np.testing.assert_allclose(f["memorisation_train_flipped"][:, -1], -side, atol=1e-3)
        assert np.abs(side).max() > 0.02
        mu, _ = load_statistics(root / "fid_ref/stats.npz")
        np.testing.assert_allclose(mu, f["train"].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_fid_metrics_hold_every_new_number_with_its_n(scored):
    root, metrics, _ = scored
    assert json.loads((root / "metrics/fid.json").read_text()) == metrics
    assert metrics["fid_blocks"]["k"] == 4 and metrics["fid_blocks"]["block_n"] == 5
    assert metrics["kid"]["subset_size"] == 10 and metrics["kid"]["n_reference"] == 30
    # Precision/recall/density/coverage of the 20 samples against a seeded 20 of the 30
    # kept real features (equal N), recomputed here by brute force from their definitions.
    with np.load(root / "fid_ref/features.npz") as f:
        real = f["train"].astype(np.float64)
    real = real[np.sort(np.random.default_rng(0).choice(len(real), 20, replace=False))]
    fake = stub_features([np.load(root / "samples/shard-00000.npy")], 20, "", 8, "cpu", "")
    fake = fake.astype(np.float32).astype(np.float64)   # the float32 the real ones are kept in
    expected = brute_force_precision_recall(real, fake, k=3)
    pr = metrics["precision_recall"]
    assert pr["n_reference"] == pr["n_generated"] == 20
    for name, value in expected.items():
        assert pr[name] == pytest.approx(value, abs=1e-4), name   # fid.json keeps 4 digits
    memorised = metrics["memorisation"]
    n_train = json.loads((root / "fid_ref/stats.json").read_text())["splits"]["train"]["n"]
    assert memorised["n_generated"] == 20
    assert memorised["n_train"] == memorised["n_train_flipped"] == n_train > 30
    # Samples 17 and 18 are copies of training images 0 and 1 (image 1 is not among the
    # 30 max_real keeps: memorisation_train = 0 searches it), sample 19 training image 5
    # mirrored: each found at distance 0, in both spaces, and flagged.
    nearest = pd.read_csv(root / "memorisation/nearest.csv")
    assert len(nearest) == 20
    copies = nearest.iloc[-3:]
    for name in ("cosine", "pixel"):
        assert copies[f"{name}_train_index"].tolist() == [0, 1, 5], name
        assert copies[f"{name}_flipped"].tolist() == [False, False, True], name
        assert (copies[f"{name}_distance"] == 0).all() and copies[f"{name}_flagged"].all()
        assert memorised[f"flagged_{name}"] >= 3
        assert memorised[f"copying_evidence_{name}"] == (
            memorised[f"flagged_{name}"] > memorised["null_upper_count"])
    assert 0 < memorised["null_rate"] < memorised["null_upper"] <= 1
    for name in ("distances.png", "closest_pairs.png"):
        assert (root / "memorisation" / name).stat().st_size > 1000, name


def test_report_shows_every_metric_with_its_spread_and_the_grid(scored):
    root, m, report = scored
    kid, se = m["kid"], m["fid_se"]
    assert f"**{fmt(m['fid'])}** ± {fmt(se['bootstrap'])} (bootstrap, 50 draws)" in report
    assert f"**{fmt(kid['full_x1e3'])}** ± {fmt(kid['se_bootstrap_x1e3'])}" in report
    assert f"| {pm(kid['mean_x1e3'], kid['std_x1e3'])} |" in report    # ×10³, never raw
    assert f"**{fmt(m['swd']['mean_x1e3'])}** (16 px " in report
    assert pm(m["fid_blocks"]["mean"], m["fid_blocks"]["sd"]) in report
    assert "4 disjoint blocks of 5 samples" in report
    assert "20 generated vs 30 real" in report
    assert "equal N: seeded subset of the larger set; 20 generated vs 20 real" in report
    mem = m["memorisation"]
    assert (f"**{mem['flagged_cosine']} / {mem['flagged_pixel']}** of 20; chance allows up "
            f"to {mem['null_upper_count']} (99% bound") in report
    assert "NLL upper bound" in report and "not computed in this run" in report  # no analysis
    for link in ("figures/memorisation_distances.png", "figures/closest_pairs.png"):
        assert f"]({link})" in report and (root / "reports" / link).is_file(), link


def test_features_from_an_older_fid_ref_are_refused_in_one_line(scored, tmp_path):
    root, _, _ = scored
    from ddpm.errors import DdpmError
    from ddpm.metrics.real_features import load_real_features

    with pytest.raises(DdpmError, match="rerun the fid_ref stage"):
        load_real_features(tmp_path / "features.npz")
    np.savez(tmp_path / "old.npz", mu=np.zeros(2))
    with pytest.raises(DdpmError, match="not fid_ref features"):
        load_real_features(tmp_path / "old.npz")
    # Made before the memorisation check searched flipped images: rerun fid_ref.
    with np.load(root / "fid_ref/features.npz") as f:
        np.savez(tmp_path / "unflipped.npz", **{k: f[k] for k in f.files
                                                if not k.startswith("memorisation_")})
    with pytest.raises(DdpmError, match="before the memorisation check searched flipped "
                                        r"training images; rerun the fid_ref stage") as error:
        load_real_features(tmp_path / "unflipped.npz")
    assert "\n" not in str(error.value)


def test_compare_table_shows_the_new_metrics_with_their_spread(scored):
    from ddpm.reporting.compare import _flatten, markdown_table

    root, _, _ = scored
    metrics = _flatten(json.loads((root / "metrics/fid.json").read_text()))
    rows = [{"name": "a", "rev": "0" * 40, "params": {"x": 1}, "metrics": metrics},
            {"name": "b", "rev": "1" * 40, "params": {"x": 2}, "metrics": {"fid": 3.0}}]
    table = markdown_table(rows)
    header = table.splitlines()[0]
    for column in ("fid ± bootstrap", "fid_blocks.mean ± sd",
                   "kid.full_x1e3 ± se_bootstrap_x1e3", "swd.mean_x1e3",
                   "precision_recall.precision", "precision_recall.recall",
                   "memorisation.fraction_cosine", "n_generated"):
        assert column in header, column
    assert "kid.mean" not in header   # the raw subset mean gave way to KID ×10³
    a = table.splitlines()[2]
    assert f"{metrics['fid']:.4g} ± {metrics['fid_se.bootstrap']:.4g}" in a
    assert f"{metrics['kid.full_x1e3']:.4g} ± {metrics['kid.se_bootstrap_x1e3']:.4g}" in a
    assert f"{metrics['fid_blocks.mean']:.4g} ± {metrics['fid_blocks.sd']:.4g}" in a
    assert table.splitlines()[3].count("–") == 7    # b has only the full-N FID


def test_bad_sample_counts_stop_in_one_line_before_inception_runs(scored):
    from ddpm.errors import DdpmError
    from ddpm.metrics.sample_scores import check_inputs

    root, _, _ = scored
    check_inputs(root / "fid_ref/stats.npz", 8, FidConfig(splits=4))   # 4 blocks of 2: fine
    with pytest.raises(DdpmError, match="fid.splits = 4: 7 samples give blocks of 1"):
        check_inputs(root / "fid_ref/stats.npz", 7, FidConfig(splits=4))


def test_fid_metrics_hold_standard_errors_kid_x1e3_equal_n_and_swd(scored):
    # 20 generated against 30 reference images (stub 8-d features, 16 px pixels).
    _, m, _ = scored
    se, kid, pr, swd = m["fid_se"], m["kid"], m["precision_recall"], m["swd"]
    assert se["draws"] == kid["draws"] == FidConfig().bootstrap == 50
    assert se["groups"] == kid["groups"] == 20
    assert se["bootstrap"] > 0 and se["jackknife"] > 0
    assert (se["n_generated"], se["n_reference"]) == (20, 30)
    assert kid["mean_x1e3"] == pytest.approx(1e3 * kid["mean"], abs=1e-3)
    assert kid["std_x1e3"] == pytest.approx(1e3 * kid["std"], abs=1e-3)
    assert kid["se_bootstrap_x1e3"] > 0 and kid["se_jackknife_x1e3"] > 0
    assert np.isfinite(kid["full_x1e3"])
    assert pr["n_generated"] == pr["n_reference"] == 20       # a seeded subset of the 30
    assert list(swd["levels_x1e3"]) == ["16"] and swd["mean_x1e3"] > 0   # 16 px: one level
    assert (swd["n_generated"], swd["n_reference"]) == (20, 30)
