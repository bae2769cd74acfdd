"""The GPU check of issues 14 and 22 (scripts/gpu_check.sh is the one entry point).

    python scripts/gpu_bench.py check FACES WORK [--smoke] [--results DIR] [--budget-s S] …
    python scripts/gpu_bench.py part NAME WORK      (check starts these)
    python scripts/gpu_bench.py pack [FACES]        (what travels to the device)

`check` writes WORK/plan.json and runs each part (scripts/gpu_check/parts.py) in
its own process, in the order of their value, each under a cap cut to what is left
of the budget (counted from the script's start). Every part's row goes to the
results folder ($OUT on the device) as soon as it ends: results.jsonl, table.md,
and failed.log with the last lines of each failed part's log
(scripts/gpu_check/results.py). At the end it prints the table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from ddpm.errors import one_line_errors
from gpu_check.plan import BUDGET_S, Plan, results_folder, write_plan
from gpu_check.results import (FAILED_FILE, RESULTS_FILE, RUNNING_LOG, TABLE_FILE, for_table,
                               latest_rows, read_rows, record)
from gpu_check.runner import run_check, run_part
from gpu_check.table import table_markdown

app = typer.Typer(add_completion=False, no_args_is_help=True)


def fresh_results(folder: Path) -> None:
    """An earlier run's files in the results folder would mix with this run's rows."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_FILE, TABLE_FILE, FAILED_FILE, RUNNING_LOG):
        (folder / name).unlink(missing_ok=True)


def gpu_count(smoke: bool) -> int:
    """GPUs visible here. The parts run in fresh processes, so asking CUDA here costs
    them nothing."""
    if smoke:
        return 1
    import torch

    return max(1, torch.cuda.device_count())


@app.command()
def part(name: str, work: Path) -> None:
    """Run one part (check starts these; see scripts/gpu_check/parts.py)."""
    run_part(name, work)


@app.command()
def check(faces: str = typer.Argument(..., help="Folder of face images, or 'demo'."),
          work: Path = typer.Argument(..., help="Empty folder for data, models, samples."),
          smoke: bool = typer.Option(False, help="Tiny sizes on the CPU."),
          results: str = typer.Option("", help="Results folder ($OUT); empty: WORK/results."),
          started: float = typer.Option(0.0, help="Unix time of the script's start, which "
                                                  "the budget counts from; 0: now."),
          budget_s: float = typer.Option(BUDGET_S, help="Seconds for the whole run."),
          commit: str = typer.Option("unknown", help="The commit, for the table."),
          train_steps: int = typer.Option(0, help="0: the plan's (150; smoke 4)."),
          batch: int = typer.Option(0, help="0: the plan's (128; smoke 4)."),
          sample_n: int = typer.Option(0, help="0: the plan's (50,000; smoke 8)."),
          sample_compile: str = typer.Option("", help="none | default | reduce-overhead."),
          peer: str = typer.Option("", help="plain | compile: how the diffusers peer trains."),
          fid_weights: str = typer.Option("", help="Inception weights file; empty: stand-in "
                                                   "weights made in the run.")):
    """Run every part (each capped in time), recording each row as it ends."""
    plan = Plan.smoke_sizes(faces) if smoke else Plan(faces=faces)
    overrides = dict(train_steps=train_steps, batch=batch, sample_n=sample_n,
                     sample_compile=sample_compile, peer=peer, fid_weights=fid_weights)
    for key, value in overrides.items():
        if value:
            setattr(plan, key, value)
    plan.results, plan.started = results, started or time.time()
    plan.budget_s, plan.commit, plan.gpus = budget_s, commit, gpu_count(smoke)
    folder = results_folder(plan, work)
    write_plan(plan, work)
    fresh_results(folder)
    record(plan, folder, "plan", "done", {"budget_s": budget_s, "smoke": smoke,
                                          "faces": faces, "gpus": plan.gpus})
    run_check(plan, work)
    print("\n" + table_markdown(plan, for_table(latest_rows(read_rows(folder)))), end="")
    print(f"\nresults: {folder}", file=sys.stderr)


@app.command()
@one_line_errors
def pack(faces: Path = typer.Argument(None, help="Folder of the faces to carry; default "
                                                 "../shared/data/faces-a."),
         kinds: Path = typer.Option(None, envvar="DEVICE_KINDS",
                                    help="The device tool's KINDS.md (its image's packages).")):
    """Build .faces/ and .whl/ for the device and print the call that runs the check."""
    from gpu_check.pack import DEVICE_KINDS, FACES_SOURCE, pack as build

    build(faces or FACES_SOURCE, kinds or DEVICE_KINDS)


if __name__ == "__main__":
    app()
