"""Loss per timestep of a trained model (the log's to-do "look at loss per time step"),
and an upper bound on its holdout negative log-likelihood in bits/dim.

For a fixed set of holdout images and a fixed noise draw per image, the
per-pixel MSE of the EMA model at a grid of timesteps. Everything random is
seeded per image, so the curve is comparable across experiments, image sizes
and architectures, and two runs give identical tables. The bound
(`ddpm.diffusion.likelihood`) is seeded per image the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ddpm.autoencoder.latents import LatentImages
from ddpm.data.prepared import PreparedImages
from ddpm.diffusion.forward import loss_per_timestep
from ddpm.diffusion.likelihood import bits_per_dim_bound, evaluations_per_image
from ddpm.diffusion.samplers import initial_noise, sample_generators
from ddpm.evaluation.config import AnalysisConfig
from ddpm.io.atomic import write_atomically, write_json_atomically
from ddpm.io.figures import save_figure
from ddpm.io.images import to_unit_range
from ddpm.io.progress import progress_bar
from ddpm.models.checkpoint import load_model

QUARTERS = ("q1", "q2", "q3", "q4")


def timestep_grid(timesteps: int, points: int) -> np.ndarray:
    """`points` distinct timesteps spread evenly over 0..T−1 (all T when points >= T)."""
    return np.unique(np.round(np.linspace(0, timesteps - 1, min(points, timesteps))).astype(int))


def holdout_images(prepared_dir: str | Path, n: int) -> torch.Tensor:
    """The first n holdout images in [-1, 1], [n, 3, H, W] (train images if no holdout)."""
    images = PreparedImages(prepared_dir, "holdout", limit=n)
    if len(images) == 0:
        images = PreparedImages(prepared_dir, "train", limit=n)
    return to_unit_range(torch.stack([images[i] for i in range(len(images))]))


def holdout_latents(latents_dir: str | Path, n: int) -> torch.Tensor:
    """The first n holdout latents, scaled as the model saw them (train's if no holdout)."""
    latents = LatentImages(latents_dir, "holdout", limit=n)
    if len(latents) == 0:
        latents = LatentImages(latents_dir, "train", limit=n)
    return torch.stack([latents[i] for i in range(len(latents))])


def timestep_loss_table(net, schedule, prediction: str, x0: torch.Tensor, *, t_points: int,
                        seed: int, batch_size: int = 64, progress: bool = False) -> pd.DataFrame:
    """Columns: t (0-indexed), log_snr, loss_mean, loss_std, n; noise seeded per image."""
    noise = initial_noise(sample_generators(seed, range(len(x0))), tuple(x0.shape[1:]),
                          x0.device)
    ts = timestep_grid(schedule.timesteps, t_points)
    # One timestep at a time, for the progress line; every row is computed alone anyway.
    with progress_bar(len(ts), "loss per timestep", unit="t", disable=not progress) as bar:
        rows = []
        for t in ts.tolist():
            rows.append(loss_per_timestep(net, schedule, x0, [t], noise, prediction,
                                          batch_size=batch_size))
            bar.update()
    losses = torch.cat(rows)  # [len(ts), N]
    return pd.DataFrame({"t": ts, "log_snr": schedule.log_snr(torch.as_tensor(ts)).numpy(),
                         "loss_mean": losses.mean(1).double().numpy(),
                         "loss_std": losses.std(1).double().numpy() if len(x0) > 1 else 0.0,
                         "n": len(x0)})


def nll_bound(net, schedule, prediction: str, x0: torch.Tensor, analysis: AnalysisConfig, *,
              variance: str, clip_x0: bool, progress: bool = False) -> dict:
    """The bits/dim bound over x0's images: mean, standard error (sd/√n), its three parts."""
    total = len(x0) * evaluations_per_image(schedule.timesteps, analysis.nll_exact_below,
                                            analysis.nll_strata)
    with progress_bar(total, "NLL bound", unit="img", disable=not progress) as bar:
        estimate = bits_per_dim_bound(net, schedule, x0, prediction, variance=variance,
                                      clip_x0=clip_x0, seed=analysis.seed,
                                      exact_below=analysis.nll_exact_below,
                                      strata=analysis.nll_strata, progress=bar.update)
    return estimate.summary()


def analyse(model_dir: str | Path, prepared_dir: str | Path, out_dir: str | Path,
            analysis: AnalysisConfig, device: str = "cpu", *, variance: str = "small",
            clip_x0: bool = True, latents_dir: str | Path = "latents") -> dict:
    """The whole stage: table, plot, quarter metrics and the bits/dim bound for the EMA model.

    `variance` and `clip_x0` (the sample section's) define the reverse process whose
    likelihood is bounded, the one `ddpm_sample` draws from.
    """
    net, schedule, config = load_model(model_dir, device)
    prediction = config["diffusion"]["prediction"]
    if config["model"].get("space", "pixel") == "latent":
        # The model's data are the scaled latents: its loss is measured on them. The
        # bits/dim bound is of a discrete pixel decoder, which latents do not have, so
        # it is not computed (report says so).
        x0 = holdout_latents(latents_dir, analysis.n_images).to(device)
        table = timestep_loss_table(net, schedule, prediction, x0, t_points=analysis.t_points,
                                    seed=analysis.seed, progress=True)
        return write_analysis(table, out_dir, schedule.timesteps)
    images = holdout_images(prepared_dir, max(analysis.n_images, analysis.nll_images)).to(device)
    table = timestep_loss_table(net, schedule, prediction, images[:analysis.n_images],
                                t_points=analysis.t_points, seed=analysis.seed, progress=True)
    likelihood = nll_bound(net, schedule, prediction, images[:analysis.nll_images], analysis,
                           variance=variance, clip_x0=clip_x0, progress=True)
    return write_analysis(table, out_dir, schedule.timesteps, likelihood)


def quarter_means(table: pd.DataFrame, timesteps: int) -> dict:
    """Mean loss in each quarter of t (q1 = the least noisy quarter) and overall."""
    quarter = np.minimum(table["t"].to_numpy() * 4 // timesteps, 3)
    out = {f"loss_{q}": float(table["loss_mean"][quarter == i].mean())
           for i, q in enumerate(QUARTERS) if (quarter == i).any()}
    out["loss_mean"] = float(table["loss_mean"].mean())
    return out


def plot_timestep_loss(table: pd.DataFrame, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_t, by_snr) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, x, label in ((by_t, table["t"], "timestep t"),
                         (by_snr, table["log_snr"], "log SNR(t) = log(ᾱ_t / (1 − ᾱ_t))")):
        ax.plot(x, table["loss_mean"], lw=1.5)
        ax.fill_between(x, (table["loss_mean"] - table["loss_std"]).clip(lower=1e-8),
                        table["loss_mean"] + table["loss_std"], alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("per-pixel MSE (mean ± std over images)")
        ax.grid(alpha=0.3, which="both")
    by_snr.invert_xaxis()  # noise increases to the right in both panels
    fig.suptitle(title or "Loss per timestep (fixed holdout images and noise)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_analysis(table: pd.DataFrame, out_dir: str | Path, timesteps: int,
                   likelihood: dict | None = None) -> dict:
    """Write the table (Parquet + CSV), the plot and the metrics; return the metrics.

    metrics.json: {"timestep_loss": quarter means, "likelihood": the bound (if given)}.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / "timestep_loss.parquet",
                     lambda tmp: table.to_parquet(tmp, index=False))
    write_atomically(out_dir / "timestep_loss.csv", lambda tmp: table.to_csv(tmp, index=False))
    plot_timestep_loss(table, out_dir / "timestep_loss.png")
    metrics = {"timestep_loss": quarter_means(table, timesteps)}
    if likelihood is not None:
        metrics["likelihood"] = likelihood
    write_json_atomically(out_dir / "metrics.json", metrics)
    return metrics
