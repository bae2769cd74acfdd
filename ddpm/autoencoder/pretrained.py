"""A pretrained diffusers `AutoencoderKL` (e.g. Stable Diffusion's VAE, which DiT used:
`stabilityai/sd-vae-ft-ema`, f = 8, 4 channels) behind `Autoencoder`'s interface.

Its own `scaling_factor` (0.18215 for SD's VAE) is NOT applied: `encode` returns the
raw posterior, and the encode stage computes the unit-variance scale from the data
(and records it), for ours and a pretrained autoencoder alike.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from ddpm.errors import DataError


class PretrainedAutoencoder(nn.Module):
    """A diffusers AutoencoderKL behind the same encode/decode interface as Autoencoder."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        # Each block but the last halves the resolution.
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, 3, H, W] in [-1, 1] → (mean, logvar) of the posterior, each [B, C, H/f, W/f]."""
        posterior = self.vae.encode(x).latent_dist
        return posterior.mean, posterior.logvar

    def decode(self, z: Tensor) -> Tensor:
        """z [B, C, h, w] (unscaled) → x̂ [B, 3, h·f, w·f], roughly [-1, 1]."""
        return self.vae.decode(z).sample


# "organisation/name", as the Hugging Face hub spells a model; anything else is a path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def load_pretrained(name_or_path: str | Path) -> PretrainedAutoencoder:
    """`AutoencoderKL.from_pretrained(name_or_path)`, wrapped; a one-line DataError if it
    cannot be loaded. A path that does not exist fails at once, without asking the hub."""
    name = str(name_or_path)
    local = Path(name).exists()
    offline_hint = ("a hub id (e.g. stabilityai/sd-vae-ft-ema) needs network access; offline, "
                    "pass a local folder written by save_pretrained")
    if not local and not HUB_ID.fullmatch(name):
        raise DataError(f"{name}: no such folder; {offline_hint}")
    from diffusers import AutoencoderKL  # here: importing diffusers takes seconds

    try:
        # low_cpu_mem_usage=False: the default asks for `accelerate`, with a warning, and
        # saves nothing at these sizes.
        vae = AutoencoderKL.from_pretrained(name, low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:  # missing files, no network, a malformed id
        detail = (str(err).splitlines() or [""])[0].split(". ")[0][:160]
        raise DataError(f"{name}: cannot load an AutoencoderKL from this "
                        f"{'folder' if local else 'hub id'} ({type(err).__name__}: {detail}); "
                        f"{offline_hint}") from None
    return PretrainedAutoencoder(vae)
