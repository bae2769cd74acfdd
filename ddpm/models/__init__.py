"""Denoising networks (`nn.Module` only: no diffusion maths, no training loop).

Nothing is re-exported here: importing `ddpm.models.config` (the `model` section) must
not build the registry and every network. `build_model` is in `ddpm.models.registry`.
"""
