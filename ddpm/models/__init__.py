"""Denoising networks (`nn.Module` only: no diffusion maths, no training loop)."""

from ddpm.models.registry import ARCHITECTURES, build_model

__all__ = ["ARCHITECTURES", "build_model"]
