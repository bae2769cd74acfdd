"""Is a run's result within the seed-to-seed spread of reference runs?

Each RUN is a folder holding a pipeline run's metrics files (metrics/fid.json,
analysis/metrics.json, dvclive/metrics.json, as `dvc repro` writes them). The
reference runs differ only in `train.seed`; the table gives their mean ± sd and
range for each key metric, the candidate's value, and how many reference sds it
sits from their mean.

    python scripts/seed_spread.py --candidate . /tmp/seeds/0 /tmp/seeds/1 /tmp/seeds/2
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import typer

FILES = ("metrics/fid.json", "analysis/metrics.json", "dvclive/metrics.json")
METRICS = ("fid", "kid.full_x1e3", "swd.mean_x1e3", "precision_recall.precision",
           "precision_recall.recall", "likelihood.bits_per_dim", "timestep_loss.loss_mean",
           "val.loss", "val.eps_mse", "train.mse")


def flat(tree: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def metrics(run: Path) -> dict[str, float]:
    found = {}
    for name in FILES:
        path = run / name
        if not path.is_file():
            raise typer.BadParameter(f"{path}: missing; RUN must be a folder a pipeline ran in")
        found |= flat(json.loads(path.read_text()))
    return found


def main(runs: list[Path] = typer.Argument(..., help="Reference runs (seeds)."),
         candidate: Path = typer.Option(..., help="The run to place among them.")) -> None:
    if len(runs) < 2:
        raise typer.BadParameter("give at least two reference runs for a spread")
    reference = [metrics(run) for run in runs]
    new = metrics(candidate)
    print(f"{len(runs)} reference runs: {', '.join(map(str, runs))}; candidate {candidate}")
    print("| metric | reference mean ± sd | reference range | candidate | (cand. − mean)/sd |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key in METRICS:
        values = [run[key] for run in reference]
        mean, sd = statistics.mean(values), statistics.stdev(values)
        z = (new[key] - mean) / sd if sd > 0 else float("nan")
        print(f"| {key} | {mean:.4g} ± {sd:.2g} | {min(values):.4g} … {max(values):.4g} "
              f"| {new[key]:.4g} | {z:+.1f} |")


if __name__ == "__main__":
    typer.run(main)
