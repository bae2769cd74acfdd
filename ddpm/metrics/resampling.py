"""Standard errors of the full-N FID and of KID, by resampling both feature sets.

One FID or KID says nothing about its own noise. Both sides are finite samples (the
generated images and the real reference), so both are resampled, and the two
sides' contributions add. Two estimators, both from the same machinery:

- bootstrap (Efron & Tibshirani 1993, ch. 6): draw each side's N rows with
  replacement, recompute, SE = sd (ddof 1) over the draws. Seeded.
- delete-a-group jackknife (Efron & Tibshirani 1993, ch. 11; Shao & Tu 1995, §2.3):
  split each side into g random groups, recompute with one group left out,
  SE² = Σ_sides (g − 1)/g · Σⱼ (Tⱼ − T̄)².

Near the null (the two distributions alike) FID and KID are degenerate statistics,
for which the plain bootstrap overestimates the spread (Arcones & Giné 1992): its
draws scatter around the observed value, itself pushed up by noise. Measured against
the sd over 100–200 fresh draws of both data sets (Gaussians, D = 512, N = 200 vs 300,
`tests/test_resampling.py` repeats a smaller case):

  FID: same distribution          bootstrap 2.8×, jackknife 1.35× the true sd
       FID 3× the same-data floor bootstrap 1.6×, jackknife 1.07×
       FID 8× the floor           bootstrap 1.2×, jackknife 1.0×
  KID: same distribution          bootstrap 1.4×, jackknife 1.06×;  shifted 1.0–1.1× both

so both are conservative, and the jackknife is the closer one where runs differ little.

A draw is a vector of counts c (how often each row is taken; 0 = left out). The
metrics take the counts as weights, which equals recomputing on the drawn rows:

FID (Heusel et al. 2017): ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁ Σ₂)^½. With
Σᵢ = Aᵢᵀ Aᵢ (Aᵢ the centred rows / √(Nᵢ − 1), Nᵢ × D), the non-zero eigenvalues of
Σ₁ Σ₂ are the squared singular values of A₁ A₂ᵀ (N₁ × N₂), so
Tr (Σ₁ Σ₂)^½ = ‖A₁ A₂ᵀ‖_* (the sum of its singular values): exact, and an SVD of an
N₁ × N₂ matrix instead of scipy's 2048² `sqrtm`. A side with more rows than D is
first reduced to its D × D triangular factor R (QR: Aᵀ A = Rᵀ R), so the SVD is
never larger than D × D. The headline FID stays pytorch-fid's (`ddpm.metrics.fid`).

KID (Bińkowski et al. 2018, eq. 4): the unbiased MMD² under the cubic kernel
k(x, y) = (xᵀy / D + 1)³,
  Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (n(n−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / (mn),
here on the full sets (torchmetrics' KID, the headline, averages it over subsets). In
a bootstrap draw the within-set sums run over pairs of distinct rows, weighted cᵢcⱼ:
pairs of copies of one row would bring back the k(x, x) terms the unbiased form
leaves out (and double the bootstrap's overestimate). The kernel matrices are
computed once, in row blocks; every draw is a quadratic form cᵀ K c'.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm.errors import DdpmError

CHUNK = 512             # kernel rows per block: 512 × 50,000 float64 is 200 MB
JACKKNIFE_GROUPS = 20   # per side; fewer (delete-one) when a side has fewer rows


def _check(x: np.ndarray, y: np.ndarray, draws: int, what: str) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DdpmError(f"{what}: need two feature matrices [N, D] of the same D, got "
                        f"{x.shape} and {y.shape}")
    if min(len(x), len(y)) < 3:  # the jackknife leaves one out and still needs 2
        raise DdpmError(f"{what}: need at least 3 rows on each side, got {len(x)} and {len(y)}")
    if draws == 1 or draws < 0:
        raise DdpmError(f"{what}: bootstrap draws = {draws}; need 0 (off) or at least 2")


def bootstrap_counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, n]: how often each of n rows is taken when drawing n with replacement."""
    counts = np.zeros((draws, n), np.int64)
    for row in counts:
        row += np.bincount(rng.integers(0, n, n), minlength=n)
    return counts


def jackknife_counts(n: int, groups: int, rng: np.random.Generator) -> np.ndarray:
    """[g, n] 0/1: row j leaves out the j-th of g random groups of the n rows."""
    counts = np.ones((groups, n), np.int64)
    for j, group in enumerate(np.array_split(rng.permutation(n), groups)):
        counts[j, group] = 0
    return counts


# ------------------------------------------------------------------ the two statistics


