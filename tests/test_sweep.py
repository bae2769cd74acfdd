"""The FID sweep: its points, its FIDs against pytorch-fid's and their standard errors,
plot and report table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pytorch_fid.fid_score import calculate_frechet_distance

import tiny
from ddpm.errors import ConfigError, DdpmError
import ddpm.evaluation.sweep as sweep_module
from ddpm.evaluation.sweep import plot_sweep, sweep_label, sweep_points
from ddpm.metrics.fid import feature_statistics, save_statistics
from ddpm.metrics.real_features import save_real_features
from ddpm.metrics.resampling import standard_errors
from ddpm.reporting.report import _sweep_table
from ddpm.sampling.config import SampleConfig


def test_sweep_points_are_every_sampler_at_every_step_count_with_its_nfe():
    assert sweep_points(["ddim", "dpmpp_2m"], [5, 10, 20], 1000) == [
        ("ddim", 5, 5), ("ddim", 10, 10), ("ddim", 20, 20),
        ("dpmpp_2m", 5, 5), ("dpmpp_2m", 10, 10), ("dpmpp_2m", 20, 20)]
    # DDPM takes no steps: one point at T; repeats are dropped, order kept.
    assert sweep_points(["unipc", "ddpm", "unipc"], [10, 10], 1000) == [
        ("unipc", 10, 10), ("ddpm", None, 1000)]
    with pytest.raises(ConfigError, match=r"^sample\.sweep_samplers = \[\]"):
        sweep_points([], [10], 1000)
    with pytest.raises(ConfigError, match=r"^sample\.sweep_steps = \[\]"):
        sweep_points(["ddim"], [], 1000)
    with pytest.raises(ConfigError, match=r"^sample\.sampler = 'euler': unknown sampler"):
        sweep_points(["euler"], [10], 1000)


TABLE = pd.DataFrame([
    {"sampler": "ddim", "steps": 5, "nfe": 5, "spacing": "uniform", "eta": 0.0, "n": 100,
     "fid": 310.5},
    {"sampler": "ddim", "steps": 10, "nfe": 10, "spacing": "uniform", "eta": 0.0, "n": 100,
     "fid": 250.25},
    {"sampler": "dpmpp_2m", "steps": 5, "nfe": 5, "spacing": "logsnr", "eta": None, "n": 100,
     "fid": 260.0},
    {"sampler": "dpmpp_2m", "steps": 10, "nfe": 10, "spacing": "logsnr", "eta": None,
     "n": 100, "fid": 240.125},
    {"sampler": "ddpm", "steps": None, "nfe": 1000, "spacing": "", "eta": None, "n": 100,
     "fid": 230.0},
]).astype({"steps": "Int64"})


def test_plot_has_one_line_per_sampler_and_the_report_shows_the_table(tmp_path):
    assert [sweep_label(row) for row in TABLE.iloc[[0, 2, 4]].to_dict("records")] == [
        "ddim, uniform spacing, eta 0.0", "dpmpp_2m, logsnr spacing", "ddpm"]
    plot_sweep(TABLE, tmp_path / "fid_vs_steps.png")
    assert Image.open(tmp_path / "fid_vs_steps.png").size[0] > 300
    with_errors = TABLE.assign(n_reference=300, fid_se_bootstrap=None, fid_se_jackknife=4.5)
    assert sweep_module.sweep_error(with_errors) == ("fid_se_jackknife", "jackknife")
    assert sweep_module.sweep_error(with_errors.assign(fid_se_bootstrap=5.0)) == \
        ("fid_se_bootstrap", "bootstrap")
    assert sweep_module.sweep_error(TABLE) == (None, "")   # a sweep from before the SEs
    plot_sweep(with_errors, tmp_path / "with_errors.png")
    assert Image.open(tmp_path / "with_errors.png").size[0] > 300
    TABLE.to_csv(tmp_path / "fid_vs_steps.csv", index=False)  # as fid_sweep writes it
    lines = _sweep_table(tmp_path / "fid_vs_steps.csv")
    assert lines[0] == "| sampler | steps | NFE | spacing | eta | FID (100 samples) |"
    assert lines[2:] == ["| ddim | 5 | 5 | uniform | 0.0 | 310.5 |",
                         "| ddim | 10 | 10 | uniform | 0.0 | 250.2 |",
                         "| dpmpp_2m | 5 | 5 | logsnr | – | 260 |",
                         "| dpmpp_2m | 10 | 10 | logsnr | – | 240.1 |",
                         "| ddpm | – | 1000 | – | – | 230 |", ""]
    assert _sweep_table(tmp_path / "absent.csv") == []


def test_sweep_fids_equal_pytorch_fids_of_the_same_features(tmp_path, monkeypatch):
    # The sweep scores each point with the eigenvalue form of the Fréchet distance
    # (ddpm.metrics.fid_spread); it must give pytorch-fid's number for the same
    # features. Stub 12-d features stand in for Inception, so sqrtm is instant here.
    models = tiny.untrained_model(tmp_path / "models")
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 12)) @ rng.normal(size=(12, 12)) / 4 + 0.3
    mu_r, sigma_r = write_reference(tmp_path / "ref.npz", reference)
    projection = rng.normal(size=(tiny.IMG * tiny.IMG * 3, 12)) / 300
    scored = []

    def stub_features(batches, model, device="cpu", progress=None):
        rows = [batch.reshape(len(batch), -1) / 255 @ projection for batch in batches]
        scored.append(np.concatenate(rows))
        return scored[-1]

    monkeypatch.setattr(sweep_module, "load_inception", lambda weights, device: None)
    monkeypatch.setattr(sweep_module, "inception_features", stub_features)
    sample = SampleConfig(n=10, steps=3, batch_size=4, accelerator="cpu")
    table = sweep_module.fid_sweep(models, tmp_path / "ref.npz", tmp_path / "sweep", sample,
                                   ["ddim", "unipc"], [2, 3], 10, weights="stub", batch_size=4,
                                   bootstrap=20)
    assert len(table) == len(scored) == 4
    for fid, features in zip(table["fid"], scored):
        theirs = calculate_frechet_distance(*feature_statistics(features), mu_r, sigma_r)
        assert fid == pytest.approx(theirs, rel=1e-6, abs=1e-3)
    # Each point's standard errors: resampling's, of these features against the cached
    # reference features, and in the CSV the report reads.
    written = pd.read_csv(tmp_path / "sweep/fid_vs_steps.csv")
    assert (written["n_reference"] == 50).all()
    for row, features in zip(written.to_dict("records"), scored):
        expected = standard_errors("fid", features, reference, 20)
        assert row["fid_se_bootstrap"] == pytest.approx(expected["se_bootstrap"], abs=1e-4)
        assert row["fid_se_jackknife"] == pytest.approx(expected["se_jackknife"], abs=1e-4)
        for se in (row["fid_se_bootstrap"], row["fid_se_jackknife"]):
            assert 0 < se < row["fid"]


def write_reference(stats_npz, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ, Σ of `reference` and its features cached beside them, as fid_ref writes them."""
    mu, sigma = feature_statistics(reference)
    save_statistics(stats_npz, mu, sigma, {"n": len(reference), "split": "train"})
    index = np.arange(len(reference))
    save_real_features(stats_npz.with_name("features.npz"),
                       {"train": reference, "holdout": reference[:3]},
                       {"train": index, "holdout": index[:3]},
                       {"features": reference[:2], "features_flipped": reference[:2],
                        "index": index[:2]})
    return mu, sigma


