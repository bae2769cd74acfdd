"""DVC stage `autoencoder`: params (model.space and its latent shape, autoencoder) +
data/prepared → autoencoder/ (weights, config, holdout quality, reconstructions),
autoencoder_live/ (its training metrics), on autoencoder.accelerator's device.

In pixel space it writes a constant marker and trains nothing, so `autoencoder.*`
changes re-run nothing downstream there.
"""

from pathlib import Path

import typer

from ddpm.autoencoder.config import AutoencoderConfig
from ddpm.autoencoder.stage import build_autoencoder, declared_folders, pixel_space_outputs
from ddpm.config import load_params
from ddpm.errors import one_line_errors
from ddpm.models.config import ModelConfig
from stages.options import DATA, PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         data: Path = DATA,
         out: Path = typer.Option(Path("autoencoder"), help="Output folder."),
         state: Path = typer.Option(Path("state/autoencoder"), help="Resume checkpoint folder."),
         live: Path = typer.Option(Path("autoencoder_live"), help="DVCLive metrics and plots.")
         ) -> None:
    """Train the autoencoder of model.space = latent (or load autoencoder.pretrained) and
    measure it on holdout images: PSNR against bicubic resampling, reconstructions."""
    config = load_params(params, model=ModelConfig, autoencoder=AutoencoderConfig)
    declared_folders(state, live)
    if config.model.space != "latent":
        pixel_space_outputs(out, live)
        print("model.space = pixel: no autoencoder")
        return
    summary = build_autoencoder(config.model, config.autoencoder, data, out, state, live)
    print(f"autoencoder: holdout PSNR {summary['psnr_db']:.2f} dB (bicubic ×1/"
          f"{config.model.latent_factor} and back: {summary['bicubic_psnr_db']:.2f} dB), "
          f"{summary['n']} images")


if __name__ == "__main__":
    typer.run(main)
