"""Nearest-neighbour searches by blocks of rows, so an N × M distance matrix of
10,000-image sets (400 MB in float32) never sits in memory at once."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

CHUNK = 1024  # rows of a distance block: 1024 × 10,000 float32 is 40 MB
T = TypeVar("T")


def by_row_blocks(a: torch.Tensor, b: torch.Tensor,
                  block: Callable[[torch.Tensor, torch.Tensor], T]) -> list[T]:
    """[block(a[i:i + CHUNK], b) for each block of CHUNK rows of a], in order."""
    return [block(a[i:i + CHUNK], b) for i in range(0, len(a), CHUNK)]