def test_sweep_without_matching_reference_features_stops_before_sampling(tmp_path):
    """Reference features of another fid_ref run (or none): one line, before any sampling."""
    models = tiny.untrained_model(tmp_path / "models")
    reference = np.random.default_rng(0).normal(size=(20, 4))
    write_reference(tmp_path / "ref.npz", reference)
    sweep = dict(sample=SampleConfig(n=4, steps=2, batch_size=4, accelerator="cpu"),
                 samplers=["ddim"], steps_list=[2], weights="stub", batch_size=4,
                 bootstrap=0)
    mu, sigma = feature_statistics(reference[:10])
    save_statistics(tmp_path / "ref.npz", mu, sigma, {"n": 10, "split": "train"})
    with pytest.raises(DdpmError, match=r"20 reference features but ref\.json says μ, Σ are "
                                        r"of 10; rerun the fid_ref stage"):
        sweep_module.fid_sweep(models, tmp_path / "ref.npz", tmp_path / "sweep", n=4, **sweep)
    (tmp_path / "features.npz").unlink()
    with pytest.raises(DdpmError, match="reference features not found"):
        sweep_module.fid_sweep(models, tmp_path / "ref.npz", tmp_path / "sweep", n=4, **sweep)
    write_reference(tmp_path / "ref.npz", reference)
    with pytest.raises(ConfigError, match="need at least 3 samples"):
        sweep_module.fid_sweep(models, tmp_path / "ref.npz", tmp_path / "sweep", n=2, **sweep)
    assert not (tmp_path / "sweep").exists()
