"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

KID is the unbiased estimate of the squared MMD between real and generated
features under the cubic polynomial kernel k(x, y) = (xᵀy / D + 1)³, averaged over
random subsets of equal size; the spread over subsets is its ± . Unlike FID it is
unbiased at any N, so runs with different sample counts compare on the mean.

The estimate is torchmetrics' `KernelInceptionDistance`, fed precomputed features
through an identity "feature extractor"; the subsets come from torch's global
generator, which is seeded here (and restored afterwards) so a rerun gives the
same number.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics.image.kid import KernelInceptionDistance

from ddpm.errors import DdpmError


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int,
                              subset_size: int, seed: int = 0) -> dict:
    """KID of `fake` against `real` features: {mean, std, subsets, subset_size}.

    `subset_size` is capped at the smaller set's N (torchmetrics refuses larger
    subsets); when the cap applies, every subset of that side holds all of it, so
    `std` then measures the other side's subset draw only.
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise DdpmError(f"KID needs at least 2 real and 2 generated images, got "
                        f"{len(real)} and {len(fake)}")
    with warnings.catch_warnings():  # "will save all extracted features": we hand them in
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets,
                                         subset_size=size)
    metric.update(torch.as_tensor(np.asarray(real, np.float64)), real=True)
    metric.update(torch.as_tensor(np.asarray(fake, np.float64)), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"mean": float(mean), "std": float(std), "subsets": subsets, "subset_size": size}
