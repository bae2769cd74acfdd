"""FID of a run: reference statistics of real images, scores of generated shards, step sweeps.

The network, preprocessing and Fréchet distance are pytorch-fid's (`ddpm.metrics.fid`);
this module only feeds them: real images straight from the prepared PNG shards,
generated images straight from the uint8 sample shards (no PNG round trip).
The same features feed the other metrics (`ddpm.metrics`): KID, the FID spread
over blocks, precision/recall and the memorisation check.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from ddpm.config import FidConfig, SampleConfig
from ddpm.diffusion.registry import get_sampler, sampler_nfe
from ddpm.errors import ConfigError
from ddpm.io.atomic import write_atomically, write_json_atomically
from ddpm.io.figures import save_figure
from ddpm.io.progress import progress_bar
from ddpm.metrics.fid import (feature_statistics, frechet_distance, inception_features,
                              load_inception, load_statistics, resolve_weights,
                              save_statistics, weights_info)
from ddpm.metrics.fid_spread import frechet_to_reference, psd_sqrt
from ddpm.metrics.real_features import (SPLITS, features_path, kept_indices,
                                        load_reference_features, memorisation_indices,
                                        save_real_features)
from ddpm.metrics.resampling import standard_errors
from ddpm.metrics.sample_scores import check_inputs, sample_metrics
from ddpm.models.checkpoint import load_model
from ddpm.sampling.generate import iter_shards, run_sampler, sampling_net
from ddpm.training.callbacks import to_uint8
from ddpm.training.data import PreparedImages, read_manifest


def rebatch(arrays: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Regroup a stream of image arrays [k, H, W, 3] into batches of `batch_size`."""
    pending: list[np.ndarray] = []
    count = 0
    for array in arrays:
        pending.append(array)
        count += len(array)
        while count >= batch_size:
            joined = np.concatenate(pending)
            yield joined[:batch_size]
            pending, count = [joined[batch_size:]], count - batch_size
    if count:
        yield np.concatenate(pending)


