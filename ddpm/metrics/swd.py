"""Multi-scale sliced Wasserstein distance (SWD; Karras et al. 2018, "Progressive Growing of
GANs", §5 and appendix D; their `metrics/sliced_wasserstein.py`): a sample metric that
needs no network weights, so it means the same on every machine.

Per set of images: a Laplacian pyramid (5×5 binomial filter, as OpenCV's pyrDown/pyrUp)
with levels from the full size down to 16 px; from each level, 128 random 7×7
neighbourhoods per image (7·7·3 = 147 numbers each); each level's descriptors
normalised per colour channel to zero mean and unit sd over the set. Then per level
the sliced Wasserstein-1 distance between the two sets' descriptors: 4 repeats of
128 random unit directions, each direction's projections sorted and compared
(mean |a₍ᵢ₎ − b₍ᵢ₎|), averaged. Reported ×10³ per level and their mean, as the
paper's tables do. Levels with a fine side pick up texture and noise; coarse ones,
colour and layout.

Seeded: the neighbourhood positions and the directions come from `seed`, the same
for both sets, so a set against itself gives exactly 0. Sets of different sizes
contribute the same number of descriptors (128 × the smaller N), spread evenly
over the larger set's images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ddpm.errors import DdpmError

NHOOD = 7               # side of a neighbourhood (px)
PER_IMAGE = 128         # neighbourhoods per image and level
DIR_REPEATS = 4         # repeats of ...
DIRS_PER_REPEAT = 128   # ... this many random directions
MIN_SIDE = 16           # coarsest level's side (the paper's 16 px)
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
GAUSSIAN_5x5 = torch.outer(_BINOMIAL, _BINOMIAL) / 256   # OpenCV's pyramid filter


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each channel of x [N, C, H, W] convolved with the 5×5 kernel, mirrored at the
    borders without repeating the edge (scipy.ndimage 'mirror', OpenCV's default)."""
    weight = kernel.to(x)[None, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=x.shape[1])


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur, then keep every other row and column (OpenCV's pyrDown)."""
    return _filter(x, GAUSSIAN_5x5)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between rows and columns, then blur with 4× the kernel (pyrUp)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _filter(up, 4 * GAUSSIAN_5x5)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[band 0 (full size), band 1 (half), …, the low-pass residual at the coarsest]:
    each band is a level minus the upsampled next level, so they sum back to x."""
    pyramid = [x]
    for _ in range(1, levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


def pyramid_sides(side: int) -> list[int]:
    """The levels' sides: side, side/2, … down to MIN_SIDE (just `side` below it)."""
    sides = [side]
    while sides[-1] % 2 == 0 and sides[-1] // 2 >= MIN_SIDE:
        sides.append(sides[-1] // 2)
    return sides


def _positions(count: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Top-left corners (y, x) of `count` random neighbourhoods that lie inside a level."""
    return (rng.integers(0, side - NHOOD + 1, count), rng.integers(0, side - NHOOD + 1, count))


def descriptors(level: torch.Tensor, image_index: np.ndarray, ys: np.ndarray,
                xs: np.ndarray) -> torch.Tensor:
    """[count, 147] neighbourhoods of `level` [N, 3, s, s], normalised per channel."""
    windows = level.unfold(2, NHOOD, 1).unfold(3, NHOOD, 1)  # [N, 3, s−6, s−6, 7, 7], a view
    index = [torch.as_tensor(i, device=level.device) for i in (image_index, ys, xs)]
    patches = windows.permute(0, 2, 3, 1, 4, 5)[index[0], index[1], index[2]]  # [count, 3, 7, 7]
    mean = patches.mean(dim=(0, 2, 3), keepdim=True)
    sd = patches.std(dim=(0, 2, 3), correction=0, keepdim=True).clamp(min=1e-8)  # flat: 0, not nan
    return ((patches - mean) / sd).reshape(len(patches), -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, rng: np.random.Generator,
                       repeats: int = DIR_REPEATS, dirs: int = DIRS_PER_REPEAT) -> float:
    """Mean over random unit directions of W₁ between the projections of a and b [n, d].

    W₁ of two equal-size 1-D samples is the mean |difference| of their sorted values.
    """
    values = []
    for _ in range(repeats):
        directions = torch.as_tensor(rng.standard_normal((dirs, a.shape[1])), dtype=a.dtype)
        directions = directions / directions.norm(dim=1, keepdim=True)       # dirs × d
        # dirs × n, sorted along n; numpy's sort is 15× torch's on a CPU (measured)
        pa, pb = (np.sort((directions.to(v.device) @ v.T).cpu().numpy(), axis=1) for v in (a, b))
        values.append(float(np.abs(pa - pb).mean()))
    return float(np.mean(values))


def sliced_wasserstein_distance(images_a: np.ndarray, images_b: np.ndarray, seed: int = 0,
                                device="cpu") -> dict:
    """SWD ×10³ between two sets of uint8 images [N, H, W, 3] (same size, square):
    {levels_x1e3: {side: value}, mean_x1e3, per_image, directions}."""
    for name, x in (("generated", images_a), ("reference", images_b)):
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or x.shape[1] != x.shape[2]:
            raise DdpmError(f"SWD: {name} images must be uint8 [N, H, W, 3] squares, got "
                            f"{x.dtype} {x.shape}")
    if images_a.shape[1:] != images_b.shape[1:]:
        raise DdpmError(f"SWD: generated images are {images_a.shape[1:3]} px but reference "
                        f"images {images_b.shape[1:3]} px; they must be the same size")
    side = images_a.shape[1]
    if side < NHOOD or min(len(images_a), len(images_b)) < 2:
        raise DdpmError(f"SWD needs at least 2 images per set of at least {NHOOD} px, got "
                        f"{len(images_a)} and {len(images_b)} of {side} px")
    sides = pyramid_sides(side)
    count = PER_IMAGE * min(len(images_a), len(images_b))
    # One stream for the shared draws: positions per level, then directions per level.
    rng = np.random.default_rng(seed)
    positions = [_positions(count, s, rng) for s in sides]
    desc = []
    for x in (images_a, images_b):
        pixels = torch.as_tensor(x, device=device).permute(0, 3, 1, 2).float()
        bands = laplacian_pyramid(pixels, len(sides))
        image_index = np.arange(count) % len(x)  # each image count/N times (±1)
        desc.append([descriptors(band, image_index, *pos) for band, pos in zip(bands, positions)])
    levels = {str(s): 1e3 * sliced_wasserstein(da, db, rng)
              for s, da, db in zip(sides, *desc)}
    return {"levels_x1e3": levels, "mean_x1e3": float(np.mean(list(levels.values()))),
            "per_image": PER_IMAGE, "directions": DIR_REPEATS * DIRS_PER_REPEAT}
