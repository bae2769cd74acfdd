"""Memorisation check: are generated samples closer to training images than real unseen
images are, by more than chance allows?

The search set is `n_train` training images and their horizontal mirror images
(training flips them: `train.hflip`), in two spaces: (a) cosine distance of
Inception features, the mirrored images' own features from `fid_ref`; (b) RMS
pixel distance at the training size (over pixels and channels, [0, 1] units), the
uint8 pixels mirrored. For each generated sample and each holdout image, the
distance to its nearest image in the search set.

Threshold: the r-th smallest of the n_h holdout distances, r = round(p/100 · (n_h + 1))
(at least 1; p = PERCENTILE), so that r/(n_h + 1) ≈ p/100. A sample at or below it is
flagged.

Null hypothesis: the model draws new images from the data distribution, so a sample's
distance has the same distribution F as a holdout image's. The threshold's F-value
q = F(D_(r)) is then Beta(r, n_h − r + 1) (the r-th order statistic of n_h uniforms;
mean r/(n_h + 1)), and given q the number of flagged samples among n_g is
Binomial(n_g, q): marginally Beta-binomial(n_g, r, n_h − r + 1), exactly. Its
CONFIDENCE quantile bounds the flagged count under the null; only more than that is
evidence of copying (a one-sided test at level 1 − CONFIDENCE per distance). With few
holdout images the threshold itself is uncertain and the bound wide: 89 holdout
images and 200 samples expect 1.1% but allow up to 6% (12 samples) at 99%; 20,000
holdout images and 50,000 samples allow 1.2%. A model that copies flags its copies
(distance 0, mirrored copies included; `exact_copies_*` counts them, since a few
copies among many samples can stay within the bound). Samples that sit nearer the
training images than real images do without being copies (a model that favours
dense regions) also count: the check measures "closer than unseen real images",
not copying alone. The null also assumes the holdout is like new draws: a split
by person (data.identity_file) keeps training people out of the holdout but not
out of the samples: there, new images of training people flag more often than the
null says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import betabinom

from ddpm.errors import DdpmError
from ddpm.io.atomic import write_atomically
from ddpm.metrics import blocks
from ddpm.metrics.blocks import by_row_blocks

PERCENTILE = 1.0    # of the holdout→train distances: the "closer than real unseen images" line
CONFIDENCE = 0.99   # one-sided: the null flags more than its bound in at most 1% of runs
# Search-set rows converted (to float, normalised, mirrored) at once, in elements:
# 2^25 is 256 MB of float64 pixels, so a whole training set never sits in memory as floats.
TRAIN_BLOCK = 1 << 25
# Distances up to this are a copy (0): float rounding of a copy's features is ~1e-7
# (float16 storage), while two uint8 images one level apart are 4e-6 apart at 512 px.
COPY_TOLERANCE = 1e-6


def _nearest(query: torch.Tensor, train: torch.Tensor, prepare_query, prepare_train,
             distance) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each query row's nearest train row.

    Blocks of train rows (TRAIN_BLOCK elements) times blocks of query rows
    (`by_row_blocks`); `prepare_*` turn a block of raw rows (uint8 pixels, float16
    features) into what `distance` takes, so neither set is ever converted whole.
    """
    if len(train) == 0:
        raise DdpmError("memorisation: no training images to search")
    step = max(1, TRAIN_BLOCK // max(1, train[0].numel()))
    best_d = best_i = None
    for start in range(0, len(train), step):
        block = prepare_train(train[start:start + step])
        found = by_row_blocks(query, block,
                              lambda rows, rest: distance(prepare_query(rows), rest).min(dim=1))
        d = torch.cat([b.values for b in found])
        i = torch.cat([b.indices for b in found]) + start
        if best_d is None:
            best_d, best_i = d, i
        else:  # strictly closer only: a tie keeps the earlier row, as one search would
            closer = d < best_d
            best_d, best_i = torch.where(closer, d, best_d), torch.where(closer, i, best_i)
    return best_d.cpu().numpy().astype(np.float64), best_i.cpu().numpy()


def _exact(query: np.ndarray, train: np.ndarray, index: np.ndarray, distance) -> np.ndarray:
    """float64 distance(query rows, their chosen train rows), in row blocks; at most
    COPY_TOLERANCE counts as 0. The search's matrix products leave float rounding of
    ~1e-8 on a copy (|a|² + |b|² − 2ab), different for each copy; recomputed directly,
    a copy is at 0 and ties with a threshold at 0 (a holdout image that is a copy)."""
    step = blocks.CHUNK
    d = np.concatenate([distance(np.asarray(query[i:i + step], dtype=np.float64),
                                 np.asarray(train[index[i:i + step]], dtype=np.float64))
                        for i in range(0, len(query), step)])
    return np.where(d <= COPY_TOLERANCE, 0.0, d)


def nearest_cosine(query: np.ndarray, train: np.ndarray, device="cpu"):
    """Nearest training row by cosine distance 1 − cos(q, t) of feature vectors."""
    def unit(x):
        return F.normalize(x.to(device, torch.float32), dim=1)
    _, index = _nearest(torch.as_tensor(np.asarray(query)), torch.as_tensor(np.asarray(train)),
                        unit, unit, lambda a, b: (1 - a @ b.T).clamp(min=0))
    def cosine(q, t):
        cos = (q * t).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(t, axis=1))
        return np.clip(1 - cos, 0, None)
    return _exact(query, train, index, cosine), index


