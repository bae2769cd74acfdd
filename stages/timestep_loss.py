"""DVC stage `timestep_loss`: models/ + holdout images + params (analysis) → analysis/."""

from pathlib import Path

import torch
import typer

from ddpm.analysis import analyse
from ddpm.config import load_params
from ddpm.errors import one_line_errors


@one_line_errors
def main(params: Path = typer.Option(Path("params.yaml"), help="The params file."),
         models: Path = typer.Option(Path("models"), help="Trained model folder."),
         data: Path = typer.Option(Path("data/prepared"), help="Prepared data set."),
         out: Path = typer.Option(Path("analysis"), help="Output folder.")) -> None:
    """Per-pixel MSE of the trained EMA model at a fixed grid of timesteps."""
    analysis = load_params(params).analysis
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = analyse(models, data, out, analysis, device)
    print("loss per timestep: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    typer.run(main)