def _factor(x: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, A) of x's rows weighted by counts, with Aᵀ A = Σ (unbiased, as np.cov) and A
    at most D rows: the centred drawn rows scaled by √(c / (N − 1)), or their QR factor."""
    keep = counts > 0
    x, c = x[keep], counts[keep].to(x.dtype)
    n = c.sum()
    mu = (c[:, None] * x).sum(0) / n
    a = (x - mu) * torch.sqrt(c / (n - 1))[:, None]            # r × D, Σ = Aᵀ A
    if a.shape[0] > a.shape[1]:
        a = torch.linalg.qr(a, mode="r").R                      # D × D, Rᵀ R = Aᵀ A
    return mu, a


def _frechet(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor,
             cy: torch.Tensor) -> np.ndarray:
    """FID for each row of counts (one [draws] value per pair of count rows)."""
    values = []
    for row_x, row_y in zip(cx, cy):
        mu1, a1 = _factor(x, row_x)
        mu2, a2 = _factor(y, row_y)
        trace_covmean = torch.linalg.svdvals(a1 @ a2.T).sum()  # Tr (Σ₁ Σ₂)^½
        diff = mu1 - mu2
        values.append(float(diff @ diff + (a1 * a1).sum() + (a2 * a2).sum()
                            - 2 * trace_covmean))
    return np.array(values)


def _kernel_forms(a: torch.Tensor, b: torch.Tensor, ca: torch.Tensor,
                  cb: torch.Tensor) -> torch.Tensor:
    """Σᵢⱼ ca[d, i] k(aᵢ, bⱼ) cb[d, j] for every row d of the counts; K in row blocks."""
    dim = a.shape[1]
    total = torch.zeros(len(ca), dtype=a.dtype, device=a.device)
    for i in range(0, len(a), CHUNK):
        k = (a[i:i + CHUNK] @ b.T / dim + 1) ** 3               # chunk × N_b
        total += ((ca[:, i:i + CHUNK] @ k) * cb).sum(1)
    return total


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor,
                   cy: torch.Tensor) -> np.ndarray:
    """Unbiased MMD² (cubic kernel) for each row of counts (all rows at once)."""
    cx, cy = cx.to(x.dtype), cy.to(x.dtype)
    dim = x.shape[1]

    def within(z, c):  # mean of k over pairs of distinct rows i ≠ j, pair weight cᵢ cⱼ
        diagonal = ((z * z).sum(1) / dim + 1) ** 3
        pairs = c.sum(1) ** 2 - (c * c).sum(1)
        return (_kernel_forms(z, z, c, c) - (c * c) @ diagonal) / pairs

    between = _kernel_forms(x, y, cx, cy) / (cx.sum(1) * cy.sum(1))
    return (within(x, cx) + within(y, cy) - 2 * between).cpu().numpy()


STATISTICS = {"fid": _frechet, "kid": _mmd2_unbiased}


# ------------------------------------------------------------------ estimates and errors


def _as_tensor(x: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64, device=device)


def standard_errors(statistic: str, x: np.ndarray, y: np.ndarray, draws: int,
                    seed: int = 0, device="cpu") -> dict:
    """{value, se_bootstrap, se_jackknife, draws, groups} of `statistic` ('fid' or 'kid')
    between feature sets x [N₁, D] and y [N₂, D].

    value: the statistic on the full sets. se_bootstrap: sd over `draws` bootstrap
    draws of both sides (None when draws is 0). se_jackknife: the delete-a-group
    jackknife with `groups` random groups per side.
    """
    name = {"fid": "FID", "kid": "KID"}[statistic]
    _check(x, y, draws, f"{name} standard error")
    evaluate = STATISTICS[statistic]
    xt, yt = _as_tensor(x, device), _as_tensor(y, device)
    counts = lambda c: torch.as_tensor(c, device=device)  # noqa: E731
    ones = lambda n, k: np.ones((k, n), np.int64)          # noqa: E731
    value = _on_whole_sets(statistic, xt, yt)
    se_bootstrap = None
    if draws:
        rng = np.random.default_rng([seed, 0])
        values = evaluate(xt, yt, counts(bootstrap_counts(len(x), draws, rng)),
                          counts(bootstrap_counts(len(y), draws, rng)))
        se_bootstrap = float(np.std(values, ddof=1))
    rng = np.random.default_rng([seed, 1])
    groups = min(JACKKNIFE_GROUPS, len(x), len(y))
    variance = 0.0
    for side in (0, 1):  # leave groups out of x (y whole), then of y (x whole)
        left_out = jackknife_counts((len(x), len(y))[side], groups, rng)
        cx = left_out if side == 0 else ones(len(x), groups)
        cy = left_out if side == 1 else ones(len(y), groups)
        values = evaluate(xt, yt, counts(cx), counts(cy))
        variance += (groups - 1) / groups * float(((values - values.mean()) ** 2).sum())
    return {"value": value, "se_bootstrap": se_bootstrap,
            "se_jackknife": float(np.sqrt(variance)), "draws": draws, "groups": groups}


def frechet_lowrank(x: np.ndarray, y: np.ndarray, device="cpu") -> float:
    """FID between feature sets x [N₁, D] and y [N₂, D], exact, by the SVD of A₁ A₂ᵀ."""
    _check(x, y, 0, "FID")
    return _on_whole_sets("fid", _as_tensor(x, device), _as_tensor(y, device))


def kid_full(x: np.ndarray, y: np.ndarray, device="cpu") -> float:
    """Unbiased MMD² with the cubic kernel between the whole sets x and y (sizes may differ)."""
    _check(x, y, 0, "KID")
    return _on_whole_sets("kid", _as_tensor(x, device), _as_tensor(y, device))


def _on_whole_sets(statistic: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """The statistic on every row of both sets once (a single draw of all-ones counts)."""
    whole = lambda n: torch.ones((1, n), dtype=torch.long, device=x.device)  # noqa: E731
    return float(STATISTICS[statistic](x, y, whole(len(x)), whole(len(y)))[0])
