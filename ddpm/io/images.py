"""Image tensors as pixels: [-1, 1] floats to uint8, and uint8 batches to one grid image.

The training run's sample grids, the generate stage's shards, grid and trajectory movie,
and the FID sweep's samples all convert through here.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.utils import make_grid


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float → uint8 [0, 255] (rounded, clamped)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def grid_image(images_uint8: torch.Tensor, nrow: int) -> Image.Image:
    """uint8 [B, 3, H, W] → one PIL grid image with 2-px gaps."""
    grid = make_grid(images_uint8, nrow=nrow, padding=2, pad_value=255)  # [3, H', W']
    return Image.fromarray(grid.permute(1, 2, 0).cpu().numpy())
