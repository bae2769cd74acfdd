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
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

import tiny
from ddpm import evaluation
from ddpm.config import FidConfig, Params
from ddpm.data.demo import draw_face
from ddpm.fid import inception_features, load_inception
from ddpm.metrics.kid import kernel_inception_distance
from ddpm.metrics.memorisation import flagged, memorisation, nearest_pixel
from ddpm.metrics.precision_recall import precision_recall
from ddpm.report import RunOutputs, build_report, pm

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
            "blurred": blurred.round().astype(np.uint8)}


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
    assert halves["precision"] >= 0.9 and halves["recall"] >= 0.9
    # Blurred faces (σ = 3 px of 32) leave the real manifold: precision and density fall
    # (stand-in features: about 1.0 → 0.8 and 1.1 → 0.7).
    blurred = precision_recall(features["train"], features["blurred"])
    assert blurred["precision"] <= halves["precision"] - 0.1
    assert blurred["density"] < 0.8 * halves["density"]


def test_memorisation_flags_copies_of_training_images(images, features):
    # 36 unseen faces and copies of 4 training faces: 10% copies. The unseen faces are
    # the holdout baseline too, so at most one of them (the 1st percentile) is flagged.
    copied = [3, 11, 22, 37]
    samples = {key: np.concatenate([source["other"][:HALF - 4], source["train"][copied]])
               for key, source in (("features", features), ("pixels", images))}
    holdout = {"features": features["other"], "pixels": images["other"]}
    train = {"features": features["train"], "pixels": images["train"]}
    metrics, nearest = memorisation(samples, holdout, train)
    for name in ("cosine", "pixel"):
        assert 0.1 <= metrics[f"fraction_{name}"] <= 0.1 + 1 / HALF, name
        assert nearest[f"{name}_index"][-4:].tolist() == copied, name
        assert (nearest[f"{name}_distance"][-4:] < 1e-5).all(), name


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
    """8-d features of uint8 images (channel means, stds, brightness range): no Inception.

    Stands in for `evaluation._features` so the wiring test runs in seconds; FID's
    sqrtm of an 8×8 matrix is instant.
    """
    rows = []
    for batch in arrays:
        x = batch.astype(np.float64) / 255
        rows.append(np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2)),
                                    x.mean(axis=3).max(axis=(1, 2))[:, None],
                                    x.mean(axis=3).min(axis=(1, 2))[:, None]], axis=1))
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, standin_inception):
    """fid_ref + fid on a tiny prepared demo set and 'samples' that are holdout-like faces
    plus two training copies, with stub features; then the report."""
    root = tmp_path_factory.mktemp("scored")
    prepared = tiny.prepared(root / "data", n=64)
    train = np.concatenate(list(evaluation.prepared_arrays(prepared, "train")))
    generated = np.concatenate([demo_faces(500, 518, tiny.IMG), train[:2]])  # 20 "samples"
    samples = root / "samples"
    samples.mkdir()
    np.save(samples / "shard-00000.npy", generated)
    manifest = {"n": len(generated), "shards": ["shard-00000.npy"], "nfe": 10,
                "sample": {"sampler": "ddim", "steps": 10, "eta": 0.0, "use_ema": True}}
    (samples / "manifest.json").write_text(json.dumps(manifest))
    fid = FidConfig(splits=4, kid_subsets=10, kid_subset_size=10, max_real=30)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "_features", stub_features)
        evaluation.reference_statistics(prepared, root / "fid_ref/stats.npz", split="train",
                                        weights="", batch_size=8, max_real=fid.max_real)
        metrics = evaluation.score_samples(samples, root / "fid_ref/stats.npz",
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


def test_fid_metrics_hold_every_new_number_with_its_n(scored):
    root, metrics, _ = scored
    assert json.loads((root / "metrics/fid.json").read_text()) == metrics
    assert metrics["fid_blocks"]["k"] == 4 and metrics["fid_blocks"]["block_n"] == 5
    assert metrics["kid"]["subset_size"] == 10 and metrics["kid"]["n_reference"] == 30
    assert {"precision", "recall", "density", "coverage"} <= set(metrics["precision_recall"])
    memorised = metrics["memorisation"]
    assert memorised["n_generated"] == 20 and memorised["n_train"] == 30
    # Sample 18 is a copy of training image 0, which max_real always keeps (image 1, the
    # other copy, is dropped by the cap: every other of ~57 images is kept).
    nearest = (root / "memorisation/nearest.csv").read_text().splitlines()
    assert nearest[-2].split(",")[2] == "0" and nearest[-2].split(",")[4] == "0"
    assert memorised["fraction_pixel"] >= 1 / 20
    for name in ("distances.png", "closest_pairs.png"):
        assert (root / "memorisation" / name).stat().st_size > 1000, name


def test_report_shows_every_metric_with_its_spread_and_the_grid(scored):
    root, m, report = scored
    assert f"**{pm(m['kid']['mean'], m['kid']['std'])}**" in report
    assert pm(m["fid_blocks"]["mean"], m["fid_blocks"]["sd"]) in report
    assert "4 disjoint blocks of 5 samples" in report
    assert "20 generated vs 30 real" in report
    assert "precision / recall" in report and "memorised fraction" in report
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


def test_compare_table_shows_the_new_metrics_with_their_spread(scored):
    from ddpm.compare import _flatten, markdown_table

    root, _, _ = scored
    metrics = _flatten(json.loads((root / "metrics/fid.json").read_text()))
    rows = [{"name": "a", "rev": "0" * 40, "params": {"x": 1}, "metrics": metrics},
            {"name": "b", "rev": "1" * 40, "params": {"x": 2}, "metrics": {"fid": 3.0}}]
    table = markdown_table(rows)
    header = table.splitlines()[0]
    for column in ("fid_blocks.mean ± sd", "kid.mean ± std", "precision_recall.precision",
                   "precision_recall.recall", "memorisation.fraction_cosine", "n_generated"):
        assert column in header, column
    a = table.splitlines()[2]
    assert f"{metrics['kid.mean']:.4g} ± {metrics['kid.std']:.4g}" in a
    assert f"{metrics['fid_blocks.mean']:.4g} ± {metrics['fid_blocks.sd']:.4g}" in a
    assert table.splitlines()[3].count("–") == 6    # b has only the full-N FID


def test_bad_sample_counts_stop_in_one_line_before_inception_runs(scored):
    from ddpm.errors import DdpmError
    from ddpm.metrics.sample_scores import check_inputs

    root, _, _ = scored
    check_inputs(root / "fid_ref/stats.npz", 8, FidConfig(splits=4))   # 4 blocks of 2: fine
    with pytest.raises(DdpmError, match="fid.splits = 4: 7 samples give blocks of 1"):
        check_inputs(root / "fid_ref/stats.npz", 7, FidConfig(splits=4))
