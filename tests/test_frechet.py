"""The FID's maths without Inception: statistics, the Fréchet distance, pixels to tensors
and feature batching, against closed forms and torchvision (fast tier)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from ddpm.metrics import fid


def test_feature_statistics_are_the_mean_and_the_unbiased_covariance():
    x = np.random.default_rng(0).normal(size=(50, 4)) * [1, 2, 3, 4] + [5, 6, 7, 8]
    mu, sigma = fid.feature_statistics(x)
    centred = x - x.sum(0) / 50
    np.testing.assert_allclose(mu, x.sum(0) / 50, rtol=1e-12)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


def test_frechet_distance_equals_the_closed_form_for_diagonal_covariances():
    """‖μ₁ − μ₂‖² + Σᵢ (σ₁ᵢ + σ₂ᵢ − 2√(σ₁ᵢσ₂ᵢ)) = ‖μ₁ − μ₂‖² + Σᵢ (√σ₁ᵢ − √σ₂ᵢ)²."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    got = fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)          # 7.25 + 4 + 1 = 12.25
    assert fid.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_is_invariant_to_a_rotation_of_both():
    """A full covariance: rotating both Gaussians by the same orthogonal Q changes nothing."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.diag([1.0, 4.0, 0.25]), np.diag([9.0, 1.0, 0.25])
    rotated = fid.frechet_distance(q @ mu1, q @ var1 @ q.T, q @ mu2, q @ var2 @ q.T)
    assert rotated == pytest.approx(12.25, rel=1e-8)


def test_images_to_tensor_equals_torchvisions_to_tensor():
    images = np.random.default_rng(2).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    expected = torch.stack([TF.to_tensor(im) for im in images])  # what pytorch-fid applies
    got = fid.images_to_tensor(images)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    for bad in (images.astype(np.float32), images[0], images[..., :2],
                np.zeros((1, 4, 4, 4), np.uint8)):   # dtype, 3-d, 2 and 4 channels
        with pytest.raises(ValueError, match=r"expected uint8 images \[N,H,W,3\]"):
            fid.images_to_tensor(bad)


class MeanColour(torch.nn.Module):
    """Stands in for pytorch-fid's InceptionV3: a list holding [N, D, 1, 1] features."""

    def forward(self, x):
        return [x.mean(dim=(2, 3), keepdim=True)]


def test_inception_features_are_per_image_in_order_with_progress_per_batch():
    images = np.random.default_rng(3).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    seen = []
    feats = fid.inception_features([images[:3], images[3:]], MeanColour(), progress=seen.append)
    assert feats.dtype == np.float64 and seen == [3, 4]
    np.testing.assert_allclose(feats, images.mean(axis=(1, 2)) / 255, rtol=1e-6)
    assert fid.inception_features([], MeanColour()).shape == (0, fid.FEATURE_DIM)
