"""Every sample metric beyond the full-N FID, on the features the FID used.

FID over disjoint blocks (mean ± sd), standard errors of the full-N FID and of KID
(bootstrap and jackknife, `resampling`), KID (mean ± std over subsets, also ×10³),
precision, recall, density and coverage (on equal N), the sliced Wasserstein distance
of the pixels (`swd`, no network), and the memorisation check with its figures. The
real side comes from the fid_ref stage's cache (`real_features`), the pixels of
the same real images from the prepared data set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ddpm.data.prepared import PreparedImages, read_manifest
from ddpm.errors import DdpmError
from ddpm.evaluation.config import FidConfig
from ddpm.io.atomic import write_atomically
from ddpm.metrics.fid import load_statistics
from ddpm.metrics.fid_spread import fid_blocks
from ddpm.metrics.kid import kernel_inception_distance
from ddpm.metrics.memorisation import closest_pairs_grid, memorisation, plot_distances
from ddpm.metrics.precision_recall import PR_K, precision_recall_equal_n
from ddpm.metrics.real_features import (SPLITS, check_reference_weights, features_path,
                                        load_real_features)
from ddpm.metrics.resampling import standard_errors
from ddpm.metrics.swd import sliced_wasserstein_distance

# Where each split's images for the pixel distances are: the training images the
# memorisation check searches, the holdout images fid_ref kept (its baseline).
MEMORISATION_PIXELS = {"train": "memorisation_train_index", "holdout": "holdout_index"}


def real_pixels(prepared_dir: Path, reference: dict, real: dict) -> dict[str, np.ndarray]:
    """uint8 pixels of the real images the memorisation check compares, checked to be the
    data fid_ref saw: the training images it searches, the holdout images fid_ref kept.
    In memory as uint8: all of CelebA's training images at 64 px are 2 GB."""
    manifest = read_manifest(prepared_dir)
    pixels = {}
    for name in SPLITS:
        if manifest["split_sha256"][name] != reference["splits"][name]["data_sha256"]:
            raise DdpmError(f"{prepared_dir}: the {name} split differs from the one fid_ref "
                            "used; rerun it (dvc repro fid_ref)")
        pixels[name] = split_pixels(prepared_dir, name, real[MEMORISATION_PIXELS[name]])
    return pixels


def check_inputs(ref_npz: Path, n_generated: int, fid: FidConfig) -> tuple[dict, dict]:
    """(reference meta, real features), or one DdpmError before any Inception work."""
    reference = json.loads(ref_npz.with_suffix(".json").read_text())
    if "splits" not in reference:
        raise DdpmError(f"{ref_npz}: made before KID and memorisation existed; rerun the "
                        "fid_ref stage (dvc repro -f fid_ref)")
    check_reference_weights(ref_npz, fid.weights)
    real = load_real_features(features_path(ref_npz))
    if n_generated // fid.splits < 2:
        raise DdpmError(f"fid.splits = {fid.splits}: {n_generated} samples give blocks of "
                        f"{n_generated // fid.splits}; need at least 2 per block (lower "
                        "fid.splits or raise sample.n)")
    smallest = min(n_generated, len(real[reference["split"]]))
    if smallest <= PR_K:
        raise DdpmError(f"precision/recall needs more than {PR_K} generated and reference "
                        f"images; {smallest} is too few")
    if len(real["holdout"]) < 2 or len(real["memorisation_train"]) < 1:
        raise DdpmError(f"memorisation: needs training images and at least 2 holdout images "
                        f"(the baseline), got {len(real['memorisation_train'])} and "
                        f"{len(real['holdout'])}; raise data.holdout_fraction")
    return reference, real


