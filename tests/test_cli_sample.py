"""`ddpm sample` and `ddpm trajectory`: the generate stage's images, outside the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import tiny
from ddpm.cli import app
from ddpm.sampling.config import SampleConfig
from ddpm.sampling.generate import generate, iter_shards

# Few images and steps: the test is about which noise image i gets, not quality.
SAMPLE = SampleConfig(n=6, sampler="ddim", steps=4, batch_size=4, shard_size=4, eta=0.5)
OPTIONS = ["--n", "6", "--sampler", "ddim", "--steps", "4", "--eta", "0.5", "--batch-size", "5",
           "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_thread) -> Path:
    """A tiny UNet saved as the train stage saves it; random (not zero) output layers, so
    the images depend on the weights too."""
    return tiny.untrained_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def generated(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    generate(model_dir, out, SAMPLE, progress=False)
    return out


def ddpm(*args) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result


def test_sample_image_i_is_the_generate_stages_image_i_byte_for_byte(model_dir, generated,
                                                                      tmp_path):
    result = ddpm("sample", model_dir, *OPTIONS, "--out", tmp_path / "pngs")
    assert result.exit_code == 0, result.output
    expected = np.concatenate(list(iter_shards(generated)))            # [6, H, W, 3] uint8
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == [f"{i:06d}.png" for i in range(6)]
    for i, name in enumerate(names):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "pngs" / name)), expected[i]), i
    assert len({im.tobytes() for im in expected}) == 6                  # six different images
    # The grid: the generate stage's grid.png, byte for byte (n = 6 < its 64).
    result = ddpm("sample", model_dir, *OPTIONS, "--out", tmp_path / "grid.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").read_bytes() == (generated / "grid.png").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_other_sampler_options_change_the_images(model_dir, generated, tmp_path):
    result = ddpm("sample", model_dir, *OPTIONS, "--seed", "1", "--no-clip-x0",
                  "--out", tmp_path / "other.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "other.png").read_bytes() != (generated / "grid.png").read_bytes()


def test_trajectory_writes_the_generate_stages_movie(model_dir, generated, tmp_path):
    result = ddpm("trajectory", model_dir, "--sampler", "ddim", "--steps", "4", "--eta", "0.5",
                  "--device", "cpu", "--out", tmp_path / "movie.gif")
    assert result.exit_code == 0, result.output
    gif = Image.open(tmp_path / "movie.gif")
    assert gif.format == "GIF" and gif.n_frames == 4                  # one frame per step
    assert (tmp_path / "movie.gif").read_bytes() == \
        (generated / "trajectory.gif").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["sample", "{missing}"], "no trained model"),
    (["sample", "{models}", "--steps", "5000"], "--steps = 5000: must be <= diffusion.timesteps"),
    (["sample", "{models}", "--sampler", "euler"], "--sampler = 'euler': must be one of"),
    (["sample", "{models}", "--compile", "max"], "--compile = 'max': must be one of 'none'"),
    (["trajectory", "{models}", "--out", "{tmp}/movie.mp4"], "give a path ending in .gif"),
])
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(model_dir, tmp_path, args,
                                                             message):
    args = [a.format(missing=tmp_path / "nothing", models=model_dir, tmp=tmp_path)
            for a in args]
    result = ddpm(*args, "--device", "cpu", *(["--out", tmp_path / "g.png"]
                                              if "--out" not in args else []))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


NO_GPU = not torch.cuda.is_available() and not torch.backends.mps.is_available()


@pytest.mark.parametrize("device, message", [
    ("cuda", "--device = 'cuda': must be one of 'auto', 'cpu', 'gpu'"),
    pytest.param("gpu", "--device = 'gpu': no GPU is visible on this machine",
                 marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
])
def test_device_takes_the_stages_accelerator_values(model_dir, tmp_path, device, message):
    """--device is sample.accelerator, resolved by the stages' rule (ddpm.io.devices)."""
    result = ddpm("sample", model_dir, "--device", device, "--out", tmp_path / "g.png")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: {message}"), result.stderr
    assert list(tmp_path.iterdir()) == []
