"""Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage
(Naeem et al. 2020), from k-nearest-neighbour balls in feature space.

Each set's manifold is the union of balls around its points, each ball's radius
the distance to that point's k-th nearest neighbour in its own set.
  precision = share of generated points inside the real manifold   (fidelity)
  recall    = share of real points inside the generated manifold   (diversity)
  density   = mean number of real balls holding a generated point, / k
  coverage  = share of real balls holding at least one generated point
No maintained implementation is installed (torchmetrics has none), so this is the
closed form on torch.cdist, in row chunks so N_real × N_generated never sits in memory.

The four depend on the set sizes, not only on the distributions: with M generated
and N real points from one distribution, a real point is covered when one of the M
is among its k nearest of the other M + N − 1 points, so
  E[coverage] = 1 − (N−1)(N−2)…(N−k) / ((M+N−1)(M+N−2)…(M+N−k))
(the count behind Naeem et al.'s expected coverage): 0.88 at M = N, k = 3, but 0.45 at
N = 4.5 M. `precision_recall_equal_n` therefore scores a seeded random subset of the
larger set, of the smaller one's size, so runs with different reference sizes compare.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ddpm.errors import DdpmError
from ddpm.metrics.blocks import by_row_blocks

PR_K = 3  # nearest neighbours that set a ball's radius (Kynkäänniemi et al. use 3)


def _rows(a: torch.Tensor, b: torch.Tensor, reduce: Callable) -> torch.Tensor:
    """reduce(distances of a block of a's rows to all of b) for every block, concatenated."""
    return torch.cat(by_row_blocks(a, b, lambda rows, rest: reduce(torch.cdist(rows, rest))))


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    # k + 1 smallest: the first is the point itself (distance 0).
    return _rows(x, x, lambda d: d.topk(k + 1, dim=1, largest=False).values[:, k])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K,
                     device: str | torch.device = "cpu") -> dict:
    """{precision, recall, density, coverage, k} of `fake` features against `real`."""
    if min(len(real), len(fake)) <= k:
        raise DdpmError(f"precision/recall with k = {k} needs more than {k} real and "
                        f"generated images, got {len(real)} and {len(fake)}")
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    r_real, r_fake = knn_radii(real_t, k), knn_radii(fake_t, k)
    # per generated point: how many real balls hold it
    inside = _rows(fake_t, real_t, lambda d: (d <= r_real).sum(dim=1)).float()
    # per real point: is it in some generated ball; is its nearest generated point in its ball
    recalled = _rows(real_t, fake_t, lambda d: (d <= r_fake).any(dim=1))
    nearest = _rows(real_t, fake_t, lambda d: d.min(dim=1).values)
    return {"precision": float((inside > 0).float().mean()),
            "recall": float(recalled.float().mean()),
            "density": float(inside.mean() / k),
            "coverage": float((nearest <= r_real).float().mean()), "k": k}


def precision_recall_equal_n(real: np.ndarray, fake: np.ndarray, k: int = PR_K,
                             device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """`precision_recall` on equal N: the larger of the two sets replaced by a seeded random
    subset (without replacement) of the smaller one's size; adds the sizes used,
    n_reference and n_generated."""
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)

    def subset(x: np.ndarray) -> np.ndarray:
        return x if len(x) == n else x[np.sort(rng.choice(len(x), n, replace=False))]

    real, fake = subset(np.asarray(real)), subset(np.asarray(fake))
    return {**precision_recall(real, fake, k, device), "n_reference": len(real),
            "n_generated": len(fake)}
