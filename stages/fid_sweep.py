"""DVC stage `fid_sweep`: FID against network evaluations, per sampler (sample.sweep_samplers ×
sample.sweep_steps)."""

from pathlib import Path

import typer

from ddpm.config import load_params
from ddpm.diffusion.config import DiffusionConfig
from ddpm.errors import one_line_errors
from ddpm.evaluation.config import FidConfig
from ddpm.evaluation.sweep import fid_sweep
from ddpm.io.devices import torch_device
from ddpm.sampling.config import SampleConfig
from stages.options import MODELS, PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         models: Path = MODELS,
         ref: Path = typer.Option(Path("fid_ref/stats.npz"), help="Reference statistics."),
         out: Path = typer.Option(Path("sweep"), help="Output folder.")) -> None:
    """sample.sweep_n samples per sampler and step count, each scored by FID."""
    # diffusion only to refuse sample.sweep_steps beyond T at once (models/ holds the model's T).
    config = load_params(params, diffusion=DiffusionConfig, sample=SampleConfig, fid=FidConfig)
    # Sampling and Inception on one device: fid.accelerator's.
    device = torch_device("fid", config.fid.accelerator)
    sample = config.sample
    table = fid_sweep(models, ref, out, sample, sample.sweep_samplers, sample.sweep_steps,
                      sample.sweep_n, weights=config.fid.weights,
                      batch_size=config.fid.batch_size, bootstrap=config.fid.bootstrap,
                      device=device)
    print(table.to_string(index=False))


if __name__ == "__main__":
    typer.run(main)
