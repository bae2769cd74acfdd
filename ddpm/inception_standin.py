"""Stand-in weights for pytorch-fid's Inception, for tests and machines without network.

    ***********************************************************************
    *  FIDs computed with stand-in weights compare runs WITH EACH OTHER    *
    *  ONLY. They are NOT FIDs in the sense of Heusel et al. 2017 and must *
    *  NEVER be put next to published numbers. `ddpm.fid.weights_info`    *
    *  reports them as "official": false wherever an FID is written.      *
    ***********************************************************************

The stand-in is pytorch-fid's own FID InceptionV3 (what `fid_inception_v3` builds),
randomly initialised from a seed and then calibrated. Calibration matters: with
plain random initialisation every layer shrinks the signal, the 2048-d pool
features come out near 1e-7 and identical across images, so every FID is ~0 and a
test such as "our FID equals pytorch-fid's" passes whatever the code does. Resetting
the BatchNorm running statistics and re-estimating them on a few hundred images,
through the same 299-px bilinear resize and [-1, 1] scaling pytorch-fid applies,
gives unit-scale features that differ between images, so FIDs separate distributions.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid import inception as pf_inception
from pytorch_fid.inception import InceptionV3

from ddpm.atomic import write_atomically
from ddpm.fid import FEATURE_DIM, images_to_tensor, inception_features, state_dict_source

CALIBRATION_BATCH = 32
PROBE_IMAGES = 32
# A calibrated network gives pool features of order 1 that vary across images;
# an uncalibrated one gives ~1e-7. Anything below this is a failed calibration.
MIN_FEATURE_SPREAD = 0.1


def smooth_random_images(n: int, seed: int = 0, size: int = 64,
                         batch_size: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
    """Batches of uint8 [b, size, size, 3] images: upsampled low-res noise plus colour blobs.

    Smooth, varied, photo-like statistics (large uniform regions, soft edges) with no
    real data; the same (n, seed, size) always gives the same images.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        low = torch.from_numpy(rng.random((b, 3, 6, 6), dtype=np.float32))
        x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        yy, xx = np.mgrid[0:size, 0:size] / size
        for _ in range(3):  # Gaussian colour blobs at random places and radii
            centre = rng.random((b, 2, 1, 1))
            radius = rng.uniform(0.05, 0.3, (b, 1, 1))
            mask = np.exp(-((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2) / radius ** 2)
            colour = rng.random((b, 3, 1, 1))
            m = torch.from_numpy(mask[:, None].astype(np.float32))
            x = x * (1 - m) + torch.from_numpy(colour.astype(np.float32)) * m
        yield (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def untrained_inception(seed: int) -> tuple[InceptionV3, torch.nn.Module]:
    """pytorch-fid's FID InceptionV3 with torch's default random init from `seed`.

    Returns (feature extractor, network): the second is the torchvision-layout
    Inception whose state dict pytorch-fid's weights file holds; the extractor's
    blocks are its very modules, so calibrating one calibrates the other.
    `fid_inception_v3` loads weights right after building (through the private
    `_inception_v3` we wrap to see the network); we hand it the network's own
    freshly initialised state dict, so its exact architecture is kept.
    """
    built = []
    original_build = pf_inception._inception_v3

    def build_and_remember(*args, **kwargs):
        built.append(original_build(*args, **kwargs))
        return built[-1]

    pf_inception._inception_v3 = build_and_remember
    try:
        with torch.random.fork_rng(devices=[]), state_dict_source(lambda: built[-1].state_dict()):
            torch.manual_seed(seed)
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]])
    finally:
        pf_inception._inception_v3 = original_build
    return model.eval(), built[-1]


def calibrate_batch_norm(model: InceptionV3, batches: Iterable[np.ndarray]) -> None:
    """Re-estimate every BatchNorm's running mean/variance on `batches` (uint8 [N,H,W,3]).

    Train mode normalises each layer by its batch statistics; momentum None makes the
    running statistics their plain average over batches.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(images_to_tensor(batch))  # resizes to 299, scales to [-1, 1] itself
    for norm in norms:
        norm.momentum = 0.1  # torch's default, so the saved module is an ordinary one
    model.eval()


def feature_spread(features: np.ndarray) -> dict:
    """max |f| and the across-image standard deviation (mean over the 2048 dims)."""
    return {"max_abs": float(np.abs(features).max()),
            "std_across_images": float(features.std(axis=0).mean())}


def make_standin_weights(path: Path, n_images: int = 256, seed: int = 0,
                         image_source: Iterable[np.ndarray] | None = None) -> dict:
    """Save calibrated stand-in Inception weights to `path`; return the feature spread
    {"before": ..., "after": ...} calibration.

    STAND-IN WEIGHTS GIVE FIDs THAT COMPARE RUNS WITH EACH OTHER ONLY, NEVER WITH
    PUBLISHED NUMBERS (see the module docstring).

    `image_source`: uint8 [N,H,W,3] batches to calibrate on (default: `n_images`
    smooth random images from `seed`). The spread is measured in eval mode on
    separate probe images; a spread below MIN_FEATURE_SPREAD raises RuntimeError
    rather than saving weights that would make every FID ~0.
    """
    path = Path(path)
    model, network = untrained_inception(seed)
    probe = list(smooth_random_images(PROBE_IMAGES, seed + 1))
    before = feature_spread(inception_features(probe, model))
    images = image_source if image_source is not None else smooth_random_images(n_images, seed)
    calibrate_batch_norm(model, images)
    after = feature_spread(inception_features(probe, model))
    if after["std_across_images"] < MIN_FEATURE_SPREAD:
        raise RuntimeError(f"stand-in calibration failed: features {after}")
    _save_atomically(network.state_dict(), path)
    return {"before": before, "after": after}


def _save_atomically(state_dict: dict, path: Path) -> None:
    """torch.save through memory: the file's bytes (so its sha256) then depend on the
    tensors only, not on the temporary file name torch records inside its archive."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
