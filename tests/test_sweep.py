"""The FID sweep's points, plot and report table (the FIDs themselves: tests/test_pipeline.py)."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from ddpm.errors import ConfigError
from ddpm.evaluation import plot_sweep, sweep_label, sweep_points
from ddpm.report import _sweep_table


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
    TABLE.to_csv(tmp_path / "fid_vs_steps.csv", index=False)  # as fid_sweep writes it
    lines = _sweep_table(tmp_path / "fid_vs_steps.csv")
    assert lines[0] == "| sampler | steps | NFE | spacing | eta | FID (100 samples) |"
    assert lines[2:] == ["| ddim | 5 | 5 | uniform | 0.0 | 310.5 |",
                         "| ddim | 10 | 10 | uniform | 0.0 | 250.2 |",
                         "| dpmpp_2m | 5 | 5 | logsnr | – | 260 |",
                         "| dpmpp_2m | 10 | 10 | logsnr | – | 240.1 |",
                         "| ddpm | – | 1000 | – | – | 230 |", ""]
    assert _sweep_table(tmp_path / "absent.csv") == []
