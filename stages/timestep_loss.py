"""DVC stage `timestep_loss`: models/ + holdout images + params (analysis, sample.variance,
sample.clip_x0) → analysis/, on analysis.accelerator's device."""

from pathlib import Path

import typer

from ddpm.config import load_params
from ddpm.errors import one_line_errors
from ddpm.evaluation.config import AnalysisConfig
from ddpm.evaluation.timestep_loss import analyse
from ddpm.io.devices import torch_device
from ddpm.sampling.config import SampleConfig
from stages.options import DATA, MODELS, PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         models: Path = MODELS,
         data: Path = DATA,
         latents: Path = typer.Option(Path("latents"), help="Encoded latents (latent space)."),
         out: Path = typer.Option(Path("analysis"), help="Output folder.")) -> None:
    """Per-pixel MSE of the trained EMA model at a fixed grid of timesteps, and an upper
    bound on its holdout NLL (bits/dim) for the DDPM reverse process of sample.variance
    and sample.clip_x0."""
    config = load_params(params, sample=SampleConfig, analysis=AnalysisConfig)
    device = torch_device("analysis", config.analysis.accelerator)
    metrics = analyse(models, data, out, config.analysis, device,
                      variance=config.sample.variance, clip_x0=config.sample.clip_x0,
                      latents_dir=latents)
    print("loss per timestep: " + ", ".join(f"{k} {v:.4f}"
                                            for k, v in metrics["timestep_loss"].items()))
    bound = metrics.get("likelihood")
    if bound is None:
        print("NLL bound: not computed in latent space (it bounds pixels' likelihood)")
        return
    print(f"NLL bound: {bound['bits_per_dim']:.3f} bits/dim, se {bound['bits_per_dim_se']:.3f} "
          f"(prior {bound['bits_per_dim_prior']:.3f}, diffusion "
          f"{bound['bits_per_dim_diffusion']:.3f}, decoder {bound['bits_per_dim_decoder']:.3f}; "
          f"{bound['n_images']} holdout images, sample.variance {config.sample.variance}, "
          f"clip_x0 {str(config.sample.clip_x0).lower()})")


if __name__ == "__main__":
    typer.run(main)