def sample_metrics(features: np.ndarray, pixels: np.ndarray, ref_npz: Path,
                   prepared_dir: Path, figures_dir: Path, fid: FidConfig, device) -> dict:
    """FID over blocks, KID, precision/recall and the memorisation check → metrics groups;
    the memorisation figures and per-sample nearest neighbours → `figures_dir`."""
    reference, real = check_inputs(ref_npz, len(features), fid)
    ref_features = real[reference["split"]]
    train_pixels = real_pixels(prepared_dir, reference, real)
    blocks = fid_blocks(features, *load_statistics(ref_npz), fid.splits)
    kid = kernel_inception_distance(ref_features, features, fid.kid_subsets, fid.kid_subset_size)
    fid_se = standard_errors("fid", features, ref_features, fid.bootstrap, device=device)
    kid_se = standard_errors("kid", ref_features, features, fid.bootstrap, device=device)
    pr = precision_recall_equal_n(ref_features, features, PR_K, device)
    swd = sliced_wasserstein_distance(pixels, split_pixels(
        prepared_dir, reference["split"], real[f"{reference['split']}_index"]), device=device)
    memorised, nearest = memorisation(
        {"features": features, "pixels": pixels},
        {"features": real["holdout"], "pixels": train_pixels["holdout"]},
        {"features": real["memorisation_train"],
         "features_flipped": real["memorisation_train_flipped"],
         "pixels": train_pixels["train"]}, device)
    write_memorisation_figures(figures_dir, nearest, memorised, pixels, train_pixels["train"],
                               real["memorisation_train_index"])
    n_ref = len(ref_features)
    # The per-block FIDs stay out: `dvc exp show` has no column for a list.
    return {"fid_blocks": {"mean": round(blocks["mean"], 4), "sd": round(blocks["sd"], 4),
                           "k": blocks["k"], "block_n": blocks["block_n"]},
            "fid_se": {"bootstrap": _round(fid_se["se_bootstrap"], 4),
                       "jackknife": round(fid_se["se_jackknife"], 4), "draws": fid_se["draws"],
                       "groups": fid_se["groups"], "n_generated": len(features),
                       "n_reference": n_ref},
            "kid": {"mean": round(kid["mean"], 6), "std": round(kid["std"], 6),
                    "subsets": kid["subsets"], "subset_size": kid["subset_size"],
                    "n_generated": len(features), "n_reference": n_ref,
                    # ×10³ as the literature prints KID; full: the unbiased estimate on all
                    # of both sets, which the standard errors are of
                    "mean_x1e3": round(1e3 * kid["mean"], 4),
                    "std_x1e3": round(1e3 * kid["std"], 4),
                    "full_x1e3": round(1e3 * kid_se["value"], 4),
                    "se_bootstrap_x1e3": _round(kid_se["se_bootstrap"], 4, 1e3),
                    "se_jackknife_x1e3": round(1e3 * kid_se["se_jackknife"], 4),
                    "draws": kid_se["draws"], "groups": kid_se["groups"]},
            # on equal N: the larger set's seeded random subset of the smaller's size
            "precision_recall": {**{k: round(pr[k], 4) for k in PR_KEYS},
                                 "k": pr["k"], "n_generated": pr["n_generated"],
                                 "n_reference": pr["n_reference"]},
            "swd": {"levels_x1e3": {side: round(v, 3) for side, v in swd["levels_x1e3"].items()},
                    "mean_x1e3": round(swd["mean_x1e3"], 3), "per_image": swd["per_image"],
                    "directions": swd["directions"], "n_generated": len(pixels),
                    "n_reference": len(real[f"{reference['split']}_index"])},
            "memorisation": memorised}


PR_KEYS = ("precision", "recall", "density", "coverage")


def _round(value: float | None, digits: int, scale: float = 1.0) -> float | None:
    return None if value is None else round(scale * value, digits)


def split_pixels(prepared_dir: Path, split: str, indices: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, 3] pixels of the prepared images of `split` at `indices`."""
    images = PreparedImages(prepared_dir, split)
    return np.stack([images[int(i)].permute(1, 2, 0).numpy() for i in indices])


def write_memorisation_figures(folder: Path, nearest: dict, memorised: dict,
                               pixels: np.ndarray, train_pixels: np.ndarray,
                               train_index: np.ndarray) -> None:
    """Histogram of the distances, grid of the 16 closest pairs, per-sample CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_distances(nearest, memorised, folder / "distances.png")
    closest_pairs_grid(pixels, train_pixels, nearest["cosine_distance"],
                       nearest["cosine_index"], folder / "closest_pairs.png",
                       flipped=nearest["cosine_flipped"])
    table = pd.DataFrame({
        "sample": np.arange(len(pixels)),
        "cosine_distance": nearest["cosine_distance"],
        "cosine_train_index": train_index[nearest["cosine_index"]],  # index in the split
        "pixel_distance": nearest["pixel_distance"],
        "pixel_train_index": train_index[nearest["pixel_index"]],
        # the nearest is that training image mirrored; flagged: at or below the threshold
        "cosine_flipped": nearest["cosine_flipped"], "pixel_flipped": nearest["pixel_flipped"],
        "cosine_flagged": nearest["cosine_flagged"], "pixel_flagged": nearest["pixel_flagged"]})
    write_atomically(folder / "nearest.csv", lambda tmp: table.to_csv(tmp, index=False))
