"""Progress of the long steps: a live bar on a terminal, plain lines everywhere else.

Under `dvc repro > log.txt`, in CI logs or any pipe, a bar redrawn with carriage
returns is unreadable, so there `progress_bar` prints one whole line to stdout
every `every_s` seconds and at the end: count, share done, rate, elapsed and
time left. The train stage's `ProgressLines` writes the same line format.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

EVERY_S = 20.0  # the issue asks for a line at least every 30 s


def interactive() -> bool:
    """Whether a person watches both streams on a terminal (else: a log file or a pipe)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def progress_line(desc: str, n: int, total: int | None, elapsed: float, done: int,
                  unit: str = "img", per_item: float = 1, extra: str = "") -> str:
    """'DESC n/total (p%)EXTRA  r UNIT/s  elapsed 0m10s  left 0m40s'.

    `done` items (of the `n`) took `elapsed` seconds; each is `per_item` UNITs
    (the train stage counts steps but shows images/s).
    """
    line = f"{desc} {n}" + (f"/{total} ({100 * n // max(total, 1)}%)" if total else "")
    known = done > 0 and elapsed > 0
    line += extra + (f"  {done * per_item / elapsed:.1f} {unit}/s" if known else f"  ? {unit}/s")
    line += f"  elapsed {clock(elapsed)}"
    if total and known:
        line += f"  left {clock(elapsed / done * max(total - n, 0))}"
    return line


class LineBar(tqdm):
    """A tqdm that prints a whole line every `mininterval` seconds instead of redrawing a bar."""

    def display(self, msg=None, pos=None):
        if msg is not None:  # tqdm clearing its bar: there is no bar in a log
            return False
        now = self._time()
        elapsed = now - getattr(self, "start_t", now)  # tqdm's first display precedes start_t
        self.fp.write(progress_line(self.desc.rstrip(": "), self.n, self.total, elapsed,
                                    self.n - self.initial, self.unit) + "\n")
        self.fp.flush()
        return True

    def close(self):
        # The last line, unless the last refresh already showed the final count;
        # leave=False then stops tqdm's own closing redraw and newline.
        if not self.disable and self.n != self.last_print_n:
            self.display()
        self.leave = False
        super().close()


def progress_bar(total: int | None, desc: str, unit: str = "img", *, disable: bool = False,
                 every_s: float = EVERY_S, file=None) -> tqdm:
    """A tqdm bar (stderr) on a terminal, else a `LineBar` on stdout every `every_s`."""
    if interactive():
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    file=file)
    # miniters=1: look at the clock on every update, so a slow start still prints.
    return LineBar(total=total, desc=desc, unit=unit, disable=disable,
                         mininterval=every_s, miniters=1, file=file or sys.stdout)
