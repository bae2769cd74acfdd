"""Each part in its own process under a time cap, within the run's budget.

A slow part is cut off with a line in the table instead of eating the others'
time, and every part's row reaches the results folder the moment it ends
(gpu_check.results), so a run the device tool kills still returns them.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from gpu_check.plan import Part, Plan, part_cap, parts_for, read_plan, results_folder, work_paths
from gpu_check.results import (RUNNING_LOG, append_failure, latest_rows, log_tail, read_rows,
                               record)
from gpu_check.shards import kept_by_cut_run

ENTRY = Path(__file__).resolve().parents[1] / "gpu_bench.py"
PR_SET_PDEATHSIG = 1


def run_part(name: str, work: Path) -> None:
    """Run part `name` in this process; its figures, or why it failed, become its row."""
    from gpu_check.parts import PART_FUNCTIONS  # torch, Lightning: only in the part's process

    plan = read_plan(work)
    folder = results_folder(plan, work)
    try:
        figures = PART_FUNCTIONS[name](plan, work)
    except BaseException as err:  # noqa: BLE001 - one failed part must not stop the check
        if isinstance(err, KeyboardInterrupt):
            raise
        traceback.print_exc()
        line = " ".join(f"{type(err).__name__}: {err}".split())[:160]
        record(plan, folder, name, "failed", {"status": f"failed ({line})"})
        raise SystemExit(1) from None
    if figures:  # DDP ranks other than 0 return none
        record(plan, folder, name, "done", figures)


def _die_with_parent() -> None:
    """In the part's process before it starts: die when the check dies (killed by the
    device tool's limit, or by a test), instead of running on and writing rows to a
    results folder nobody reads any more. Linux only; elsewhere a no-op."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the check died before prctl took effect
        os._exit(1)


def _copy_output(source, sinks) -> None:
    """Copy a part's output, as it comes, to the console and its log."""
    for chunk in iter(lambda: os.read(source.fileno(), 1 << 16), b""):
        for sink in sinks:
            sink.write(chunk)
            sink.flush()


def _start_part(name: str, work: Path) -> subprocess.Popen:
    # Its own session: on a time-out, one kill takes its workers and DDP ranks too.
    return subprocess.Popen([sys.executable, str(ENTRY), "part", name, str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _timed_out_row(plan: Plan, work: Path, name: str, cap: float, latest: dict) -> dict:
    """The row of a part its cap stopped: what it saved before, and for generate the
    shards it finished (the fid part scores those)."""
    figures = {k: v for k, v in latest.items() if k not in ("part", "state", "t_s", "cap_s")}
    why = f"timed out after {cap:.0f} s"
    if name == "generate":
        kept = kept_by_cut_run(work_paths(work)["samples"], plan.sample_n, plan.shard_size)
        figures.update(kept, wall_s=cap, rate=kept["n"] / cap)
        why += f"; {kept['shards']} of {kept['planned_shards']} shards ({kept['n']:,} " \
               "images) kept"
    return {**figures, "status": why}


def run_capped(plan: Plan, work: Path, part: Part, cap: float) -> None:
    """Run `part` in a child process killed after `cap` seconds; record how it ended."""
    folder = results_folder(plan, work)
    record(plan, folder, part.name, "began", {"cap_s": round(cap)})
    log_path = folder / RUNNING_LOG
    with open(log_path, "wb") as log:
        child = _start_part(part.name, work)
        tee = threading.Thread(target=_copy_output, args=(child.stdout, [sys.stdout.buffer, log]),
                               daemon=True)
        tee.start()
        timed_out = False
        try:
            child.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            timed_out = True
        tee.join(timeout=10)  # a process that left the session may hold the pipe open
    latest = latest_rows(read_rows(folder)).get(part.name, {})
    if timed_out:
        row = record(plan, folder, part.name, "timed out",
                     _timed_out_row(plan, work, part.name, cap, latest))
    elif latest.get("state") in ("done", "failed"):
        row = latest
    else:  # it died without a word: killed, out of memory, a crash in native code
        row = record(plan, folder, part.name, "failed",
                     {"status": f"failed (exit code {child.returncode})"})
    if row["state"] != "done":
        append_failure(folder, part.name, row["status"], log_tail(log_path))
    logs = work_paths(work)["logs"]
    logs.mkdir(parents=True, exist_ok=True)
    shutil.move(log_path, logs / f"{part.name}.log")


def run_check(plan: Plan, work: Path) -> None:
    """Every part the GPUs allow, in order, each capped by what is left of the budget."""
    folder = results_folder(plan, work)
    deadline = plan.started + plan.budget_s
    for part in parts_for(plan.gpus):
        left = deadline - time.time()
        cap = part_cap(part, left)
        print(f"\n== {part.name} (cap {cap:.0f} s; {left:.0f} s of the budget left)", flush=True)
        if not cap:
            record(plan, folder, part.name, "skipped",
                   {"status": f"skipped: {max(left, 0):.0f} s of the {plan.budget_s:.0f}-s "
                    "budget left"})
            continue
        start = time.monotonic()
        run_capped(plan, work, part, cap)
        print(f"== {part.name}: {time.monotonic() - start:.1f} s", flush=True)
    record(plan, folder, "check", "done", {"budget_s": plan.budget_s})
