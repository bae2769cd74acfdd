"""The fid stage: FID of the generated shards against fid_ref's statistics, and the
other sample metrics (`ddpm.metrics.sample_scores`).

Generated images go to Inception straight from the uint8 sample shards (no PNG round
trip), through the same feature extraction as the real ones (`reference._features`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ddpm.autoencoder.outputs import RECONSTRUCTIONS
from ddpm.data.prepared import PreparedImages
from ddpm.diffusion.registry import get_sampler
from ddpm.evaluation.config import FidConfig
from ddpm.evaluation.reference import _features
from ddpm.io.atomic import write_json_atomically
from ddpm.metrics.fid import (
    feature_statistics,
    frechet_distance,
    load_statistics,
    resolve_weights,
    weights_info,
)
from ddpm.metrics.sample_scores import check_inputs, sample_metrics
from ddpm.sampling.generate import iter_shards


def generated_fid(shards: Sequence[np.ndarray], n: int, ref_npz: str | Path, fid: FidConfig,
                  device="cpu") -> tuple[float, np.ndarray]:
    """(FID, Inception features [n, 2048]) of the generated images `shards` (uint8
    [k, H, W, 3] arrays, n images in all) against the reference statistics."""
    features = _features(iter(shards), n, fid.weights, fid.batch_size, device, "FID generated")
    return frechet_distance(*feature_statistics(features), *load_statistics(ref_npz)), features


def score_samples(samples_dir: str | Path, ref_npz: str | Path, out_json: str | Path, *,
                  fid: FidConfig, prepared_dir: str | Path, figures_dir: str | Path,
                  device="cpu", autoencoder_dir: str | Path | None = None) -> dict:
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
               "inception_official": inception["official"], "inception_kind": inception["kind"],
               "inception_sha256": inception["sha256"], **more}
    recon = Path(autoencoder_dir) / RECONSTRUCTIONS if autoencoder_dir else None
    if recon is not None and recon.is_file():
        metrics["reconstruction"] = reconstruction_fid(np.load(recon), ref_npz, fid,
                                                       Path(prepared_dir), device)
    write_json_atomically(out_json, metrics)
    return metrics


def reconstruction_fid(reconstructions: np.ndarray, ref_npz: Path, fid: FidConfig,
                       prepared_dir: Path, device="cpu") -> dict:
    """Latent space: FID of the autoencoder's holdout reconstructions, the floor any latent
    model's samples can reach, beside the FID of the same holdout originals at the same N
    (FID is biased upward at small N: the difference is what the autoencoder costs)."""
    n = len(reconstructions)
    holdout = PreparedImages(prepared_dir, "holdout", limit=n)
    if len(holdout) < n:  # the autoencoder stage fell back to training images too
        holdout = PreparedImages(prepared_dir, "train", limit=n)
    originals = torch.stack([holdout[i] for i in range(n)]).permute(0, 2, 3, 1).numpy()
    values = {name: generated_fid([images], n, ref_npz, fid, device)[0]
              for name, images in (("fid", reconstructions), ("fid_originals", originals))}
    return {**{k: round(v, 4) for k, v in values.items()}, "n": n,
            "images": "holdout reconstructions (posterior mean)"}
