"""The report's training section: what each loss is called, and old runs without train/mse."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from ddpm.config import DiffusionConfig, Params
from ddpm.report import RunOutputs, build_report

LOSS, MSE, VAL = 0.0115, 0.0521, 0.0767


def fake_live(root: Path, with_mse: bool = True) -> Path:
    """A DVCLive folder as the train stage writes it: per-step TSVs and the summary."""
    live = root / "dvclive"
    (live / "plots/metrics/train").mkdir(parents=True)
    (live / "plots/metrics/val").mkdir(parents=True)
    steps = range(9, 600, 10)
    (live / "plots/metrics/train/loss.tsv").write_text(
        "step\tloss\n" + "".join(f"{s}\t{LOSS * 600 / (s + 1) ** 0.5 / 24.5}\n" for s in steps))
    train = {"loss": LOSS, "images_per_s": 100.0, "time_s": 160.0}
    if with_mse:
        (live / "plots/metrics/train/mse.tsv").write_text(
            "step\tmse\n" + "".join(f"{s}\t{MSE * 600 / (s + 1) ** 0.5 / 24.5}\n" for s in steps))
        train["mse"] = MSE
    (live / "plots/metrics/val/loss.tsv").write_text(
        "step\tloss\n" + "".join(f"{s}\t{VAL * 600 / s}\n" for s in (200, 400, 600)))
    (live / "metrics.json").write_text(json.dumps({"train": train, "val": {"loss": VAL}}))
    return live


def report(root: Path, diffusion: DiffusionConfig = DiffusionConfig(),
           with_mse: bool = True) -> str:
    outputs = RunOutputs(prepared=root / "data", models=root / "models",
                         live=fake_live(root, with_mse), samples=root / "samples",
                         fid=root / "metrics/fid.json", analysis=root / "analysis")
    params = dataclasses.replace(Params(), diffusion=diffusion)
    return build_report(params, outputs, root / "reports/report.md")


def rows(text: str) -> dict[str, str]:
    """The Metrics table as {metric: value}."""
    table = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return {cells[1].strip(): cells[2].strip() for line in table.splitlines()
            if len(cells := line.split("|")) == 4}


def figure_width(root: Path) -> int:
    with Image.open(root / "reports/figures/training_loss.png") as image:
        return image.width


def test_weighted_loss_and_the_comparable_mse_pair_are_named_for_what_they_are(tmp_path):
    text = report(tmp_path)   # the defaults: v-prediction, min-SNR γ = 5
    table = rows(text)
    assert table["final training loss (min-SNR-weighted v-MSE, γ = 5; what training "
                 "minimises; last logged step)"] == "0.0115"
    assert table["final training MSE (unweighted v-MSE; raw weights; last logged step)"] \
        == "0.0521"
    assert table["validation MSE (unweighted v-MSE; EMA weights; fixed holdout images, "
                 "noise and t)"] == "0.0767"
    assert "per-pixel MSE, last logged step" not in text
    assert "Training minimises the min-SNR-weighted v-MSE, γ = 5" in text
    assert "](figures/training_loss.png)" in text
    assert figure_width(tmp_path) > 1200  # two panels: the comparable pair, the weighted loss


def test_a_run_without_train_mse_still_renders_and_says_so(tmp_path):
    """Runs from before train/mse was logged: the row says so, the figure still draws."""
    text = report(tmp_path, with_mse=False)
    table = rows(text)
    assert table["final training MSE (unweighted v-MSE; raw weights; last logged step)"] \
        == "not logged by this run"
    assert table["validation MSE (unweighted v-MSE; EMA weights; fixed holdout images, "
                 "noise and t)"] == "0.0767"
    assert "](figures/training_loss.png)" in text and "no training log" not in text
    assert figure_width(tmp_path) > 1200


@pytest.mark.parametrize("with_mse", [True, False])
def test_unweighted_training_loss_is_the_training_mse(tmp_path, with_mse):
    """loss_weighting none: train/loss is the MSE, so an old run's MSE row shows it; one panel."""
    text = report(tmp_path, DiffusionConfig(prediction="eps", loss_weighting="none"),
                  with_mse=with_mse)
    table = rows(text)
    assert table["final training loss (unweighted ε-MSE; what training minimises; "
                 "last logged step)"] == "0.0115"
    assert table["final training MSE (unweighted ε-MSE; raw weights; last logged step)"] \
        == ("0.0521" if with_mse else "0.0115")
    assert "validation MSE (unweighted ε-MSE;" in text
    assert "Training minimises" not in text
    assert figure_width(tmp_path) < 900  # one panel