def nearest_pixel(query: np.ndarray, train: np.ndarray, device="cpu", mirror: bool = False):
    """Nearest training image by RMS pixel distance of uint8 images [n, H, W, 3] (same size);
    `mirror`: search the training images flipped left-right instead."""
    if query.shape[1:] != train.shape[1:]:
        raise DdpmError(f"memorisation: generated images are {query.shape[1:3]} px but training "
                        f"images {train.shape[1:3]} px; pixel distances need the same size")
    def flat(x):  # float64: in float32, cdist's |a|² + |b|² − 2ab leaves ~3e-4 for a copy
        return x.to(device).reshape(len(x), -1).double() / 255
    def flat_train(x):
        return flat(x.flip(2) if mirror else x)   # [n, H, W, 3]: W is dim 2
    scale = np.sqrt(query[0].size)
    _, index = _nearest(torch.as_tensor(np.ascontiguousarray(query)),
                        torch.as_tensor(np.ascontiguousarray(train)), flat, flat_train,
                        lambda a, b: torch.cdist(a, b) / scale)
    def rms(q, t):
        t = t[:, :, ::-1] if mirror else t
        return np.sqrt(np.mean(((q - t) / 255) ** 2, axis=(1, 2, 3)))
    return _exact(query, train, index, rms), index


