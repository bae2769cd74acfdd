"""Memorisation check: is a generated sample closer to some training image than real
unseen images are?

For each generated sample, its nearest training image by (a) cosine distance of
Inception features and (b) pixel distance at the training size (root mean square
over pixels and channels, in [0, 1] units). The same for each holdout image gives
the baseline: how close a real image that was never trained on comes to the
training set. A sample at or below the 1st percentile of the holdout distances is
flagged; a model that does not copy flags about 1% of its samples, one that copies
flags the copies (distance ~0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm.atomic import write_atomically
from ddpm.errors import DdpmError
from ddpm.metrics.blocks import by_row_blocks

PERCENTILE = 1.0  # of the holdout→train distances: the "closer than real unseen images" line


def _nearest(query: torch.Tensor, train: torch.Tensor, distance) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each query row's nearest train row, in blocks of rows."""
    best = by_row_blocks(query, train, lambda rows, rest: distance(rows, rest).min(dim=1))
    dists = torch.cat([b.values for b in best]).cpu().numpy().astype(np.float64)
    return dists, torch.cat([b.indices for b in best]).cpu().numpy()


def nearest_cosine(query: np.ndarray, train: np.ndarray, device="cpu"):
    """Nearest training row by cosine distance 1 − cos(q, t) of feature vectors."""
    q = F.normalize(torch.as_tensor(query, dtype=torch.float32, device=device), dim=1)
    t = F.normalize(torch.as_tensor(train, dtype=torch.float32, device=device), dim=1)
    return _nearest(q, t, lambda a, b: (1 - a @ b.T).clamp(min=0))


def nearest_pixel(query: np.ndarray, train: np.ndarray, device="cpu"):
    """Nearest training image by RMS pixel distance of uint8 images [n, H, W, 3] (same size)."""
    if query.shape[1:] != train.shape[1:]:
        raise DdpmError(f"memorisation: generated images are {query.shape[1:3]} px but training "
                        f"images {train.shape[1:3]} px; pixel distances need the same size")
    def flat(x):  # float64: in float32, cdist's |a|² + |b|² − 2ab leaves ~3e-4 for a copy
        return torch.as_tensor(x, device=device).reshape(len(x), -1).double() / 255
    scale = np.sqrt(query[0].size)
    return _nearest(flat(query), flat(train), lambda a, b: torch.cdist(a, b) / scale)


def flagged(sample_d: np.ndarray, holdout_d: np.ndarray) -> tuple[float, float]:
    """(fraction of samples at or below the threshold, threshold = 1st pct of holdout_d)."""
    threshold = float(np.percentile(holdout_d, PERCENTILE))
    return float(np.mean(sample_d <= threshold)), threshold


def memorisation(samples: dict, holdout: dict, train: dict, device="cpu") -> tuple[dict, dict]:
    """Metrics and per-sample nearest neighbours; each argument holds 'features' and 'pixels'.

    Returns (metrics, nearest) where nearest has, per sample, the cosine and pixel
    distances and indices (into `train`) of its nearest training image, and the
    holdout images' distances (the baseline).
    """
    if len(holdout["features"]) < 2:
        raise DdpmError("memorisation: need at least 2 holdout images for the baseline")
    nearest = {}
    metrics = {"percentile": PERCENTILE, "n_generated": len(samples["features"]),
               "n_train": len(train["features"]), "n_holdout": len(holdout["features"])}
    for name, find, key in (("cosine", nearest_cosine, "features"),
                            ("pixel", nearest_pixel, "pixels")):
        d, index = find(samples[key], train[key], device)
        base, _ = find(holdout[key], train[key], device)
        fraction, threshold = flagged(d, base)
        nearest.update({f"{name}_distance": d, f"{name}_index": index,
                        f"holdout_{name}_distance": base})
        metrics.update({f"fraction_{name}": round(fraction, 4),
                        f"threshold_{name}": round(threshold, 6)})
    return metrics, nearest


def plot_distances(nearest: dict, thresholds: dict, path: Path) -> None:
    """Histograms of sample→train and holdout→train distances, one panel per distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddpm.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, name, label in zip(axes, ("cosine", "pixel"),
                               ("cosine distance of Inception features", "RMS pixel distance")):
        samples, base = nearest[f"{name}_distance"], nearest[f"holdout_{name}_distance"]
        bins = np.histogram_bin_edges(np.concatenate([samples, base]), bins=40)
        ax.hist(samples, bins, alpha=0.6, density=True, label=f"generated ({len(samples)})")
        ax.hist(base, bins, alpha=0.6, density=True, label=f"holdout ({len(base)})")
        ax.axvline(thresholds[name], color="k", ls="--", lw=1,
                   label=f"{PERCENTILE:g}st percentile of holdout")
        ax.set_xlabel(f"{label} to the nearest training image")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def closest_pairs_grid(sample_pixels: np.ndarray, train_pixels: np.ndarray,
                       distance: np.ndarray, index: np.ndarray, path: Path,
                       count: int = 16, min_side: int = 64) -> list[int]:
    """PNG of the `count` closest (sample, its nearest training image) pairs, side by side.

    Four pairs per row, closest first; images are enlarged (nearest neighbour) to at
    least `min_side` px. Returns the sample indices shown.
    """
    from PIL import Image
    from torchvision.utils import make_grid

    order = [int(i) for i in np.argsort(distance, kind="stable")[:count]]
    tiles = np.stack([img for i in order for img in (sample_pixels[i], train_pixels[index[i]])])
    scale = max(1, -(-min_side // tiles.shape[1]))
    tiles_t = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    tiles_t = tiles_t.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    grid = make_grid(tiles_t, nrow=8, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    write_atomically(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
    return order
