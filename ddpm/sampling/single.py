"""`ddpm sample` and `ddpm trajectory`: images from a trained model, outside the pipeline.

They run the generate stage's own code (`ddpm.sampling.generate`): image i comes from
noise seeded by (seed, i), so it is the generate stage's image i, byte for byte,
when the settings and the kind of device (CPU or GPU) are the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ddpm.config import build_section
from ddpm.errors import DdpmError
from ddpm.io.atomic import write_atomically
from ddpm.io.devices import torch_device
from ddpm.io.progress import progress_bar
from ddpm.sampling.config import SampleConfig, check_steps
from ddpm.sampling.generate import Generator, load_generator, write_grid, write_trajectory

OPTION_NAMES = {"accelerator": "device"}  # the `sample` fields whose option is named otherwise


def option_name(name: str) -> str:
    """A `sample` field as the command line spells it: batch_size → --batch-size."""
    return "--" + OPTION_NAMES.get(name, name).replace("_", "-")


def sample_settings(options: dict) -> SampleConfig:
    """`SampleConfig` from command-line options; a bad value names its option (--steps)."""
    return build_section(SampleConfig, options, "sample", key=option_name)


def open_generator(model_dir: Path, sample: SampleConfig) -> Generator:
    """The trained model's Generator on `sample.accelerator` (--device), resolved by the
    stages' rule; steps beyond the model's T are refused as params' are."""
    device = torch_device("sample", sample.accelerator, key=option_name)
    engine = load_generator(model_dir, sample, device)
    check_steps(sample, engine.schedule.timesteps, key=option_name)
    return engine


def draw(engine: Generator, progress: bool = True) -> np.ndarray:
    """Images 0 … n−1 as uint8 [n, H, W, 3]."""
    n = engine.sample.n
    with progress_bar(n, f"sample ({engine.sample.sampler})", disable=not progress) as bar:
        return engine.images(range(n), bar)


def is_grid(out: Path) -> bool:
    """A .png path is one grid image; any other path is a folder of PNGs."""
    if out.suffix.lower() == ".png":
        return True
    if out.is_file():
        raise DdpmError(f"{out}: is a file, not a folder; give a .png path for a grid or a "
                        "folder for one PNG per image")
    return False


def write_images(images: np.ndarray, out: Path) -> str:
    """A grid at `out` (.png), or `out`/000000.png … each written atomically; says what."""
    if is_grid(out):
        write_grid(images, out)
        return f"a grid of {len(images)} images in {out}"
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pil = Image.fromarray(image)
        write_atomically(out / f"{i:06d}.png", lambda tmp, pil=pil: pil.save(tmp, format="PNG"))
    return f"{len(images)} images in {out}/ (000000.png …)"


def trajectory(engine: Generator, out: Path) -> str:
    """The generate stage's trajectory movie (x_t and predicted x0 along the steps) at `out`."""
    if out.suffix.lower() != ".gif":
        raise DdpmError(f"{out}: the movie is a GIF; give a path ending in .gif")
    write_trajectory(engine, out)
    return f"trajectory of {engine.sample.sampler} in {out}"
