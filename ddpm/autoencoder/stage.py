"""What the autoencoder stage does: train ours (or load a pretrained one), then measure it.

    autoencoder/
      config.json, weights.safetensors | pretrained/    the autoencoder (ddpm.autoencoder.files)
      quality.json               holdout PSNR beside bicubic resampling by the same factor
      reconstructions.png        originals, bicubic round trip, reconstructions
      holdout_reconstructions.npy  uint8 [N, H, W, 3]: the first autoencoder.eval_images
                                 holdout images reconstructed (the fid stage's
                                 reconstruction FID, the floor of any latent model's FID)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm.autoencoder.config import AutoencoderConfig
from ddpm.autoencoder.files import load_autoencoder, save_autoencoder
from ddpm.autoencoder.outputs import QUALITY, RECONSTRUCTIONS
from ddpm.autoencoder.pretrained import load_pretrained
from ddpm.autoencoder.quality import quality_summary, reconstruct
from ddpm.autoencoder.training import train_autoencoder
from ddpm.config import to_dict
from ddpm.data.prepared import PreparedImages
from ddpm.errors import ConfigError
from ddpm.io.atomic import write_json_atomically, write_npy_atomically
from ddpm.io.devices import torch_device
from ddpm.models.config import ModelConfig


def declared_folders(state_dir: str | Path, live_dir: str | Path) -> None:
    """The folders dvc.yaml declares as outputs, which DVC wants whatever is written to
    them: in pixel space and from a pretrained source nothing trains into them."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    (Path(live_dir) / "plots").mkdir(parents=True, exist_ok=True)


def pixel_space_outputs(out_dir: str | Path, live_dir: str | Path) -> None:
    """Pixel space: constant markers, so nothing downstream sees a change."""
    write_json_atomically(Path(out_dir) / "config.json", {"space": "pixel"})
    write_json_atomically(Path(live_dir) / "metrics.json", {})


def holdout_split(prepared_dir: str | Path, limit: int) -> PreparedImages:
    holdout = PreparedImages(prepared_dir, "holdout", limit=limit)
    return holdout if len(holdout) else PreparedImages(prepared_dir, "train", limit=limit)


def check_shape(codec, model: ModelConfig, source: str) -> None:
    if (codec.factor, codec.latent_channels) != (model.latent_factor, model.latent_channels):
        raise ConfigError(f"{source} has factor {codec.factor} and {codec.latent_channels} "
                          f"latent channels but model.latent_factor = {model.latent_factor}, "
                          f"model.latent_channels = {model.latent_channels}: set those to "
                          "the autoencoder's")


def build_autoencoder(model: ModelConfig, config: AutoencoderConfig, prepared_dir: str | Path,
                      out_dir: str | Path, state_dir: str | Path, live_dir: str | Path) -> dict:
    """Train or load the autoencoder into `out_dir`, and measure it on holdout images."""
    out_dir, live_dir = Path(out_dir), Path(live_dir)
    holdout = holdout_split(prepared_dir, config.eval_images)
    record = {"autoencoder": to_dict(config), "space": "latent"}
    if config.source == "pretrained":
        codec = load_pretrained(config.pretrained)
        check_shape(codec, model, f"autoencoder.pretrained = {config.pretrained!r}")
        save_autoencoder(codec, out_dir, record)
        write_json_atomically(live_dir / "metrics.json",
                              quality_summary(codec, _stack(holdout), codec.factor))
    else:
        train_autoencoder(config, factor=model.latent_factor,
                          latent_channels=model.latent_channels,
                          train_images=PreparedImages(prepared_dir, "train"),
                          holdout_images=holdout, out_dir=out_dir, state_dir=state_dir,
                          live_dir=live_dir)
    device = torch_device("autoencoder", config.accelerator)
    codec = load_autoencoder(out_dir, device)
    images = _stack(holdout)
    summary = quality_summary(codec, images, codec.factor)
    summary["latent_shape"] = list(model.data_shape)
    write_json_atomically(out_dir / QUALITY, summary)
    pixels = reconstruct(codec, images, device=device).permute(0, 2, 3, 1).numpy()
    write_npy_atomically(out_dir / RECONSTRUCTIONS, pixels)
    return summary


def _stack(images: PreparedImages) -> torch.Tensor:
    return torch.stack([images[i] for i in range(len(images))])
