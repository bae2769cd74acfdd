"""The run's report: `reports/report.md` with figures beside it, readable on GitHub.

Every number and figure comes from this run's stage outputs; a section whose
input is absent says so instead of showing something stale.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ddpm.atomic import write_text_atomically
from ddpm.config import DiffusionConfig, Params
from ddpm.figures import save_figure


@dataclass(frozen=True)
class RunOutputs:
    """Where the stages wrote what the report reads."""
    prepared: Path
    models: Path
    live: Path
    samples: Path
    fid: Path
    analysis: Path
    sweep: Path | None = None
    memorisation: Path | None = None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def changed_params(params: Params) -> list[tuple[str, object, object]]:
    """(key, value, default) for every param that differs from the code's default."""
    out = []
    for section in dataclasses.fields(Params):
        ours, default = getattr(params, section.name), getattr(Params(), section.name)
        for field in dataclasses.fields(ours):
            a, b = getattr(ours, field.name), getattr(default, field.name)
            if a != b:
                out.append((f"{section.name}.{field.name}", a, b))
    return out


def fmt(value, digits: int = 4) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value)


def pm(mean, spread) -> str:
    """"mean ± spread", or a dash when the mean is missing."""
    return "–" if mean is None else f"{fmt(mean)} ± {fmt(spread)}"


@dataclass(frozen=True)
class LossLabels:
    """What the logged losses are, in words, for the run's `diffusion.*` settings.

    `train/loss` is what training minimises: the per-pixel MSE of the prediction target,
    Min-SNR-γ weighted per image when `diffusion.loss_weighting` is min_snr. `train/mse`
    and `val/loss` are that MSE unweighted, so those two compare; the weighted loss
    compares with neither (for v its weights are min(SNR, γ)/(SNR + 1) ≤ 1, so it is
    smaller whatever the model does).
    """

    weighted: bool
    mse: str    # e.g. "unweighted v-MSE"
    loss: str   # e.g. "min-SNR-weighted v-MSE, γ = 5", or the same as `mse`

    @classmethod
    def of(cls, diffusion: DiffusionConfig) -> LossLabels:
        target = {"eps": "ε", "v": "v", "x0": "x0"}[diffusion.prediction]
        mse = f"unweighted {target}-MSE"
        if diffusion.loss_weighting == "min_snr":
            return cls(True, mse, f"min-SNR-weighted {target}-MSE, "
                                  f"γ = {diffusion.min_snr_gamma:g}")
        return cls(False, mse, mse)


def _read_tsv(path: Path, column: str) -> pd.DataFrame | None:
    """A DVCLive plot file as (step, value), or None when the run did not log it."""
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t").rename(columns={column: "value"})


def _per_step(ax, frame: pd.DataFrame, label: str) -> None:
    """Every logged step faintly, and a running mean of a twentieth of them on top."""
    window = max(1, len(frame) // 20)
    line, = ax.plot(frame["step"], frame["value"], lw=0.6, alpha=0.35)
    ax.plot(frame["step"], frame["value"].rolling(window, min_periods=1).mean(), lw=1.8,
            color=line.get_color(), label=f"{label}, running mean of {window} logged steps")


def plot_training_curves(live: Path, path: Path, diffusion: DiffusionConfig) -> bool:
    """The unweighted training MSE beside the validation MSE (the comparable pair) and,
    when the loss is weighted, the weighted training loss in a panel of its own; False
    if the run logged no training loss. A run that did not log train/mse (older runs)
    shows the validation MSE alone in the first panel and says so."""
    metrics = live / "plots" / "metrics"
    train = _read_tsv(metrics / "train" / "loss.tsv", "loss")
    if train is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = LossLabels.of(diffusion)
    mse = _read_tsv(metrics / "train" / "mse.tsv", "mse")
    if mse is None and not labels.weighted:
        mse = train  # unweighted: the training loss is the training MSE
    val = _read_tsv(metrics / "val" / "loss.tsv", "loss")
    panels = 2 if labels.weighted else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 3.8), squeeze=False)
    ax = axes[0, 0]
    if mse is not None:
        _per_step(ax, mse, "training MSE (raw weights, training batches)")
    else:
        ax.text(0.5, 0.96, "training MSE: not logged by this run", transform=ax.transAxes,
                ha="center", va="top")
    if val is not None:
        ax.plot(val["step"], val["value"], "o-", lw=1.5,
                label="validation MSE (EMA weights, fixed holdout noise and t)")
    ax.set_title(f"training and validation, both {labels.mse}", fontsize=10)
    ax.set_ylabel(f"{labels.mse} (per pixel)")
    if labels.weighted:
        weighted = axes[0, 1]
        _per_step(weighted, train, "training loss")
        weighted.set_title(f"training loss as minimised: {labels.loss}", fontsize=10)
        weighted.set_ylabel(labels.loss.split(",")[0])
    for ax in axes[0]:
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _metrics_rows(outputs: RunOutputs, params: Params) -> list[tuple[str, str]]:
    live = _read_json(outputs.live / "metrics.json")
    train, val = live.get("train", {}), live.get("val", {})
    fid = _read_json(outputs.fid)
    model = _read_json(outputs.models / "config.json")
    labels = LossLabels.of(params.diffusion)
    mse = train.get("mse", train.get("loss") if not labels.weighted else None)
    rows = [
        ("optimizer steps", fmt(model.get("steps"))),
        (f"final training loss ({labels.loss}; what training minimises; last logged step)",
         fmt(train.get("loss"))),
        (f"final training MSE ({labels.mse}; raw weights; last logged step)",
         fmt(mse) if mse is not None or not train else "not logged by this run"),
        (f"validation MSE ({labels.mse}; EMA weights; fixed holdout images, noise and t)",
         fmt(val.get("loss"))),
        ("training throughput (images/s, all devices)", fmt(train.get("images_per_s"), 3)),
        ("training time (s)", fmt(train.get("time_s"), 4)),
    ]
    if fid:
        weights = "official" if fid.get("inception_official") else \
            "STAND-IN, compare runs only, not published FIDs"
        rows += [
            ("FID", f"**{fmt(fid.get('fid'))}**"),
            ("FID sample count / reference", f"{fid.get('n_generated')} generated vs "
             f"{fid.get('n_reference')} real ({fid.get('reference_split')} split)"),
            ("sampler", f"{fid.get('sampler')}, {fid.get('steps')} steps, "
             # eta is DDIM's alone; the ODE solvers record none
             + (f"eta {fid['eta']}, " if fid.get("eta") is not None else "")
             + f"{'EMA' if fid.get('use_ema') else 'raw'} weights"),
            ("Inception weights", weights),
        ]
        rows += _sample_metric_rows(fid)
    return rows


