"""Progress reporting when stdout is not a terminal (dvc repro, CI logs): train and the rest."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm import tqdm

import tiny
from ddpm.io.progress import progress_bar
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


# ------------------------------------------------------------------ the other stages


def test_line_bar_prints_whole_lines_with_count_rate_and_time_left(monkeypatch):
    monkeypatch.setattr("ddpm.io.progress.interactive", lambda: False)
    out, now = io.StringIO(), [100.0]
    bar = progress_bar(100, "generate (ddim)", every_s=5, file=out)
    bar._time = lambda: now[0]                          # tqdm's clock
    bar.start_t = bar.last_print_t = 100.0
    with bar:
        now[0] = 110.0
        bar.update(40)                                  # 40 images in 10 s
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == ["generate (ddim) 0/100 (0%)  ? img/s  elapsed 0m00s",
                                 "generate (ddim) 40/100 (40%)  4.0 img/s  elapsed 0m10s  "
                                 "left 0m15s"]


def test_line_bar_waits_every_s_between_lines_and_ends_with_the_final_count(monkeypatch):
    monkeypatch.setattr("ddpm.io.progress.interactive", lambda: False)
    out = io.StringIO()
    with progress_bar(50, "FID generated", every_s=3600, file=out) as bar:
        for _ in range(5):
            bar.update(10)
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["FID generated 0/50 (0%)",
                                                       "FID generated 50/50 (100%)"]


def test_on_a_terminal_it_is_tqdms_own_bar(monkeypatch):
    monkeypatch.setattr("ddpm.io.progress.interactive", lambda: True)
    bar = progress_bar(10, "x", file=io.StringIO())
    assert type(bar) is tqdm
    bar.close()
