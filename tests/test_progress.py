"""Progress reporting of the train stage when stdout is not a terminal (dvc repro, CI logs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import tiny
from ddpm.training.callbacks import ProgressLines

REPO = Path(__file__).resolve().parents[1]


def test_progress_line_names_step_loss_rate_and_time_left(capsys, monkeypatch):
    clock = iter([100.0, 110.0, 110.0, 110.0])
    monkeypatch.setattr("ddpm.training.callbacks.time.perf_counter", lambda: next(clock))
    lines = ProgressLines(every_s=5, images_per_step=32)
    trainer = SimpleNamespace(global_step=0, max_steps=100, is_global_zero=True,
                              callback_metrics={"train/loss": torch.tensor(0.25)})
    lines.on_train_start(trainer, None)
    trainer.global_step = 20                     # 20 steps of 32 images in 10 s
    lines.on_train_batch_end(trainer, None, None, None, 0)
    out = capsys.readouterr().out.strip()
    assert out == ("train step 20/100 (20%)  loss 0.2500  64.0 img/s  elapsed 0m10s  "
                   "left 0m40s")


def test_train_stage_in_a_pipe_prints_progress_lines_and_no_advert(tmp_path):
    tiny.prepared(tmp_path / "data", n=32)
    params = tiny.write_params(tmp_path / "params.yaml", train={"max_steps": 6})
    proc = subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", str(params), "--data",
         str(tmp_path / "data"), "--models", str(tmp_path / "models"), "--state",
         str(tmp_path / "state"), "--live", str(tmp_path / "live")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    assert re.search(r"^train step 6/6 \(100%\)  loss [0-9.]+  [0-9.]+ img/s", proc.stdout, re.M)
    assert "Tip:" not in both and "LeafSpec" not in both
