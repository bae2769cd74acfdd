"""End to end: `dvc repro` and `dvc exp run` on a copy of this repository with tiny params.

One module-scoped repository runs the whole pipeline once; the tests then read
its outputs and run experiments in it. Uses the stand-in Inception weights
(tests/conftest.py), so FIDs here compare runs with each other only.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import tiny
from ddpm.reporting.config import params_from_dict
from ddpm.reporting.report import fmt

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# Top-level folders the pipeline writes: never copied from this checkout.
PIPELINE_OUTPUTS = {"data", "models", "samples", "fid_ref", "metrics", "memorisation", "sweep",
                    "analysis", "dvclive", "reports", "state", "autoencoder", "autoencoder_live",
                    "latents"}

TINY = tiny.raw_params(
    # The shipped zero-init: the pipeline trains the model as a user's run would.
    # latent_factor 4: the tiny UNet's two halvings need a 4×4 latent of a 16 px image. The
    # autoencoder keys take effect in the latent-space experiment only.
    model={"zero_init": True, "latent_factor": 4},
    autoencoder={"channels": [8, 16], "max_steps": 40, "batch_size": 8, "eval_images": 8,
                 "checkpoint_every": 20},
    train={"max_steps": 120, "val_every": 40, "sample_every": 60, "checkpoint_every": 60},
    sample={"n": 24, "steps": 10, "batch_size": 12, "shard_size": 12, "sweep_steps": [2, 5],
            "sweep_n": 12},
    fid={"batch_size": 32},
    analysis={"t_points": 40, "n_images": 8})


def run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory, standin_inception) -> Path:
    """A git + DVC copy of the repository's tracked files with tiny params, reproduced once."""
    root = tmp_path_factory.mktemp("project")
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        src = REPO / name
        if src.is_file() and name.split("/")[0] not in PIPELINE_OUTPUTS:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    # Every key spelled out: dvc.yaml's templating and params tracking need them all.
    full = dataclasses.asdict(params_from_dict(TINY))
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(args, root)
    run(["dvc", "repro"], root, timeout=1200)
    return root


def test_repro_writes_every_output_then_is_up_to_date(project):
    for path in ("data/prepared/manifest.json", "models/ema.safetensors", "models/config.json",
                 "samples/grid.png", "samples/trajectory.gif", "fid_ref/stats.npz",
                 "fid_ref/features.npz", "metrics/fid.json", "memorisation/closest_pairs.png", "sweep/fid_vs_steps.csv", "analysis/timestep_loss.csv",
                 "reports/report.md", "reports/figures/samples.png",
                 "reports/figures/training_loss.png", "reports/figures/timestep_loss.png"):
        assert (project / path).is_file(), path
    status = run(["dvc", "status"], project).stdout
    assert "up to date" in status
    again = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in again


def untrained_loss(project: Path) -> float:
    """The expected training loss of the untrained network, in closed form: zero-init makes
    it output 0, so its loss is E_t[w(t)·E‖v_t‖²] with E‖v_t‖² = ᾱ_t·E[ε²] + (1 − ᾱ_t)·E[x0²]
    per pixel (ε independent of x0) and w the min-SNR weight of the v target."""
    import torch
    from ddpm.data.prepared import PreparedImages
    from ddpm.diffusion.forward import min_snr_weight
    from ddpm.diffusion.schedules import NoiseSchedule
    from ddpm.io.images import to_unit_range
    config = params_from_dict(TINY)
    diffusion = config.diffusion
    assert (config.model.zero_init, diffusion.prediction, diffusion.loss_weighting) == \
        (True, "v", "min_snr")
    images = PreparedImages(project / "data/prepared", "train")
    second_moment = to_unit_range(torch.stack([images[i] for i in range(len(images))])) \
        .double().pow(2).mean()
    schedule = NoiseSchedule.from_name(diffusion.schedule, diffusion.timesteps)
    t = torch.arange(diffusion.timesteps)
    alpha_bar = schedule.alphas_cumprod[t].double()
    weight = min_snr_weight(schedule, t, "v", diffusion.min_snr_gamma).double()
    return float((weight * (alpha_bar + (1 - alpha_bar) * second_moment)).mean())


def test_training_loss_falls_and_metrics_are_reported(project):
    # Each logged value is one batch's loss, whose scale is set by the t it drew: the
    # first logged value (step 10) is no baseline; the untrained network's expectation is.
    # Seen: the last half's mean is 0.44× of it (the first three logged values: 0.50×).
    loss = pd.read_csv(project / "dvclive/plots/metrics/train/loss.tsv", sep="\t")["loss"]
    assert loss.iloc[len(loss) // 2:].mean() < 0.7 * untrained_loss(project)
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)[""]["data"]
    # What `dvc metrics show` (and so `dvc exp show`) reports is each stage's file, whole
    # but for null values, which DVC leaves out (fid.json's eta with a solver).
    def without_nulls(tree):
        return {k: without_nulls(v) if isinstance(v, dict) else v
                for k, v in tree.items() if v is not None}
    for path in ("dvclive/metrics.json", "metrics/fid.json", "analysis/metrics.json"):
        assert shown[path]["data"] == without_nulls(json.loads((project / path).read_text())), path
    fid, analysis = shown["metrics/fid.json"]["data"], shown["analysis/metrics.json"]["data"]
    assert fid["fid"] > 0 and fid["fid_se"]["bootstrap"] > 0 and fid["kid"]["n_reference"] > 0
    assert 0 <= fid["precision_recall"]["precision"] <= 1
    assert fid["memorisation"]["n_generated"] == TINY["sample"]["n"]
    assert analysis["likelihood"]["bits_per_dim"] > 0 and fid["swd"]["mean_x1e3"] > 0
    quarters = [analysis["timestep_loss"][f"loss_q{i}"] for i in range(1, 5)]
    assert min(quarters) <= analysis["timestep_loss"]["loss_mean"] <= max(quarters)


