"""The fid_sweep stage: FID against network evaluations, for each sampler at each step
count, with each point's standard error; the table and its plot.

Samples go from the sampler to Inception in memory, never written, and are scored
against fid_ref's statistics and cached features.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ddpm.diffusion.registry import get_sampler, sampler_nfe, takes_steps
from ddpm.errors import ConfigError
from ddpm.evaluation.reference import rebatch
from ddpm.io.atomic import write_atomically
from ddpm.io.figures import save_figure
from ddpm.io.progress import progress_bar
from ddpm.metrics.fid import inception_features, load_inception, load_statistics
from ddpm.metrics.fid_spread import frechet_to_reference, psd_sqrt
from ddpm.metrics.real_features import check_reference_weights, load_reference_features
from ddpm.metrics.resampling import standard_errors
from ddpm.sampling.config import SampleConfig
from ddpm.sampling.generate import load_generator, run_sampler


def sweep_points(samplers: Sequence[str], steps_list: Sequence[int],
                 timesteps: int) -> list[tuple[str, int | None, int]]:
    """(sampler, steps, NFE) for every sampler at every step count, in that order.

    A sampler that takes no steps (DDPM: all T) is one point with steps None.
    """
    if not samplers:
        raise ConfigError("sample.sweep_samplers = []: name at least one sampler")
    if not steps_list:
        raise ConfigError("sample.sweep_steps = []: give at least one step count")
    points = []
    for name in dict.fromkeys(samplers):  # each once, in the given order
        for steps in (dict.fromkeys(steps_list) if takes_steps(name) else [None]):
            points.append((name, steps, sampler_nfe(name, steps or 1, timesteps)))
    return points


def fid_sweep(model_dir: str | Path, ref_npz: str | Path, out_dir: str | Path,
              sample: SampleConfig, samplers: Sequence[str], steps_list: Sequence[int],
              n: int, *, weights: str, batch_size: int, bootstrap: int,
              device="cpu") -> pd.DataFrame:
    """FID of `n` samples for each sampler at each step count → table + plot in out_dir.

    One row per (sampler, steps) with its network evaluations per sample (NFE); the
    other sampler settings (eta, spacings, clipping, seed, EMA) are `sample`'s. Sample i
    has the same initial noise at every point, so the points differ by the sampler only.
    Each point carries the standard error of its FID (`resampling.standard_errors`:
    `bootstrap` draws, None when 0, and the jackknife), both sides resampled: the
    samples and fid_ref's cached features of the reference images, the same images as
    the reference μ, Σ (`n_reference`, at most `fid.max_real`).
    """
    reference = load_reference_features(ref_npz)   # fail before any model or sampling
    check_reference_weights(ref_npz, weights)
    if min(n, len(reference)) < 3:   # the jackknife leaves a group out and still needs 2
        raise ConfigError(f"FID sweep standard errors need at least 3 samples and 3 reference "
                          f"images, got sample.sweep_n = {n} and {len(reference)} (fid.max_real)")
    engine = load_generator(model_dir, sample, device)  # the compiled graph, once
    net, schedule, sample = engine.sampler_net, engine.schedule, engine.sample
    points = sweep_points(samplers, steps_list, schedule.timesteps)
    inception = load_inception(weights, device)
    # pytorch-fid's formula with Tr (Σ Σ_r)^½ from eigenvalues (ddpm.metrics.fid_spread,
    # tested equal to it): Σ_r^½ once, then milliseconds per point instead of a 2048²
    # scipy sqrtm each (~15 s on two cores). The run's headline FID stays pytorch-fid's.
    mu_r, sigma_r = load_statistics(ref_npz)
    root_r, trace_r = psd_sqrt(sigma_r), float(np.trace(sigma_r))
    rows = []
    for name, steps, nfe in points:
        cfg = dataclasses.replace(sample, sampler=name, steps=steps or sample.steps)
        arrays = (engine.to_uint8(run_sampler(net, schedule, cfg, engine.prediction,
                                              range(start, min(start + sample.batch_size, n)),
                                              engine.shape, device).images)
                  .permute(0, 2, 3, 1).cpu().numpy() for start in range(0, n, sample.batch_size))
        with progress_bar(n, f"FID sweep: {name}, {nfe} NFE") as bar:
            features = inception_features(rebatch(arrays, batch_size), inception, device,
                                          bar.update)
        fid = frechet_to_reference(features, mu_r, root_r, trace_r)
        se = standard_errors("fid", features, reference, bootstrap, device=device)
        reads = get_sampler(name).options
        rows.append({"sampler": name, "steps": steps, "nfe": nfe,
                     "spacing": getattr(sample, reads["spacing"]) if "spacing" in reads else "",
                     "eta": sample.eta if "eta" in reads else None, "n": n,
                     "n_reference": len(reference), "fid": round(fid, 4),
                     "fid_se_bootstrap": None if se["se_bootstrap"] is None
                     else round(se["se_bootstrap"], 4),
                     "fid_se_jackknife": round(se["se_jackknife"], 4)})
    table = pd.DataFrame(rows).astype({"steps": "Int64"})  # DDPM's None stays blank, not NaN
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / "fid_vs_steps.csv", lambda tmp: table.to_csv(tmp, index=False))
    plot_sweep(table, out_dir / "fid_vs_steps.png")
    return table


def sweep_label(row) -> str:
    """A legend label for one sampler's rows: name and the settings it used."""
    parts = [str(row["sampler"])]
    if isinstance(row.get("spacing"), str) and row["spacing"]:
        parts.append(f"{row['spacing']} spacing")
    if pd.notna(row.get("eta")):
        parts.append(f"eta {row['eta']}")
    return ", ".join(parts)


def sweep_error(table: pd.DataFrame) -> tuple[str | None, str]:
    """(column, name) of the standard error the sweep's points show: the bootstrap's,
    the jackknife's when the bootstrap was off (fid.bootstrap = 0), none in a table
    from before the sweep had standard errors."""
    for column, name in (("fid_se_bootstrap", "bootstrap"), ("fid_se_jackknife", "jackknife")):
        if column in table and pd.to_numeric(table[column], errors="coerce").notna().any():
            return column, name
    return None, ""


def plot_sweep(table: pd.DataFrame, path: Path) -> None:
    """FID against NFE, one line per sampler, each point ± its standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column, name = sweep_error(table)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for _, rows in table.groupby("sampler", sort=False):
        rows = rows.sort_values("nfe")
        error = pd.to_numeric(rows[column], errors="coerce") if column else None
        ax.errorbar(rows["nfe"], rows["fid"], yerr=error, fmt="o-", capsize=3,
                    label=sweep_label(rows.iloc[0]))
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(f"FID ({int(table['n'].iloc[0])} samples)"
                  + (f" ± {name} SE" if column else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
