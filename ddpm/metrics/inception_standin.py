"""Stand-in weights for pytorch-fid's Inception, for tests and machines without network.

    ***********************************************************************
    *  FIDs computed with stand-in weights compare runs WITH EACH OTHER    *
    *  ONLY. They are NOT FIDs in the sense of Heusel et al. 2017 and must *
    *  NEVER be put next to published numbers. `ddpm.metrics.fid.weights_info`    *
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

What it is calibrated on decides what it measures. Calibrated on smooth colour
blobs, texture channels were normalised by tiny variances: a 0.5 px blur of faces
cost 25× the real-vs-real floor and blocky DiT samples beat clean faces. So the
default calibrates on the demo's own kind of images (its face drawings, a set no run
draws), and `ddpm inception --standin --calibrate-on FOLDER` on photographs of the
researcher's kind. Even so it is not the real Inception:
`scripts/bench_metric_validity.py` (Heusel et al. 2017's disturbances on CelebA,
table in docs/benchmarks.md) finds a face-calibrated stand-in ranks gross failures
(salt and pepper, non-face images) far above faces but leaves blur, contrast, swirl
and rectangles within its unstable floor. Read its FIDs with their standard errors.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from pytorch_fid import inception as pf_inception
from pytorch_fid.inception import InceptionV3

from ddpm.data.demo import draw_face
from ddpm.data.images import prepare_image
from ddpm.errors import DdpmError
from ddpm.io.atomic import torch_save_atomically
from ddpm.metrics.fid import FEATURE_DIM, images_to_tensor, inception_features, state_dict_source

CALIBRATION_BATCH = 32
PROBE_IMAGES = 32
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# Demo drawing sets are numbered by data.seed; the stand-in's come from far above.
DEMO_SEED_BASE = 1_000_003
# A calibrated network gives pool features of order 1 that vary across images;
# an uncalibrated one gives ~1e-7. Anything below this is a failed calibration.
MIN_FEATURE_SPREAD = 0.1


def demo_drawings(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    """uint8 [n, size, size, 3]: the demo's face drawings of set `DEMO_SEED_BASE + seed`.

    A set disjoint from any demo data set a run draws (those use `data.seed`, small
    integers), prepared as the pipeline prepares images (centre crop, Lanczos resize).
    """
    return np.stack([_decoded(prepare_image(draw_face(DEMO_SEED_BASE + seed, i), "center",
                                            size, 1)) for i in range(n)])


def folder_images(folder: Path, n: int, size: int = 32, crop: str = "center",
                  skip: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3]: image files `skip` … `skip + n` of `folder` in name order,
    prepared as the pipeline prepares them (`crop`, Lanczos resize to `size`)."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < skip + n:
        raise DdpmError(f"{folder}: {len(paths)} images, need {skip + n} "
                        f"(skip {skip} + {n}); lower the count")
    return np.stack([_decoded(prepare_image(p.read_bytes(), crop, size, 1))
                     for p in paths[skip:skip + n]])


def _decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def in_batches(images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


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
    """Re-estimate every BatchNorm's running mean/variance on `batches` (uint8 [N,H,W,3])."""
    # the model resizes to 299 and scales to [-1, 1] itself
    reestimate_batch_norm(model, (images_to_tensor(batch) for batch in batches))


def reestimate_batch_norm(module: torch.nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """Re-estimate the running mean/variance of every BatchNorm in `module` on `inputs`.

    Train mode normalises each layer by its batch statistics; momentum None makes the
    running statistics their plain average over batches.
    """
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    module.train()
    with torch.no_grad():
        for x in inputs:
            module(x)
    for norm in norms:
        norm.momentum = 0.1  # torch's default, so the saved module is an ordinary one
    module.eval()


DC_FREE_CHOICES = ("none", "first", "all")


def make_dc_free(network: torch.nn.Module, which: str = "first") -> int:
    """Subtract from every conv filter its mean over spatial positions (per output and
    input channel), so the filter does not respond to a flat input: "first" edits only
    `Conv2d_1a_3x3` (no feature then sees flat colour), "all" every conv with more than
    one tap (a 1×1 conv would be zeroed; those are left). Returns how many convs changed.
    """
    if which not in ("first", "all"):  # "none" is make_standin_weights' choice, not an edit
        raise DdpmError(f"dc_free must be one of ('first', 'all') here, got {which!r}")
    convs = ([network.Conv2d_1a_3x3.conv] if which == "first" else
             [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)])
    changed = 0
    with torch.no_grad():
        for conv in convs:
            if conv.weight[0, 0].numel() > 1:
                conv.weight -= conv.weight.mean(dim=(2, 3), keepdim=True)
                changed += 1
    return changed


def feature_spread(features: np.ndarray) -> dict:
    """max |f| and the across-image standard deviation (mean over the 2048 dims)."""
    return {"max_abs": float(np.abs(features).max()),
            "std_across_images": float(features.std(axis=0).mean())}


def make_standin_weights(path: Path, n_images: int = 256, seed: int = 0,
                         images: np.ndarray | None = None, dc_free: str = "none") -> dict:
    """Save calibrated stand-in Inception weights to `path`; return the feature spread
    {"before": ..., "after": ...} calibration and what it was calibrated on.

    STAND-IN WEIGHTS GIVE FIDs THAT COMPARE RUNS WITH EACH OTHER ONLY, NEVER WITH
    PUBLISHED NUMBERS (see the module docstring).

    `images`: uint8 [N,H,W,3] of the kind the FID will score, at the size it will
    score them (default: `n_images` + PROBE_IMAGES demo drawings at 32 px). The last
    PROBE_IMAGES are held out: the spread is measured on them in eval mode, and a
    spread below MIN_FEATURE_SPREAD raises RuntimeError rather than saving weights
    that would make every FID ~0.

    `dc_free`: "none" (default) keeps torch's random filters; "first" or "all" makes
    the first or every spatial conv filter zero-mean before calibration (`make_dc_free`).
    """
    path = Path(path)
    if images is None:
        images = demo_drawings(n_images + PROBE_IMAGES, seed)
    if len(images) <= PROBE_IMAGES:
        raise DdpmError(f"stand-in calibration needs more than {PROBE_IMAGES} images, "
                        f"got {len(images)}")
    calibration, probe = images[:-PROBE_IMAGES], images[-PROBE_IMAGES:]
    if dc_free not in DC_FREE_CHOICES:
        raise DdpmError(f"dc_free must be one of {DC_FREE_CHOICES}, got {dc_free!r}")
    model, network = untrained_inception(seed)
    if dc_free != "none":
        make_dc_free(network, dc_free)
    before = feature_spread(inception_features(in_batches(probe), model))
    calibrate_batch_norm(model, in_batches(calibration))
    after = feature_spread(inception_features(in_batches(probe), model))
    if after["std_across_images"] < MIN_FEATURE_SPREAD:
        raise RuntimeError(f"stand-in calibration failed: features {after}")
    torch_save_atomically(network.state_dict(), path)
    return {"before": before, "after": after, "calibration_images": len(calibration),
            "size": int(images.shape[1])}
