"""Training on two CPU processes (gloo DDP): each rank its own draws, exact resume after
SIGKILL under `dvc repro`, and the same steps as one process accumulating two batches.

Every run trains the tiny UNet on 64 images, 8 per batch: two ranks take 16 images an
optimizer step, an epoch is 4 steps, and 12 steps cross two epoch boundaries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tiny
from ddpm.training.draws import draw
from ddpm.training.run import CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
STEPS = 12
TWO_RANKS = {"max_steps": STEPS, "batch_size": 8, "devices": 2, "strategy": "ddp",
             "checkpoint_every": 3, "val_every": 4, "sample_every": 1000}
ONE_RANK_ACCUMULATING = {**TWO_RANKS, "devices": 1, "strategy": "auto",
                         "accumulate_grad_batches": 2}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_script(out: Path, data: Path, train: dict) -> Path:
    """A script that trains with `train` overrides, each rank writing what it drew per image."""
    script = out / "train.py"
    out.mkdir(parents=True, exist_ok=True)
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import lightning as L
        import tiny
        from ddpm.training.run import train

        class RecordDraws(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                rows = [{{"step": trainer.global_step, "epoch": int(e), "position": int(p),
                          "t": int(t), "noise": n.double().sum().item(),
                          "image": x.double().sum().item()}}
                        for e, p, t, n, x in zip(batch.epoch, batch.position, batch.t,
                                                 batch.noise, batch.images)]
                with open({str(out)!r} + f"/draws-rank{{trainer.global_rank}}.jsonl", "a") as f:
                    f.writelines(json.dumps(row) + "\\n" for row in rows)

        params = tiny.params(train={train!r})
        train(params, {str(data)!r}, {str(out / 'models')!r}, {str(out / 'state')!r},
              {str(out / 'live')!r}, extra_callbacks=[RecordDraws()], progress=False)
    """))
    return script


def run_script(out: Path, data: Path, train: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(train_script(out, data, train))],
                          capture_output=True, text=True, timeout=600, cwd=out, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def draws(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"draws-rank{rank}.jsonl").read_text().splitlines()]


def weights(models: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(models.glob("*.safetensors"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    prepared = tiny.prepared(tmp_path_factory.mktemp("ddp") / "data", n=70)
    from ddpm.data.prepared import PreparedImages
    assert len(PreparedImages(prepared, "train")) == 64   # 4 whole steps of 16 an epoch
    return prepared


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, data) -> tuple[Path, str]:
    """An uninterrupted two-process run: its folder and its output."""
    out = tmp_path_factory.mktemp("two-ranks")
    return out, run_script(out, data, TWO_RANKS).stdout


def test_each_rank_draws_its_own_t_and_noise_from_the_images_position(two_ranks):
    out, stdout = two_ranks
    ranks = [draws(out, rank) for rank in (0, 1)]
    assert [len(rows) for rows in ranks] == [STEPS * 8, STEPS * 8]
    for rank, rows in enumerate(ranks):
        # Round-robin shares of each epoch's permutation: rank r holds positions r, r+2, …
        assert {row["position"] % 2 for row in rows} == {rank}
        for row in rows:   # each draw is the function of (seed, epoch, position) alone
            expected = draw(0, row["epoch"], row["position"], (3, tiny.IMG, tiny.IMG), 1000)
            assert row["t"] == expected.t
            assert row["noise"] == pytest.approx(expected.noise.double().sum().item(), abs=1e-9)
    for epoch in range(STEPS // 4):   # together the ranks cover each epoch's 64 positions
        positions = [row["position"] for rows in ranks for row in rows if row["epoch"] == epoch]
        assert sorted(positions) == list(range(64))
    for step in range(STEPS):
        t = [[row["t"] for row in rows if row["step"] == step] for rows in ranks]
        noise = [{row["noise"] for row in rows if row["step"] == step} for rows in ranks]
        assert t[0] != t[1] and not noise[0] & noise[1]   # one seed gave both ranks the same
        images = [{row["image"] for row in rows if row["step"] == step} for rows in ranks]
        assert images[0] != images[1]
    assert stdout.count("trained to step 12") == 1        # final weights from rank 0 only
    assert (out / "models" / "ema.safetensors").exists()


def dvc_project(root: Path, data: Path) -> Path:
    """A DVC project whose one stage is this checkout's train stage, with its resume state
    a persistent output as in dvc.yaml."""
    root.mkdir(parents=True)
    shutil.copytree(data, root / "data")
    tiny.write_params(root / "params.yaml", train=TWO_RANKS)
    stage = {"cmd": "python -m stages.train --params params.yaml --data data --models models "
                    "--state state --live live",
             "deps": ["data"], "params": ["train"],
             "outs": ["models", {"state": {"persist": True, "cache": False}},
                      {"live": {"persist": True, "cache": False}}]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True, env=ENV)
    return root


def test_two_ranks_killed_then_resumed_by_dvc_repro_end_with_the_same_bytes(
        two_ranks, data, tmp_path):
    project = dvc_project(tmp_path / "project", data)
    repro = subprocess.Popen(["dvc", "repro"], cwd=project, env=ENV, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The whole process group: dvc and both ranks.
    killed_at = tiny.kill_after_checkpoint(repro, project / "state" / CHECKPOINT, 5,
                                           kill=lambda p: os.killpg(p.pid, signal.SIGKILL),
                                           deadline_s=600)
    assert killed_at < STEPS and killed_at % 4 != 0           # mid-epoch
    rerun = subprocess.run(["dvc", "repro"], cwd=project, env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming from state/{CHECKPOINT} at step {killed_at}" in rerun.stdout, \
        rerun.stdout + rerun.stderr
    resumed = weights(project / "models")
    assert set(resumed) >= {"ema.safetensors"}
    assert resumed == weights(two_ranks[0] / "models")


def test_two_ranks_equal_one_rank_accumulating_two_batches(two_ranks, data, tmp_path):
    run_script(tmp_path, data, ONE_RANK_ACCUMULATING)
    one = draws(tmp_path, 0)
    both = draws(two_ranks[0], 0) + draws(two_ranks[0], 1)
    key = ("epoch", "position", "t", "noise", "image")
    assert sorted(tuple(r[k] for k in key) for r in one) == \
        sorted(tuple(r[k] for k in key) for r in both)          # the same images and draws
    for name in weights(tmp_path / "models"):
        accumulated = load_file(tmp_path / "models" / name)
        distributed = load_file(two_ranks[0] / "models" / name)
        for key_, value in accumulated.items():
            torch.testing.assert_close(value, distributed[key_], rtol=1e-4, atol=1e-5)