def _sample_metric_rows(fid: dict) -> list[tuple[str, str]]:
    """FID spread, KID, precision/recall and memorisation, each with its N (and ±)."""
    rows = []
    if blocks := fid.get("fid_blocks"):
        rows.append((f"FID spread: {blocks['k']} disjoint blocks of {blocks['block_n']} "
                     "samples (mean ± sd; biased up at small N, compare equal block sizes)",
                     pm(blocks["mean"], blocks["sd"])))
    if kid := fid.get("kid"):
        rows.append((f"KID ({kid['subsets']} subsets of {kid['subset_size']}; "
                     f"{kid['n_generated']} generated vs {kid['n_reference']} real; mean ± std)",
                     f"**{pm(kid['mean'], kid['std'])}**"))
    if pr := fid.get("precision_recall"):
        counts = f"k = {pr['k']}; {pr['n_generated']} generated vs {pr['n_reference']} real"
        rows += [(f"precision / recall ({counts})",
                  f"**{fmt(pr['precision'])}** / **{fmt(pr['recall'])}**"),
                 (f"density / coverage ({counts})",
                  f"{fmt(pr['density'])} / {fmt(pr['coverage'])}")]
    if mem := fid.get("memorisation"):
        rows.append((f"memorised fraction: generated images at or below the "
                     f"{mem['percentile']:g}st percentile of holdout→train distances "
                     f"({mem['n_generated']} generated, {mem['n_holdout']} holdout, "
                     f"{mem['n_train']} train; Inception cosine / RMS pixel)",
                     f"**{fmt(mem['fraction_cosine'])}** / {fmt(mem['fraction_pixel'])}"))
    return rows


def _table(rows, header=("", "")) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return lines + [f"| {a} | {b} |" for a, b in rows]


def _figure(src: Path, figures: Path, name: str, alt: str) -> list[str]:
    if not src.is_file():
        return [f"_{alt}: not produced in this run._", ""]
    shutil.copyfile(src, figures / name)
    return [f"![{alt}](figures/{name})", ""]