def prepared_arrays(prepared_dir: Path, split: str,
                    indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """The images of `split` (or those at `indices`), one at a time as uint8 [1, H, W, 3]."""
    images = PreparedImages(prepared_dir, split)
    for i in (range(len(images)) if indices is None else indices):
        yield images[int(i)].permute(1, 2, 0).numpy()[None]


def _features(arrays, count: int, weights: str, batch_size: int, device, desc: str):
    model = load_inception(weights, device)
    with progress_bar(count, desc) as bar:
        return inception_features(rebatch(arrays, batch_size), model, device, bar.update)


def reference_statistics(prepared_dir: str | Path, out_npz: str | Path, *, split: str,
                         weights: str, batch_size: int, max_real: int = 10000,
                         memorisation_train: int, device="cpu") -> dict:
    """μ, Σ of up to `max_real` real images of `split` (evenly spaced; all when fewer) →
    `out_npz` (+ `.json` with counts, data hash), and the features of up to `max_real`
    images of each split → `features.npz` beside it. One cap for every real image that
    Inception sees: a demo keeps it small, a real run raises it to the split's size.

    `features.npz` also holds the features of the `memorisation_train` training images
    (evenly spaced; 0 = all) the memorisation check searches and of their mirror images
    (training flips images): Inception sees the mirrored ones, and those of the
    memorisation images that `max_real` did not keep, once more. μ, Σ stay those of
    the unflipped kept images.
    """
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    kept, indices, splits = {}, {}, {}
    memorised = memorisation_indices(manifest["counts"]["train"], memorisation_train)
    for name in SPLITS:
        count = manifest["counts"][name]
        indices[name] = kept_indices(count, max_real)
        # train: the kept images and the memorisation check's, each once
        wanted = np.union1d(indices[name], memorised) if name == "train" else indices[name]
        found = _features(prepared_arrays(prepared_dir, name, wanted), len(wanted), weights,
                          batch_size, device, f"real features ({name})")
        kept[name] = found[np.searchsorted(wanted, indices[name])]
        if name == "train":
            memorised_features = found[np.searchsorted(wanted, memorised)]
        splits[name] = {"n": count, "kept": len(indices[name]),
                        "data_sha256": manifest["split_sha256"][name]}
    mirrored = (a[:, :, ::-1] for a in prepared_arrays(prepared_dir, "train", memorised))
    flipped = _features(mirrored, len(memorised), weights, batch_size, device,
                        "real features (train, flipped)")
    mu, sigma = feature_statistics(kept[split])
    meta = {"n": len(indices[split]), "split": split, "split_size": manifest["counts"][split],
            "data_sha256": manifest["split_sha256"][split], "img_size": manifest["img_size"],
            "max_real": max_real, "splits": splits,
            "memorisation": {"memorisation_train": memorisation_train,
                             "train": len(memorised), "train_flipped": len(memorised)},
            "inception_images": len(np.union1d(indices["train"], memorised))
                                + len(indices["holdout"]) + len(memorised),
            "inception": weights_info(resolve_weights(weights))}
    save_real_features(features_path(out_npz), kept, indices,
                       {"features": memorised_features, "features_flipped": flipped,
                        "index": memorised})
    save_statistics(out_npz, mu, sigma, meta)  # last: its .json marks a complete reference
    return meta


def generated_fid(shards: Sequence[np.ndarray], n: int, ref_npz: str | Path, fid: FidConfig,
                  device="cpu") -> tuple[float, np.ndarray]:
    """(FID, Inception features [n, 2048]) of the generated images `shards` (uint8
    [k, H, W, 3] arrays, n images in all) against the reference statistics."""
    features = _features(iter(shards), n, fid.weights, fid.batch_size, device, "FID generated")
    return frechet_distance(*feature_statistics(features), *load_statistics(ref_npz)), features


def score_samples(samples_dir: str | Path, ref_npz: str | Path, out_json: str | Path, *,
                  fid: FidConfig, prepared_dir: str | Path, figures_dir: str | Path,
                  device="cpu") -> dict:
    """FID of the generated shards against the reference statistics, and the other
    sample metrics (`sample_metrics`) → metrics JSON (+ memorisation figures)."""
    samples_dir, ref_npz = Path(samples_dir), Path(ref_npz)
    samples = json.loads((samples_dir / "manifest.json").read_text())
    reference, _ = check_inputs(ref_npz, samples["n"], fid)  # fail before Inception runs
    shards = list(iter_shards(samples_dir))  # read once: Inception and the pixel metrics
    fid_value, features = generated_fid(shards, samples["n"], ref_npz, fid, device)
    pixels = np.concatenate(shards)
    more = sample_metrics(features, pixels, ref_npz, Path(prepared_dir), Path(figures_dir),
                          fid, device)
    inception = weights_info(resolve_weights(fid.weights))
    sample = samples["sample"]
    reads = set(get_sampler(sample["sampler"]).options.values())  # settings it uses
    metrics = {"fid": round(fid_value, 4), "n_generated": samples["n"],
               "n_reference": reference["n"],
               "reference_split": reference["split"], "sampler": sample["sampler"],
               "steps": sample["steps"] if "steps" in reads else None,
               "eta": sample["eta"] if "eta" in reads else None,
               "nfe": samples.get("nfe"),
               "use_ema": sample["use_ema"], "precision": sample.get("precision"),
               "inception_official": inception["official"],
               "inception_sha256": inception["sha256"], **more}
    write_json_atomically(out_json, metrics)
    return metrics


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
        uses_steps = "steps" in get_sampler(name).options.values()
        for steps in (dict.fromkeys(steps_list) if uses_steps else [None]):
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
    if min(n, len(reference)) < 3:   # the jackknife leaves a group out and still needs 2
        raise ConfigError(f"FID sweep standard errors need at least 3 samples and 3 reference "
                          f"images, got sample.sweep_n = {n} and {len(reference)} (fid.max_real)")
    net, schedule, config = load_model(model_dir, device, use_ema=sample.use_ema)
    net = sampling_net(net, sample, device)  # once: every point reuses the compiled graph
    points = sweep_points(samplers, steps_list, schedule.timesteps)
    inception = load_inception(weights, device)
    # pytorch-fid's formula with Tr (Σ Σ_r)^½ from eigenvalues (ddpm.metrics.fid_spread,
    # tested equal to it): Σ_r^½ once, then milliseconds per point instead of a 2048²
    # scipy sqrtm each (~15 s on two cores). The run's headline FID stays pytorch-fid's.
    mu_r, sigma_r = load_statistics(ref_npz)
    root_r, trace_r = psd_sqrt(sigma_r), float(np.trace(sigma_r))
    img_size, prediction = config["model"]["img_size"], config["diffusion"]["prediction"]
    rows = []
    for name, steps, nfe in points:
        cfg = dataclasses.replace(sample, sampler=name, steps=steps or sample.steps)
        arrays = (to_uint8(run_sampler(net, schedule, cfg, prediction,
                                       range(start, min(start + sample.batch_size, n)),
                                       img_size, device).images).permute(0, 2, 3, 1).cpu()
                  .numpy() for start in range(0, n, sample.batch_size))
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
