"""DVC stage `encode`: autoencoder/ + data/prepared → latents/ (each image's latent and its
mirror image's, the unit-variance scale), once per autoencoder and data set.

In pixel space it writes a constant manifest saying so.
"""

from pathlib import Path

import typer

from ddpm.autoencoder.config import AutoencoderConfig
from ddpm.autoencoder.files import load_autoencoder
from ddpm.autoencoder.latents import autoencoder_sha256, encode_dataset, pixel_manifest
from ddpm.config import load_params
from ddpm.data.config import DataConfig
from ddpm.errors import one_line_errors
from ddpm.io.devices import torch_device
from ddpm.models.config import ModelConfig
from stages.options import DATA, PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         data: Path = DATA,
         autoencoder: Path = typer.Option(Path("autoencoder"), help="The autoencoder folder."),
         out: Path = typer.Option(Path("latents"), help="Output folder.")) -> None:
    """Encode the training and holdout images (and their mirror images) to latents."""
    config = load_params(params, data=DataConfig, model=ModelConfig,
                         autoencoder=AutoencoderConfig)
    if config.model.space != "latent":
        pixel_manifest(out)
        print("model.space = pixel: nothing to encode")
        return
    device = torch_device("autoencoder", config.autoencoder.accelerator)
    codec = load_autoencoder(autoencoder, device)
    manifest = encode_dataset(codec, data, out, shard_size=config.data.shard_size,
                              batch_size=config.autoencoder.batch_size, device=device,
                              autoencoder_sha256=autoencoder_sha256(autoencoder))
    print(f"encoded {manifest['counts']} images to latents {manifest['shape']} "
          f"(and their mirror images); scale {manifest['scale']:.4f}")


if __name__ == "__main__":
    typer.run(main)