def test_report_is_filled_from_this_runs_outputs(project):
    report = (project / "reports/report.md").read_text()
    fid = json.loads((project / "metrics/fid.json").read_text())
    assert f"**{fmt(fid['fid'])}**" in report
    assert "STAND-IN" in report                         # stand-in weights are declared
    assert "not produced" not in report and "no training log" not in report
    assert "KID ×10³ (" in report and "precision / recall" in report
    assert "memorisation: samples flagged" in report and "sliced Wasserstein" in report
    assert f"**{fmt(fid['fid'])}** ± {fmt(fid['fid_se']['bootstrap'])} (bootstrap" in report
    bound = json.loads((project / "analysis/metrics.json").read_text())["likelihood"]
    assert f"**{fmt(bound['bits_per_dim'])}** ± {fmt(bound['bits_per_dim_se'])}" in report
    for link in ("figures/samples.png", "figures/trajectory.gif", "figures/training_loss.png",
                 "figures/timestep_loss.png", "figures/fid_vs_steps.png",
                 "figures/memorisation_distances.png", "figures/closest_pairs.png"):
        assert f"]({link})" in report, link
        with Image.open(project / "reports" / link) as figure:   # a picture, not a blank
            pixels = np.asarray(figure.convert("L"), dtype=float)
        assert min(pixels.shape) >= 32 and pixels.std() > 5, (link, pixels.shape, pixels.std())
    # The sweep: the default samplers at TINY's step counts, each row with its NFE, and
    # its table in the report.
    sweep = pd.read_csv(project / "sweep/fid_vs_steps.csv")
    assert list(zip(sweep["sampler"], sweep["steps"], sweep["nfe"])) == [
        ("ddim", 2, 2), ("ddim", 5, 5), ("unipc", 2, 2), ("unipc", 5, 5)]
    assert (sweep["fid"] > 0).all() and (sweep["n"] == 12).all()
    assert (sweep["fid_se_bootstrap"] > 0).all() and (sweep["fid_se_jackknife"] > 0).all()
    assert "| unipc | 5 | 5 | trailing | – |" in report
    assert "FID ± bootstrap SE (12 samples vs " in report


def test_timestep_loss_has_the_eps_prediction_shape_and_fixed_noise(project):
    table = pd.read_csv(project / "analysis/timestep_loss.csv")
    quarter = len(table) // 4
    assert table["loss_mean"].iloc[:quarter].mean() > table["loss_mean"].iloc[-quarter:].mean()
    before = (project / "analysis/timestep_loss.csv").read_bytes()
    run(["dvc", "repro", "-f", "timestep_loss"], project)
    assert (project / "analysis/timestep_loss.csv").read_bytes() == before


def test_experiments_run_show_compare_and_rerun_only_what_they_touch(project):
    # From the fixture's reproduced (pixel-space) workspace. Which stages a changed
    # sampler, FID or diffusion default re-runs (never the autoencoder nor encode) is
    # test_cache_scope's, checked with DVC's status in-process at a fraction of the cost;
    # here the experiment itself: run, show, compare. Latent space: the autoencoder
    # trains, the images are encoded, everything after runs on latents and the samples
    # are decoded; prepare and the FID reference are DVC's cached ones.
    output = run(["dvc", "exp", "run", "-n", "latent", "-S", "model.space=latent"], project,
                 timeout=900).stdout
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert {"autoencoder", "encode", "train", "generate", "report"} <= ran, output
    assert not ran & {"prepare", "fid_ref"}, output
    assert "reconstruction FID" in output and "autoencoder: holdout PSNR" in output
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    text = json.dumps(shown)
    assert '"latent"' in text
    assert '"psnr_db"' in text      # the autoencoder's metrics are columns of exp show
    # The workspace now holds the latent run: its report shows the autoencoder.
    report = (project / "reports/report.md").read_text()
    assert "## Autoencoder" in report and "](figures/reconstructions.png)" in report
    assert "reconstruction FID" in report and "in latent space [4, 4, 4]" in report
    out = project / "compare"
    run([sys.executable, "-m", "ddpm.cli", "compare", "--out", str(out / "experiments.md")],
        project)
    table = (out / "experiments.md").read_text()
    assert "latent" in table and "model.space" in table
    assert "fid" in table
    assert (out / "experiments-timestep-loss.png").is_file()
    # Each experiment's grid of generated samples, linked from its row.
    assert (out / "experiments-samples" / "latent.png").is_file()
    assert "experiments-samples/latent.png" in table


def test_a_second_repro_while_one_runs_stops_at_dvcs_lock_and_changes_nothing(project):
    from dvc.repo import Repo

    before = (project / "models" / "ema.safetensors").read_bytes()
    with Repo(str(project)).lock:                        # what a running `dvc repro` holds
        proc = subprocess.run(["dvc", "repro", "-f", "train"], cwd=project,
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Unable to acquire lock" in proc.stdout + proc.stderr
    assert (project / "models" / "ema.safetensors").read_bytes() == before
