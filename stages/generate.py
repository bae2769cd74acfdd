"""DVC stage `generate`: models/ + params.yaml (sample) → samples/ (shards, grid, trajectory movie).

With sample.devices × sample.num_nodes > 1, Lightning Fabric launches one
process per device (DDP) and each generates its share of the shards.
"""

from pathlib import Path

import typer
from lightning.fabric import Fabric

from ddpm.config import load_params
from ddpm.diffusion.config import DiffusionConfig
from ddpm.errors import one_line_errors
from ddpm.io.devices import check_accelerator
from ddpm.sampling.config import SampleConfig
from ddpm.sampling.generate import generate
from stages.options import MODELS, PARAMS


@one_line_errors
def main(params: Path = PARAMS,
         models: Path = MODELS,
         out: Path = typer.Option(Path("samples"), help="Output folder.")) -> None:
    """Generate sample.n images with the configured sampler."""
    # diffusion only to refuse sample.steps beyond T at once (models/ has the model's T).
    sample = load_params(params, diffusion=DiffusionConfig, sample=SampleConfig).sample
    check_accelerator("sample", sample.accelerator, sample.devices)
    parallel = sample.devices * sample.num_nodes > 1
    fabric = Fabric(accelerator=sample.accelerator, devices=sample.devices,
                    num_nodes=sample.num_nodes, strategy="ddp" if parallel else "auto")
    fabric.launch()
    manifest = generate(models, out, sample, rank=fabric.global_rank,
                        world_size=fabric.world_size, device=fabric.device,
                        barrier=fabric.barrier)
    if manifest:
        print(f"{manifest['n']} samples in {out} ({manifest['generated_now']} generated now, "
              f"{manifest['seconds']} s)")


if __name__ == "__main__":
    typer.run(main)
