"""DVC stage `train`: params.yaml (model, diffusion, train) + data/prepared (latent space:
latents/ and autoencoder/) → models/, dvclive/
(and MLflow: mlruns/ or MLFLOW_TRACKING_URI, when train.loggers asks for it)."""

from pathlib import Path

import typer

from ddpm.config import load_params
from ddpm.diffusion.config import DiffusionConfig
from ddpm.errors import one_line_errors
from ddpm.models.config import ModelConfig
from ddpm.training.config import TrainConfig
from ddpm.training.run import train
from stages.options import DATA, PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         data: Path = DATA,
         models: Path = typer.Option(Path("models"), help="Output: EMA weights + config."),
         state: Path = typer.Option(Path("state/train"), help="Resume checkpoint folder."),
         live: Path = typer.Option(Path("dvclive"), help="DVCLive metrics and plots."),
         mlruns: Path = typer.Option(Path("mlruns"), help="MLflow's local store (train.loggers "
                                                          "with mlflow, no MLFLOW_TRACKING_URI)."),
         latents: Path = typer.Option(Path("latents"), help="The encode stage's latents "
                                                            "(read when model.space is latent)."),
         autoencoder: Path = typer.Option(Path("autoencoder"), help="The autoencoder stage's "
                                          "output (latent space: previews, copied to models/).")
         ) -> None:
    """Train the diffusion model, resuming from state/train when its params match."""
    sections = load_params(params, model=ModelConfig, diffusion=DiffusionConfig, train=TrainConfig)
    train(sections, data, models, state, live, mlruns_dir=mlruns, latents_dir=latents,
          autoencoder_dir=autoencoder)


if __name__ == "__main__":
    typer.run(main)
