"""`ddpm compare` on a `dvc exp show --json` document built here (no DVC, no git)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ddpm.errors import DdpmError
import ddpm.reporting.compare as compare_module
from ddpm.reporting.compare import compare, experiment_rows, markdown_table


def entry(rev: str, name: str | None, schedule: str, fid: float, se: float | None) -> dict:
    """One commit or experiment as `dvc exp show --json` nests it."""
    fid_json = {"fid": fid, "n_generated": 200, **({"fid_se": {"bootstrap": se}} if se else {})}
    return {"rev": rev, "name": name, "data": {
        "params": {"params.yaml": {"data": {"diffusion": {"schedule": schedule},
                                             "train": {"lr": 2e-4}}}},
        "metrics": {"metrics/fid.json": {"data": fid_json},
                    "analysis/metrics.json": {"data": {"timestep_loss": {"loss_q1": 0.25}}}}}}


SHOWN = [
    {"rev": "workspace", "data": entry("workspace", None, "cosine", 1.0, 0.1)["data"]},
    {**entry("a" * 40, "main", "cosine", 120.5, 20.25), "experiments": [
        {"revs": [entry("b" * 40, "exp-linear", "linear", 98.25, None)]},
        {"revs": [{"rev": "c" * 40, "name": "exp-failed", "data": {}}]}]},
]


def test_rows_are_each_commit_and_experiment_with_flat_keys():
    rows = experiment_rows(SHOWN)
    assert [(r["name"], r["rev"][0]) for r in rows] == [("main", "a"), ("exp-linear", "b")]
    assert rows[1]["params"] == {"diffusion.schedule": "linear", "train.lr": 2e-4}
    assert rows[0]["metrics"]["fid_se.bootstrap"] == 20.25
    assert rows[0]["metrics"]["timestep_loss.loss_q1"] == 0.25


def test_table_shows_only_differing_params_and_values_with_their_spread():
    table = markdown_table(experiment_rows(SHOWN))
    header, rule, main, linear = table.splitlines()
    assert "`diffusion.schedule`" in header and "train.lr" not in header
    assert "fid ± bootstrap" in header and "timestep_loss.loss_q1" in header
    assert main.startswith("| main | aaaaaaa | cosine | 120.5 ± 20.25 |")
    assert linear.startswith("| exp-linear | bbbbbbb | linear | 98.25 |")  # no SE: none shown
    assert rule.count("---") == header.count("|") - 1


def test_compare_writes_the_table_overlay_and_grids(tmp_path, monkeypatch):
    curve = pd.DataFrame({"t": [0, 500, 999], "loss_mean": [0.5, 0.05, 0.01]})
    grid = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(grid, "png")
    files = {compare_module.CURVE: curve.to_csv(index=False).encode(),
             compare_module.GRID: grid.getvalue()}
    monkeypatch.setattr(compare_module, "_exp_show", lambda repo, rev="": SHOWN)
    monkeypatch.setattr(compare_module, "_git_show", lambda repo, rev, path: files.get(path))
    text = compare(tmp_path, tmp_path / "out" / "experiments.md", prefix="exp-")
    assert "| exp-linear |" in text and "| main |" not in text            # the prefix
    assert (tmp_path / "out" / "experiments.md").read_text() == text
    with Image.open(tmp_path / "out" / "experiments-timestep-loss.png") as figure:
        assert np.asarray(figure.convert("L")).std() > 5
    assert (tmp_path / "out/experiments-samples/exp-linear.png").read_bytes() == grid.getvalue()
    assert '<img src="experiments-samples/exp-linear.png"' in text


def test_no_experiments_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "_exp_show", lambda repo, rev="": SHOWN[:1])
    with pytest.raises(DdpmError, match="no experiments yet; run `dvc exp run` first"):
        compare(tmp_path, tmp_path / "experiments.md")
    assert not (tmp_path / "experiments.md").exists()
