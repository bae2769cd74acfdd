"""Does the FID's Inception react to what the real one is known to react to?

Heusel et al. 2017 (Fig. 3, CelebA) show FID rising monotonically with the level
of six disturbances: Gaussian noise, Gaussian blur, implanted black rectangles,
swirl, salt-and-pepper noise and mixing in images of another kind. This script
applies those at fixed levels, plus contrast, 4×4 pixelation (an undertrained
DiT's artefact) and a horizontal flip (which must cost nothing), to one half of a
set of real faces at the model's size, scores each against the other half, and
prints the table with each FID as a multiple of the floor (the FID between two
random halves of the clean faces, mean ± sd over random splits).

    python scripts/bench_metric_validity.py ../shared/data/faces-a --standin-from-rest 288

The four conditions a stand-in must meet (issue 23) are checked and printed under
the table: every disturbance monotone in its level; the flip within the floor's
spread; the mildest blur, noise and contrast within 5× the floor and the strongest
level of each disturbance at least 10×; 4× pixelation above 0.5 px blur.
Features are computed once per condition; the faces are never written anywhere.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import typer
from PIL import Image, ImageFilter

from ddpm.metrics.fid import (feature_statistics, frechet_distance, inception_features,
                              load_inception, resolve_weights, weights_info)
from ddpm.metrics.resampling import frechet_lowrank
from ddpm.metrics.inception_standin import folder_images, demo_drawings, make_standin_weights

# (disturbance, levels): the fixed levels, mildest first.
LEVELS = {
    "gaussian blur σ (px)": [0.5, 1.0, 2.0],
    "gaussian noise σ (/255)": [4, 8, 16],
    "contrast ×": [0.9, 0.8],
    "black rectangle (side %)": [10, 25, 50],
    "salt and pepper (%)": [1, 5, 10],
    "swirl strength": [1, 2, 4],
    "non-face images mixed in (%)": [10, 25, 50],
    "pixelation (×)": [2, 4],
}
MILD_WITHIN = 5.0      # the mildest blur, noise and contrast stay within 5× the floor
STRONG_AT_LEAST = 10.0  # the strongest level of each disturbance reaches 10×


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(sigma)))
                     for im in x])


def noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


def contrast(x: np.ndarray, factor: float) -> np.ndarray:
    mean = x.reshape(len(x), -1).mean(1)[:, None, None, None]
    return np.clip(mean + (x - mean) * factor, 0, 255).round().astype(np.uint8)


def rectangle(x: np.ndarray, side_percent: float, rng: np.random.Generator) -> np.ndarray:
    """A black square of side `side_percent` % of the image side at a random place."""
    out, size = x.copy(), x.shape[1]
    side = max(1, round(size * side_percent / 100))
    for im in out:
        top, left = rng.integers(0, size - side + 1, 2)
        im[top:top + side, left:left + side] = 0
    return out


def salt_and_pepper(x: np.ndarray, percent: float, rng: np.random.Generator) -> np.ndarray:
    """`percent` % of the pixels set to black or white (all channels), half each."""
    out = x.copy()
    hit = rng.random(x.shape[:3]) < percent / 100
    white = rng.random(x.shape[:3]) < 0.5
    out[hit & white], out[hit & ~white] = 255, 0
    return out


def swirl(x: np.ndarray, strength: float) -> np.ndarray:
    """scikit-image's swirl about the centre (θ = strength · exp(−ρ / (r ln 2 / 5)) + atan2),
    edge pixels repeated. Its default radius, 100 px, on the 64 px CelebA images
    Heusel et al. swirled, scaled to this side.

    Bicubic, not scikit-image's default bilinear: at 32 px, bilinear resampling is
    itself a blur. Measured on 100 faces, bilinear swirl 1 kept 0.53 of the
    Laplacian energy (a 0.5 px blur keeps 0.43) and swirl 4 0.94, so strength 1
    scored as a blur and stronger swirls as less disturbed; bicubic keeps 0.86 at
    strength 1, and the row measures the swirl."""
    n, size = len(x), x.shape[1]
    c, radius = (size - 1) / 2, 100 * size / 64
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                            torch.arange(size, dtype=torch.float64), indexing="ij")
    rho = torch.hypot(xx - c, yy - c)
    theta = strength * torch.exp(-rho / (radius * math.log(2) / 5)) + torch.atan2(yy - c, xx - c)
    src_x, src_y = c + rho * torch.cos(theta), c + rho * torch.sin(theta)
    grid = torch.stack([src_x / (size - 1) * 2 - 1, src_y / (size - 1) * 2 - 1], -1)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).double()
    out = F.grid_sample(images, grid.expand(n, -1, -1, -1), mode="bicubic",
                        padding_mode="border", align_corners=True)
    return out.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def pixelate(x: np.ndarray, factor: int) -> np.ndarray:
    """Average over factor×factor blocks, then nearest-neighbour back up."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    small = F.avg_pool2d(t, factor)
    up = F.interpolate(small, scale_factor=factor, mode="nearest")
    return up.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def disturbed(kind: str, level: float, x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return {"gaussian blur σ (px)": lambda: blur(x, level),
            "gaussian noise σ (/255)": lambda: noise(x, level, rng),
            "contrast ×": lambda: contrast(x, level),
            "black rectangle (side %)": lambda: rectangle(x, level, rng),
            "salt and pepper (%)": lambda: salt_and_pepper(x, level, rng),
            "swirl strength": lambda: swirl(x, level),
            "pixelation (×)": lambda: pixelate(x, int(level))}[kind]()


class Scorer:
    """Inception features of uint8 images, timed; FID between feature sets."""

    def __init__(self, weights: str, batch: int = 50, exact: bool = False):
        self.model, self.batch, self.images, self.seconds = load_inception(weights), batch, 0, 0.0
        self.exact = exact

    def features(self, x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        f = inception_features((x[i:i + self.batch] for i in range(0, len(x), self.batch)),
                               self.model)
        self.seconds += time.perf_counter() - start
        self.images += len(x)
        return f

    def fid(self, a: np.ndarray, b: np.ndarray) -> float:
        if self.exact:  # the same FID by an SVD of the centred sets: rank ≤ N, no sqrtm
            return frechet_lowrank(a, b)
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def validity_table(scorer: Scorer, faces: np.ndarray, splits: int, seed: int = 0) -> dict:
    """{"floor": [FIDs of random half-splits], "flip": FID, (kind, level): FID}."""
    n_half = len(faces) // 2
    clean = scorer.features(faces)
    rng = np.random.default_rng(seed)
    floor = []
    for _ in range(splits):
        order = rng.permutation(len(faces))
        floor.append(scorer.fid(clean[order[:n_half]], clean[order[n_half:2 * n_half]]))
    scored, reference = faces[:n_half], clean[n_half:2 * n_half]
    rows = {"floor": floor, "flip": scorer.fid(scorer.features(scored[:, :, ::-1]), reference)}
    others = scorer.features(demo_drawings(n_half, seed=1, size=faces.shape[1]))
    own = clean[:n_half]
    for kind, levels in LEVELS.items():
        for level in levels:
            if kind.startswith("non-face"):
                k = round(n_half * level / 100)  # replace the first k: features per image
                f = np.concatenate([others[:k], own[k:]])
            else:
                f = scorer.features(disturbed(kind, level, scored, seed))
            rows[(kind, level)] = scorer.fid(f, reference)
    return rows


def check(rows: dict) -> list[tuple[str, bool]]:
    """The four conditions, each (what, holds)."""
    floor = np.mean(rows["floor"])
    spread = np.std(rows["floor"], ddof=1)
    by_kind = {kind: [rows[(kind, lv)] for lv in levels] for kind, levels in LEVELS.items()}
    mild = {k: v[0] / floor for k, v in by_kind.items()
            if k.split()[0] in ("gaussian", "contrast")}
    strong = {k: v[-1] / floor for k, v in by_kind.items()}
    return [
        ("every disturbance monotone in its level",
         all(np.all(np.diff(v) > 0) for v in by_kind.values())),
        (f"flip within the floor's spread (|flip − floor| ≤ 2 sd: "
         f"{abs(rows['flip'] - floor):.3g} vs {2 * spread:.3g})",
         abs(rows["flip"] - floor) <= 2 * spread),
        (f"mildest blur, noise, contrast ≤ {MILD_WITHIN:g}× floor "
         f"({', '.join(f'{v:.1f}×' for v in mild.values())})",
         all(v <= MILD_WITHIN for v in mild.values())),
        (f"strongest level of each ≥ {STRONG_AT_LEAST:g}× floor "
         f"(lowest {min(strong.values()):.1f}×)",
         all(v >= STRONG_AT_LEAST for v in strong.values())),
        ("4× pixelation above 0.5 px blur",
         rows[("pixelation (×)", 4)] > rows[("gaussian blur σ (px)", 0.5)]),
    ]


def markdown(rows: dict) -> str:
    floor = np.mean(rows["floor"])
    lines = ["| disturbance | level | FID | × floor |", "| --- | ---: | ---: | ---: |",
             f"| none (floor, {len(rows['floor'])} random half-splits) | – | "
             f"{floor:.3g} ± {np.std(rows['floor'], ddof=1):.2g} | 1.0 |",
             f"| horizontal flip | – | {rows['flip']:.3g} | {rows['flip'] / floor:.2f} |"]
    for kind, levels in LEVELS.items():
        lines += [f"| {kind} | {lv:g} | {rows[(kind, lv)]:.3g} | {rows[(kind, lv)] / floor:.1f} |"
                  for lv in levels]
    return "\n".join(lines)


def main(faces_dir: Path = typer.Argument(..., help="Folder of real face photographs."),
         n_half: int = typer.Option(300, help="Images per half."),
         splits: int = typer.Option(5, help="Random half-splits for the floor."),
         size: int = typer.Option(32, help="Image side, as the pipeline scores them."),
         weights: str = typer.Option("", help="Inception weights (default: torch hub's)."),
         standin_from_rest: int = typer.Option(0, help="Instead, calibrate a stand-in on this "
                                               "many faces after the scored ones (disjoint) "
                                               "and score with it."),
         dc_free: str = typer.Option("none", help="Stand-in filters made zero-mean before "
                                     "calibration: none, first (Conv2d_1a_3x3) or all."),
         exact_fid: bool = typer.Option(False, help="FID by the exact low-rank SVD "
                                        "(ddpm.metrics.resampling.frechet_lowrank) instead "
                                        "of scipy's sqrtm: same value, far faster when "
                                        "the halves are smaller than 2,048.")
         ) -> None:
    start = time.perf_counter()
    faces = folder_images(faces_dir, 2 * n_half, size, "celeba")
    if standin_from_rest:
        weights = str(Path(tempfile.mkdtemp()) / "standin.pth")
        rest = folder_images(faces_dir, standin_from_rest, size, "celeba", skip=2 * n_half)
        make_standin_weights(Path(weights), images=rest, dc_free=dc_free)
        print(f"stand-in (dc_free {dc_free}) calibrated on faces {2 * n_half}…{2 * n_half + standin_from_rest - 1}"
              f" of {faces_dir} (sorted), disjoint from the {2 * n_half} scored")
    info = weights_info(resolve_weights(weights))
    scorer = Scorer(weights, exact=exact_fid)
    rows = validity_table(scorer, faces, splits)
    print(f"weights sha256 {info['sha256'][:16]}… ({info['kind']}); "
          f"{2 * n_half} faces at {size} px, {n_half} per half; "
          f"FID {'exact low-rank SVD' if exact_fid else 'pytorch-fid sqrtm'}")
    print(markdown(rows))
    print()
    for what, holds in check(rows):
        print(f"- [{'x' if holds else ' '}] {what}")
    total = time.perf_counter() - start
    print(f"\n{scorer.images} Inception passes at {scorer.images / scorer.seconds:.1f} img/s; "
          f"{total / 60:.1f} min in all, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    typer.run(main)
