"""The results folder ($OUT on the device): what comes back, whatever happens to the run.

The device tool returns only the files its command leaves in $OUT (at most 8, flat
names), also when it kills the command at its time limit. So every row is written
the moment it is known, never only at the end:

    results.jsonl     one JSON row per event, appended: a part began, ended (its
                      figures), failed, timed out or was skipped. A part's latest
                      row is its state; a part whose latest row says it began was
                      cut off with the run.
    table.md          the markdown table of the latest rows, rewritten (atomically)
                      after every row, so it always holds every finished part.
    failed.log        for each part that failed or timed out: why, and the last
                      LOG_TAIL_LINES lines of its output.
    running-part.log  the output of the part running now; after it ends it moves to
                      WORK/logs/. Left behind only when the run itself was killed:
                      then it is the cut part's whole log.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ddpm.io.atomic import write_text_atomically
from gpu_check.plan import Plan
from gpu_check.table import table_markdown

RESULTS_FILE, TABLE_FILE, FAILED_FILE = "results.jsonl", "table.md", "failed.log"
RUNNING_LOG = "running-part.log"
LOG_TAIL_LINES = 20
# A part's states. `began` and `partial` (figures saved before the part's end) are
# its latest row only while it runs, or when the run was cut off during it.
ENDED = ("done", "failed", "timed out", "skipped")
CUT_OFF = "cut off: the run ended during this part"


def is_rank_zero() -> bool:
    """False in the extra processes Lightning and Fabric start for DDP (they re-run argv)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def append_row(folder: Path, row: dict) -> None:
    """Append one JSON line in one write: a kill leaves whole lines only."""
    folder.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row) + "\n").encode()
    fd = os.open(folder / RESULTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_rows(folder: Path) -> list[dict]:
    path = folder / RESULTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_rows(rows: list[dict]) -> dict[str, dict]:
    """Each part's latest row (its current state)."""
    return {row["part"]: row for row in rows}


def for_table(latest: dict[str, dict]) -> dict[str, dict]:
    """The latest rows as the table reads them: a part that never ended says so."""
    return {name: row if row.get("state") in ENDED else {**row, "status": CUT_OFF}
            for name, row in latest.items()}


def record(plan: Plan, folder: Path, part: str, state: str, figures: dict | None = None,
           ) -> dict:
    """Append part `part`'s row in `state` and rewrite table.md; returns the row."""
    row = {"part": part, "state": state, "t_s": round(time.time() - plan.started, 1),
           **(figures or {})}
    if not is_rank_zero():  # DDP: rank 0 speaks for all
        return row
    append_row(folder, row)
    write_text_atomically(folder / TABLE_FILE,
                          table_markdown(plan, for_table(latest_rows(read_rows(folder)))))
    return row


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a part's log; progress bars' carriage returns split lines."""
    if not path.is_file():
        return []
    text = path.read_bytes().decode(errors="replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def append_failure(folder: Path, part: str, why: str, tail: list[str]) -> None:
    with open(folder / FAILED_FILE, "a") as log:
        log.write(f"== {part}: {why}; its last {len(tail)} log lines:\n")
        log.writelines(f"   {line}\n" for line in tail)
