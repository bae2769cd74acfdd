"""`ddpm compare`: every experiment side by side, from `dvc exp show --json`.

A markdown table (the params that differ between experiments, the key metrics
and each experiment's grid of generated samples) and one figure overlaying the
experiments' loss-per-timestep curves, read from each experiment's commit (the
curve's CSV and the report's sample grid are git-tracked). Only generated
samples are copied out, never training images.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pandas as pd

from ddpm.errors import DdpmError
from ddpm.io.atomic import write_bytes_atomically, write_text_atomically
from ddpm.io.figures import save_figure

# Keys as `dvc exp show` nests them: each metrics file's groups (fid.json's `kid`,
# analysis/metrics.json's `timestep_loss` and `likelihood`, dvclive's `train`) joined by dots.
KEY_METRICS = ("fid", "fid_blocks.mean", "kid.full_x1e3", "swd.mean_x1e3",
               "precision_recall.precision", "precision_recall.recall",
               "memorisation.fraction_cosine", "n_generated", "likelihood.bits_per_dim",
               "val.eps_mse", "val.loss", "train.mse", "train.loss", "timestep_loss.loss_q1",
               "timestep_loss.loss_q2", "timestep_loss.loss_q3", "timestep_loss.loss_q4",
               "train.images_per_s", "train.time_s")
# Metrics shown as "value ± spread" in one cell: the spread's key beside each value's
# (standard errors where the metric has one; a missing one, e.g. the bootstrap's when
# fid.bootstrap = 0, leaves the value alone).
SPREAD = {"fid": "fid_se.bootstrap", "fid_blocks.mean": "fid_blocks.sd",
          "kid.full_x1e3": "kid.se_bootstrap_x1e3",
          "likelihood.bits_per_dim": "likelihood.bits_per_dim_se"}
CURVE = "analysis/timestep_loss.csv"
GRID = "reports/figures/samples.png"  # the report's grid of generated samples


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _row(entry: dict, name: str) -> dict | None:
    data = entry.get("data")
    if not data:
        return None
    params = {}
    for file in data.get("params", {}).values():
        params.update(_flatten(file.get("data", {})))
    metrics = {}
    for file in data.get("metrics", {}).values():
        metrics.update(_flatten(file.get("data", {})))
    return {"name": name, "rev": entry["rev"], "params": params, "metrics": metrics}


def experiment_rows(shown: list[dict]) -> list[dict]:
    """One row per baseline commit and per experiment (the workspace is left out)."""
    rows = []
    for baseline in shown:
        if baseline["rev"] == "workspace":
            continue
        row = _row(baseline, baseline.get("name") or baseline["rev"][:7])
        rows += [row] if row else []
        for exp in baseline.get("experiments") or []:
            head = exp["revs"][0]
            row = _row(head, exp.get("name") or head.get("name") or head["rev"][:7])
            rows += [row] if row else []
    return rows


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value).replace("|", "/")


def _metric_cell(metrics: dict, key: str) -> str:
    cell = _cell(metrics.get(key))
    spread = metrics.get(SPREAD.get(key, ""))
    return f"{cell} ± {_cell(spread)}" if key in metrics and spread is not None else cell


def markdown_table(rows: list[dict], grids: dict[str, str] | None = None) -> str:
    """One row per experiment; `grids` maps names to image paths for a samples column."""
    keys = sorted({k for r in rows for k in r["params"]})
    differing = [k for k in keys if len({json.dumps(r["params"].get(k)) for r in rows}) > 1]
    metrics = [m for m in KEY_METRICS if any(m in r["metrics"] for r in rows)]
    header = ["experiment", "rev"] + [f"`{k}`" for k in differing]
    header += [f"{m} ± {SPREAD[m].rsplit('.', 1)[1]}" if m in SPREAD else m for m in metrics]
    header += ["samples"] if grids else []
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        cells = [r["name"], r["rev"][:7]] + [_cell(r["params"].get(k)) for k in differing]
        cells += [_metric_cell(r["metrics"], m) for m in metrics]
        if grids:
            grid = grids.get(r["name"])
            cells.append(f'<img src="{grid}" width="128">' if grid else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _exp_show(repo: Path, rev: str = "") -> list[dict]:
    """`dvc exp show --json` in `repo` (from commit `rev` if given), parsed."""
    command = ["dvc", "exp", "show", "--json"] + (["--rev", rev] if rev else [])
    proc = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DdpmError(f"dvc exp show failed in {repo}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def _git_show(repo: Path, rev: str, path: str) -> bytes | None:
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True)
    return shown.stdout if shown.returncode == 0 else None


def curve_at(repo: Path, rev: str) -> pd.DataFrame | None:
    text = _git_show(repo, rev, CURVE)
    return pd.read_csv(io.BytesIO(text)) if text is not None else None


def copy_grids(repo: Path, rows: list[dict], folder: Path) -> dict[str, str]:
    """Each experiment's grid of generated samples → folder/NAME.png; {name: relative path}."""
    grids = {}
    for r in rows:
        png = _git_show(repo, r["rev"], GRID)
        if png is not None:
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in r["name"])
            write_bytes_atomically(folder / f"{name}.png", png)
            grids[r["name"]] = f"{folder.name}/{name}.png"
    return grids


def plot_overlay(curves: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, table in curves.items():
        ax.plot(table["t"], table["loss_mean"], lw=1.5, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("per-pixel MSE (fixed holdout images and noise)")
    ax.set_title("Loss per timestep, by experiment")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def compare(repo: str | Path, out_md: str | Path, rev: str = "", prefix: str = "") -> str:
    """Write the experiments table (markdown) and the overlay figure beside it.

    The experiments derived from HEAD, as `dvc exp show` lists them, or from the
    commit `rev` (experiments run before the latest commits); with `prefix`, only
    those whose names start with it (one study among others).
    """
    repo, out_md = Path(repo), Path(out_md)
    rows = [r for r in experiment_rows(_exp_show(repo, rev)) if r["name"].startswith(prefix)]
    if not rows:
        raise DdpmError(f"{repo}: no experiments yet; run `dvc exp run` first")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    figure = out_md.with_name(f"{out_md.stem}-timestep-loss.png")  # one per table
    curves = {r["name"]: c for r in rows if (c := curve_at(repo, r["rev"])) is not None}
    grids = copy_grids(repo, rows, out_md.with_name(out_md.stem + "-samples"))
    text = "# Experiments\n\n" + markdown_table(rows, grids)
    if curves:
        plot_overlay(curves, figure)
        text += f"\n![loss per timestep, all experiments]({figure.name})\n"
    write_text_atomically(out_md, text)
    return text
