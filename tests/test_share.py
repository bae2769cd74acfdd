"""docs/scaling.md: share a run and an experiment through a DVC remote, as that page says.

A copy of the repository with tiny params runs only prepare and train (seconds),
pushes to a DVC remote on a local folder and a bare git repository as `origin`,
and a fresh clone pulls both back. The commands are docs/scaling.md's, in its order.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import tiny
from ddpm.reporting.config import params_from_dict

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # runs DVC and trains: about 50 s on a busy 2-core CPU
COPIED = ("ddpm", "stages", "demo", "dvc.yaml", ".gitignore", ".dvcignore")
TINY = tiny.raw_params(data={"demo_size": 24},
                       train={"max_steps": 2, "val_every": 2, "sample_every": 2,
                              "checkpoint_every": 2, "val_images": 4})
OUTPUTS = ("data/prepared/manifest.json", "models/ema.safetensors", "models/config.json")


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def new_project(root: Path) -> Path:
    """The pipeline's code, tiny params, committed to git (branch main) with DVC set up."""
    project = root / "project"
    project.mkdir()
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, project / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, project / name)
    full = dataclasses.asdict(params_from_dict(TINY))   # dvc.yaml templating needs every key
    (project / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], project)
    run(["dvc", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "tiny project"], project)
    return project


def test_push_pull_a_run_and_an_experiment_through_a_dvc_remote(tmp_path):
    project = new_project(tmp_path)
    run(["git", "init", "-q", "--bare", "-b", "main", str(tmp_path / "origin.git")], tmp_path)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    run(["dvc", "repro", "train"], project)
    assert (project / "mlruns").is_dir()                   # train's out, empty without mlflow

    # The README's recipe, step by step.
    run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store")], project)
    run(["git", "add", "-A"], project)     # .dvc/config, dvc.lock, dvclive/ metrics
    run(["git", "commit", "-qm", "tiny run"], project)
    run(["git", "push", "-q", "origin", "main"], project)
    run(["dvc", "push"], project)

    run(["git", "clone", "-q", str(tmp_path / "origin.git"), "clone"], tmp_path)
    clone = tmp_path / "clone"
    run(["dvc", "pull", "--with-deps", "train"], clone)   # what this run made: data, model
    for path in OUTPUTS:
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path
    # Not shared, on purpose (out of the cache and git): the resume state and MLflow's store.
    # Their absence makes train look changed in the clone (the README says so).
    status = run(["dvc", "status", "train"], clone)
    assert {line.split()[-1] for line in status.splitlines() if "deleted:" in line} == \
        {"state/train", "mlruns"}
    main_weights = (clone / "models" / "ema.safetensors").read_bytes()

    # An experiment: run it, push it (git refs to origin, outputs to the DVC remote), pull
    # it into the clone and check it out there as a branch. (`dvc exp apply` would check
    # out every stage's outputs, and this run has only prepare's and train's.)
    run(["dvc", "exp", "run", "train", "-n", "lr-2e-3", "-S", "train.lr=0.002"], project)
    run(["dvc", "exp", "push", "origin", "lr-2e-3"], project)
    run(["dvc", "exp", "pull", "origin", "lr-2e-3"], clone)
    assert run(["dvc", "exp", "list", "--name-only"], clone).split() == ["lr-2e-3"]
    run(["dvc", "exp", "branch", "lr-2e-3", "lr-2e-3"], clone)
    run(["git", "checkout", "-q", "lr-2e-3"], clone)
    run(["dvc", "checkout", "train"], clone)
    assert yaml.safe_load((clone / "params.yaml").read_text())["train"]["lr"] == 0.002
    weights = "models/ema.safetensors"
    assert (clone / weights).read_bytes() == (project / weights).read_bytes()
    assert (clone / weights).read_bytes() != main_weights   # it is the experiment's model