def nearest_with_flips(space: str, query: np.ndarray, train: dict, device="cpu"
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance, index, flipped) of each query row's nearest among the training images
    and their left-right mirror images, in `space` ("cosine" of train's 'features' and
    'features_flipped', or "pixel" of its uint8 'pixels', mirrored here). `flipped`
    says the nearest is the mirror image of training image `index`."""
    if space == "cosine":
        plain = nearest_cosine(query, train["features"], device)
        mirrored = nearest_cosine(query, train["features_flipped"], device)
    else:
        plain = nearest_pixel(query, train["pixels"], device)
        mirrored = nearest_pixel(query, train["pixels"], device, mirror=True)
    flipped = mirrored[0] < plain[0]   # a tie (a symmetric image) counts as unflipped
    return (np.where(flipped, mirrored[0], plain[0]), np.where(flipped, mirrored[1], plain[1]),
            flipped)


def threshold_rank(n_holdout: int, percentile: float = PERCENTILE) -> int:
    """r: the flag threshold is the r-th smallest of n_holdout distances, r/(n_h + 1) ≈ p/100."""
    return int(min(n_holdout, max(1, round(percentile / 100 * (n_holdout + 1)))))


def flags(sample_d: np.ndarray, holdout_d: np.ndarray,
          percentile: float = PERCENTILE) -> tuple[np.ndarray, float]:
    """(which samples are at or below the threshold, the threshold = the r-th smallest
    holdout distance, r = threshold_rank)."""
    threshold = float(np.sort(holdout_d)[threshold_rank(len(holdout_d), percentile) - 1])
    return sample_d <= threshold, threshold


def flagged(sample_d: np.ndarray, holdout_d: np.ndarray,
            percentile: float = PERCENTILE) -> tuple[float, float]:
    """(fraction of samples at or below the threshold, the threshold); see `flags`."""
    hits, threshold = flags(sample_d, holdout_d, percentile)
    return float(np.mean(hits)), threshold


def null_flag_bound(n_generated: int, n_holdout: int, rank: int,
                    confidence: float = CONFIDENCE) -> dict:
    """The flagged count K among n_generated samples when the model does not copy.

    K ~ Beta-binomial(n_g, r, n_h − r + 1) (see the module docstring): `rate` is its
    mean fraction r/(n_h + 1); `upper_count` its `confidence` quantile, the smallest k
    with P(K ≤ k) ≥ confidence, so P(K > upper_count) ≤ 1 − confidence; `upper` that
    as a fraction of n_g.
    """
    pmf = betabinom(n_generated, rank, n_holdout - rank + 1).pmf(np.arange(n_generated + 1))
    cdf = np.cumsum(pmf)   # scipy's cdf sums the pmf per k: O(n_g²), minutes at 50,000
    upper = int(np.argmax(cdf >= confidence - 1e-12))   # the cdf reaches ~1 at k = n_g
    return {"rate": rank / (n_holdout + 1), "upper_count": upper,
            "upper": upper / n_generated}


def memorisation(samples: dict, holdout: dict, train: dict, device="cpu") -> tuple[dict, dict]:
    """Metrics and per-sample nearest neighbours.

    `samples` and `holdout` hold 'features' and uint8 'pixels'; `train` holds
    'features', 'features_flipped' (Inception features of the same images mirrored)
    and 'pixels'. Returns (metrics, nearest): nearest has, per sample, the cosine and
    pixel distances, indices (into `train`) and `*_flipped` of its nearest training
    image, whether it is flagged, and the holdout images' distances (the baseline).
    """
    n_g, n_h = len(samples["features"]), len(holdout["features"])
    if n_h < 2:
        raise DdpmError("memorisation: need at least 2 holdout images for the baseline")
    if len(train["features_flipped"]) != len(train["features"]):
        raise DdpmError(f"memorisation: {len(train['features_flipped'])} flipped training "
                        f"features for {len(train['features'])} training images")
    for query in (samples["pixels"], holdout["pixels"]):
        if query.shape[1:] != train["pixels"].shape[1:]:
            nearest_pixel(query[:1], train["pixels"][:1])   # raises its one-line error
    rank = threshold_rank(n_h)
    null = null_flag_bound(n_g, n_h, rank)
    nearest = {}
    metrics = {"percentile": PERCENTILE, "threshold_rank": rank, "confidence": CONFIDENCE,
               "n_generated": n_g, "n_holdout": n_h, "n_train": len(train["features"]),
               "n_train_flipped": len(train["features_flipped"]),
               "null_rate": round(null["rate"], 4), "null_upper": round(null["upper"], 4),
               "null_upper_count": null["upper_count"]}
    for name, key in (("cosine", "features"), ("pixel", "pixels")):
        # One search for samples and holdout together: the training set is read once.
        d, index, flipped = nearest_with_flips(
            name, np.concatenate([samples[key], holdout[key]]), train, device)
        hits, threshold = flags(d[:n_g], d[n_g:])
        count = int(hits.sum())
        nearest.update({f"{name}_distance": d[:n_g], f"{name}_index": index[:n_g],
                        f"{name}_flipped": flipped[:n_g], f"{name}_flagged": hits,
                        f"holdout_{name}_distance": d[n_g:]})
        metrics.update({f"fraction_{name}": round(count / n_g, 4), f"flagged_{name}": count,
                        f"threshold_{name}": round(threshold, 6),
                        f"excess_{name}": round(max(0, count - null["upper_count"]) / n_g, 4),
                        f"copying_evidence_{name}": count > null["upper_count"],
                        # at distance 0: copies (or mirrored copies), whatever the count
                        f"exact_copies_{name}": int((d[:n_g] == 0).sum())})
    return metrics, nearest


def plot_distances(nearest: dict, memorised: dict,
                   path: Path) -> None:  # pragma: no mutate block (figure)
    """Histograms of sample→train and holdout→train distances, one panel per distance,
    with the flag threshold of each (`memorised`: the metrics of `memorisation`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddpm.io.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    rank, n_h = memorised["threshold_rank"], memorised["n_holdout"]
    for ax, name, label in zip(axes, ("cosine", "pixel"),
                               ("cosine distance of Inception features", "RMS pixel distance")):
        samples, base = nearest[f"{name}_distance"], nearest[f"holdout_{name}_distance"]
        bins = np.histogram_bin_edges(np.concatenate([samples, base]), bins=40)
        ax.hist(samples, bins, alpha=0.6, density=True, label=f"generated ({len(samples)})")
        ax.hist(base, bins, alpha=0.6, density=True, label=f"holdout ({len(base)})")
        ax.axvline(memorised[f"threshold_{name}"], color="k", ls="--", lw=1,
                   label=f"threshold: holdout distance {rank} of {n_h} (≈ "
                         f"{memorised['percentile']:g}st percentile)")
        ax.set_xlabel(f"{label} to the nearest training image or its mirror image")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def closest_pairs_grid(sample_pixels: np.ndarray, train_pixels: np.ndarray,
                       distance: np.ndarray, index: np.ndarray, path: Path,
                       count: int = 16, min_side: int = 64, flipped: np.ndarray | None = None
                       ) -> list[int]:  # pragma: no mutate block (figure)
    """PNG of the `count` closest (sample, its nearest training image) pairs, side by side.

    Four pairs per row, closest first; the training image mirrored where `flipped`
    says the mirror image was the nearest; images are enlarged (nearest neighbour) to
    at least `min_side` px. Returns the sample indices shown.
    """
    from PIL import Image
    from torchvision.utils import make_grid

    order = [int(i) for i in np.argsort(distance, kind="stable")[:count]]
    def nearest_image(i):
        image = train_pixels[index[i]]
        return image[:, ::-1] if flipped is not None and flipped[i] else image
    tiles = np.stack([img for i in order for img in (sample_pixels[i], nearest_image(i))])
    scale = max(1, -(-min_side // tiles.shape[1]))
    tiles_t = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    tiles_t = tiles_t.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    grid = make_grid(tiles_t, nrow=8, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    write_atomically(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
    return order
