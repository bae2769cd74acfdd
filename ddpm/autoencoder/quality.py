"""How well an autoencoder reconstructs images, next to a fixed baseline of the same size.

The baseline: shrink each image by the autoencoder's factor f with bicubic
interpolation (antialiased) and enlarge it back. It keeps 3 numbers per f×f block
where the autoencoder keeps C (4), so an autoencoder that does not beat it has
learned less than interpolation knows. All functions take uint8 images [N, 3, H, W].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm.io.images import to_uint8, to_unit_range

PEAK = 255.0


def psnr(a_uint8: Tensor, b_uint8: Tensor) -> Tensor:
    """Per-image PSNR in dB, 10·log10(255² / MSE), float64 [N]; inf where identical."""
    mse = (a_uint8.double() - b_uint8.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(PEAK ** 2 / mse)


def bicubic_roundtrip(images_uint8: Tensor, factor: int) -> Tensor:
    """Down by `factor` (bicubic, antialias=True), up again (bicubic); clamped, rounded uint8."""
    h, w = images_uint8.shape[-2:]
    x = images_uint8.float()
    small = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic",
                          antialias=True, align_corners=False)
    back = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    return back.clamp(0, PEAK).round().to(torch.uint8)


@torch.no_grad()
def reconstruct(codec, images_uint8: Tensor, batch_size: int = 16,
                device: str | torch.device | None = None) -> Tensor:
    """decode(posterior mean) of every image, as uint8 [N, 3, H, W] on the CPU.

    `device` defaults to the codec's own.
    """
    device = device or next(codec.parameters()).device
    out = []
    for batch in images_uint8.split(batch_size):
        mean, _ = codec.encode(to_unit_range(batch.to(device)))
        out.append(to_uint8(codec.decode(mean)).cpu())
    return torch.cat(out)


def mean_and_se(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error, std (n − 1) / √n."""
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def quality_summary(codec, images_uint8: Tensor, factor: int, *, batch_size: int = 16,
                    device: str | torch.device | None = None) -> dict:
    """Mean PSNR (and its standard error) of the autoencoder's and the bicubic round trip."""
    psnr_db, psnr_se = mean_and_se(psnr(reconstruct(codec, images_uint8, batch_size, device),
                                        images_uint8))
    bicubic_db, bicubic_se = mean_and_se(psnr(bicubic_roundtrip(images_uint8, factor),
                                              images_uint8))
    return {"psnr_db": psnr_db, "psnr_se": psnr_se, "bicubic_psnr_db": bicubic_db,
            "bicubic_psnr_se": bicubic_se, "n": len(images_uint8)}