def _sweep_table(csv: Path) -> list[str]:
    """The sweep's rows (sampler, steps, NFE, spacing, eta, FID) as a markdown table."""
    if not csv.is_file():
        return []
    table = pd.read_csv(csv, keep_default_na=False)
    n = table["n"].iloc[0] if len(table) else "?"
    lines = [f"| sampler | steps | NFE | spacing | eta | FID ({n} samples) |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for row in table.to_dict("records"):
        cells = [row["sampler"], row["steps"], row["nfe"], row.get("spacing", ""),
                 row.get("eta", ""), fmt(float(row["fid"]))]
        lines.append("| " + " | ".join("–" if c == "" else str(c) for c in cells) + " |")
    return lines + [""]


def _memorisation_section(folder: Path, figures: Path) -> list[str]:
    lines = ["## Memorisation", "",
             "Distance from each generated image to its nearest training image, against the "
             "same for holdout images that were never trained on; the dashed line is the "
             "threshold below which a generated image counts as memorised:", ""]
    lines += _figure(folder / "distances.png", figures, "memorisation_distances.png",
                     "nearest-training-image distances, generated and holdout")
    lines += ["The 16 generated images closest to a training image (Inception cosine "
              "distance), each followed by that training image, closest first:", ""]
    return lines + _figure(folder / "closest_pairs.png", figures, "closest_pairs.png",
                           "closest generated-training pairs")


def _format_rows(outputs: RunOutputs) -> list[tuple[str, str]]:
    """The number formats the run used (`auto` resolved by the hardware) and why."""
    trained = _read_json(outputs.models / "config.json")
    sampled = _read_json(outputs.samples / "manifest.json")
    train = trained.get("train", {})
    rows = [("training formats", f"**{train.get('precision')}**, channels-last "
                                 f"{str(train.get('channels_last')).lower()}; chosen "
                                 f"{trained.get('formats', '')}")]
    if sampled:
        rows.append(("sampling precision", f"**{sampled['sample'].get('precision')}**; chosen "
                                           f"{sampled.get('formats', '')}"))
    return rows


def build_report(params: Params, outputs: RunOutputs, out_md: Path) -> str:
    """Write `out_md` and its figures (in `figures/` beside it); return the markdown."""
    figures = out_md.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    manifest = _read_json(outputs.prepared / "manifest.json")
    counts = manifest.get("counts", {})
    lines = [f"# {params.report.title}", "",
             "_Written by the `report` stage from this run's outputs (`dvc repro`)._", "",
             "## Run", ""]
    lines += _table([
        ("data", f"`{manifest.get('source')}` ({manifest.get('source_kind')}), "
                 f"{counts.get('train')} train + {counts.get('holdout')} holdout images, "
                 f"{manifest.get('img_size')} px, crop `{manifest.get('crop')}`, "
                 f"{len(manifest.get('skipped', []))} skipped"),
        ("model", f"`{params.model.arch}`, {params.diffusion.schedule} schedule, "
                  f"T = {params.diffusion.timesteps}, predicts {params.diffusion.prediction}"),
        ("training", f"batch {params.train.batch_size} × accumulate "
                     f"{params.train.accumulate_grad_batches} × {params.train.devices} device(s), "
                     f"lr {params.train.lr}"),
        *_format_rows(outputs),
    ])
    changed = changed_params(params)
    lines += ["", "Params that differ from the defaults:", ""]
    lines += _table([(f"`{k}`", f"{fmt(a)} (default {fmt(b)})") for k, a, b in changed],
                    ("key", "value")) if changed else ["_none: this is the default run._"]
    lines += ["", "## Metrics", ""] + _table(_metrics_rows(outputs, params), ("metric", "value"))
    lines += ["", "## Samples", "", "The first generated samples (fixed seeds):", ""]
    lines += _figure(outputs.samples / "grid.png", figures, "samples.png", "sample grid")
    lines += ["## Sampling trajectory", "",
              "Top row x_t, bottom row the model's prediction of x_0, along the sampling steps "
              "(research log #6):", ""]
    lines += _figure(outputs.samples / "trajectory.gif", figures, "trajectory.gif",
                     "trajectory movie")
    lines += ["## Training", ""]
    if plot_training_curves(outputs.live, figures / "training_loss.png", params.diffusion):
        labels = LossLabels.of(params.diffusion)
        if labels.weighted:
            lines += [f"Training minimises the {labels.loss} (right panel). Its per-timestep "
                      "weights change its scale, so it cannot be set beside the validation "
                      f"MSE; the training MSE of the same batches, unweighted (left panel), "
                      f"can: both are the {labels.mse}.", ""]
        lines += ["![training and validation loss](figures/training_loss.png)", ""]
    else:
        lines += ["_no training log in this run._", ""]
    lines += ["## Loss per timestep", ""]
    lines += _figure(outputs.analysis / "timestep_loss.png", figures, "timestep_loss.png",
                     "loss per timestep")
    quarters = _read_json(outputs.analysis / "metrics.json").get("timestep_loss", {})
    if quarters:
        lines += _table([(k, fmt(v)) for k, v in quarters.items()],
                        ("mean loss by quarter of t (q1 = least noise)", "per-pixel MSE"))
        lines += [""]
    if outputs.memorisation is not None:
        lines += _memorisation_section(outputs.memorisation, figures)
    if outputs.sweep is not None and (outputs.sweep / "fid_vs_steps.png").is_file():
        lines += ["## FID against network evaluations", ""]
        lines += _figure(outputs.sweep / "fid_vs_steps.png", figures, "fid_vs_steps.png",
                         "FID against network evaluations, one line per sampler")
        lines += _sweep_table(outputs.sweep / "fid_vs_steps.csv")
    lines += ["## Comparing experiments", "",
              "`ddpm compare` turns `dvc exp show` into a table of every experiment (the "
              "params that differ, the key metrics) and one figure overlaying their loss "
              "per timestep: [experiments.md](experiments.md) once it has been run.", ""]
    text = "\n".join(lines).rstrip() + "\n"
    write_text_atomically(out_md, text)
    return text
