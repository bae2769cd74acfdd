"""Generation: byte-identical whatever the batch size, interruptions or number of processes."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny
from ddpm.sampling.config import SampleConfig
from ddpm.sampling.generate import generate, shard_path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = SampleConfig(n=40, sampler="ddim", steps=8, batch_size=7, shard_size=16,
                      accelerator="cpu")


@pytest.fixture(scope="module")
def model_dir(trained_tiny_model) -> Path:
    """The shared trained tiny UNet (conftest): its output depends on the batch it sees."""
    return trained_tiny_model


def shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.npy"))}


def assert_same_images_up_to_rounding(a: Path, b: Path) -> None:
    """The same shards, whose images differ in at most 1 pixel value in 1000, by one level.

    Another batch size runs the network's convolutions and matrix products with other
    blockings, so float32 sums round differently; now and then that moves a pixel across
    a rounding boundary of the uint8 image (measured with the trained tiny UNet: 0-2 of
    30,720 values, by 1). Noise drawn per batch rather than per sample changes them all.
    """
    a_shards, b_shards = shards(a), shards(b)
    assert list(a_shards) == list(b_shards)
    for name in a_shards:
        x, y = (np.load(folder / name).astype(np.int16) for folder in (a, b))
        diff = np.abs(x - y)
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (name, diff.max(), (diff > 0).sum())


# Every sampler that takes steps; DDPM (all T steps) has its own, smaller test below.
STEP_SAMPLERS = ["ddim", "dpmpp_2m", "unipc"]


@pytest.mark.parametrize("sampler", STEP_SAMPLERS)
def test_batch_size_changes_no_image_beyond_float_rounding(model_dir, tmp_path, sampler):
    sample = replace(SAMPLE, sampler=sampler)
    generate(model_dir, tmp_path / "a", replace(sample, batch_size=7), progress=False)
    generate(model_dir, tmp_path / "b", replace(sample, batch_size=64), progress=False)
    assert_same_images_up_to_rounding(tmp_path / "a", tmp_path / "b")
    a = shards(tmp_path / "a")
    assert list(a) == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    images = np.concatenate([np.load(tmp_path / "a" / n) for n in a])
    assert images.shape == (40, tiny.IMG, tiny.IMG, 3) and images.dtype == np.uint8
    assert len({im.tobytes() for im in images}) == 40                  # all different samples
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["n"] == 40 and manifest["shards"] == list(a)
    assert manifest["sample"]["sampler"] == sampler and manifest["nfe"] == SAMPLE.steps
    assert Image.open(tmp_path / "a" / "grid.png").size[0] > tiny.IMG * 6
    gif = Image.open(tmp_path / "a" / "trajectory.gif")
    assert gif.n_frames == SAMPLE.steps  # 16 frames asked for, one per step at most


def test_ddpm_sampler_is_batch_independent_too(tmp_path):
    # DDPM runs every timestep: a 50-step schedule keeps it to seconds (1000 took 46 s).
    model_dir = tiny.untrained_model(tmp_path / "models", diffusion={"timesteps": 50})
    ddpm = replace(SAMPLE, sampler="ddpm", n=5, shard_size=5)
    generate(model_dir, tmp_path / "a", replace(ddpm, batch_size=2), progress=False)
    generate(model_dir, tmp_path / "b", replace(ddpm, batch_size=5), progress=False)
    assert_same_images_up_to_rounding(tmp_path / "a", tmp_path / "b")


def test_changed_settings_clear_old_shards_and_larger_n_extends(model_dir, tmp_path):
    out = tmp_path / "s"
    generate(model_dir, out, replace(SAMPLE, n=16), progress=False)
    first = shards(out)
    generate(model_dir, out, SAMPLE, progress=False)                   # n 16 → 40: extends
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generated_now"] == 24
    assert shards(out)["shard-00000.npy"] == first["shard-00000.npy"]
    generate(model_dir, out, replace(SAMPLE, steps=4), progress=False)  # other images
    assert json.loads((out / "manifest.json").read_text())["generated_now"] == 40
    assert shards(out)["shard-00000.npy"] != first["shard-00000.npy"]
    four = shards(out)["shard-00000.npy"]
    generate(model_dir, out, replace(SAMPLE, steps=4, sampler="dpmpp_2m"), progress=False)
    assert json.loads((out / "manifest.json").read_text())["generated_now"] == 40
    assert shards(out)["shard-00000.npy"] not in (first["shard-00000.npy"], four)
    # Settings that change no image (batch size, the FID sweep's) keep every shard.
    generate(model_dir, out, replace(SAMPLE, steps=4, sampler="dpmpp_2m", batch_size=3,
                                     sweep_steps=[3], sweep_samplers=["unipc"]),
             progress=False)
    assert json.loads((out / "manifest.json").read_text())["generated_now"] == 0


def test_changed_truncated_or_unhashed_shards_are_generated_again_with_one_line_each(
        model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    generate(model_dir, out, SAMPLE, progress=False)
    good = shards(out)
    changed, truncated, unhashed = (shard_path(out, s) for s in range(3))
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF                                   # one pixel value, header untouched
    changed.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:200])
    (out / "shard-00002.sha256").unlink()
    capsys.readouterr()
    generate(model_dir, out, SAMPLE, progress=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": damaged, ")[0] for line in lines] == \
        [str(changed), str(truncated), str(unhashed)]
    assert all(line.endswith("; generating it again") for line in lines)
    assert shards(out) == good
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generated_now"] == 40
    assert manifest["shard_sha256"]["shard-00000.npy"] == \
        hashlib.sha256(good["shard-00000.npy"]).hexdigest()


def run_stage(tmp_path: Path, model_dir: Path, out: Path, **sample) -> subprocess.Popen:
    params = tiny.write_params(tmp_path / f"params-{out.name}.yaml",
                               sample={**vars(SAMPLE), **sample})
    return subprocess.Popen([sys.executable, str(REPO / "stages" / "generate.py"), "--params",
                             str(params), "--models", str(model_dir), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# The project's own sampler and the default diffusers multistep solver, whose history
# must restart with each shard (dpmpp_2m shares that path; its batch independence
# above covers it): a third subprocess chain would add half a minute to every CI run.
@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "unipc"])
def test_killed_run_resumes_to_the_same_bytes_and_two_processes_match_one(model_dir,
                                                                          tmp_path, sampler):
    # The uninterrupted reference runs as the stage does, in its own process: the same
    # thread count as the killed run's, so the same kernels and the same bytes.
    reference = tmp_path / "reference"
    big = dict(n=96, shard_size=16, steps=20, sampler=sampler)
    output, _ = run_stage(tmp_path, model_dir, reference, **big).communicate(timeout=900)
    assert (reference / "manifest.json").is_file(), output

    killed = tmp_path / "killed"
    proc = run_stage(tmp_path, model_dir, killed, **big)
    # Generous: the process first imports torch (and diffusers for the ODE solvers), which
    # on a loaded 2-core machine has taken over 2 minutes; the loop ends at shard 1.
    deadline = time.time() + 600
    while time.time() < deadline and not shard_path(killed, 1).exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(shards(killed))
    assert 0 < done_before < 6, "kill came too late to test resuming"
    # Whatever the kill interrupted, every shard file on disk is complete.
    assert all(np.load(killed / name).shape[0] == 16 for name in shards(killed))
    rerun = run_stage(tmp_path, model_dir, killed, **big)
    output, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, output
    assert json.loads((killed / "manifest.json").read_text())["generated_now"] == \
        96 - 16 * done_before
    assert shards(killed) == shards(reference)

    # Two CPU processes: Lightning gives each half the threads, and the convolutions'
    # sums then split differently, so the images match up to float rounding.
    two = tmp_path / "two"
    proc = run_stage(tmp_path, model_dir, two, devices=2, **big)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    assert_same_images_up_to_rounding(two, reference)


@pytest.mark.slow
def test_two_generate_runs_into_one_folder_at_once_end_with_the_bytes_of_one(model_dir,
                                                                              tmp_path):
    # Every file is written under its own temporary name and renamed, so two runs at
    # once never write into the same file: the folder ends as one run leaves it.
    generate(model_dir, tmp_path / "one", SAMPLE, progress=False)
    both = [run_stage(tmp_path, model_dir, tmp_path / "both") for _ in range(2)]
    for proc in both:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    assert shards(tmp_path / "both") == shards(tmp_path / "one")
    hashes = sorted(p.name for p in (tmp_path / "both").glob("*.sha256"))
    assert [(tmp_path / "both" / h).read_bytes() for h in hashes] == \
        [(tmp_path / "one" / h).read_bytes() for h in hashes]
    assert not list((tmp_path / "both").glob("*.tmp"))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_bf16_samples_stay_close_to_float32_ones(tmp_path, sampler):
    """sample.precision=bf16-mixed rounds the network's arithmetic, not the images: the
    same indices give images within a few of 255 levels of float32's."""
    out = tiny.untrained_model(tmp_path / "models")
    images = {}
    for precision in ("32-true", "bf16-mixed"):
        sample = replace(SAMPLE, n=8, sampler=sampler, batch_size=8, shard_size=8,
                         precision=precision)
        generate(out, tmp_path / precision, sample, progress=False)
        images[precision] = np.load(shard_path(tmp_path / precision, 0)).astype(np.int16)
    diff = np.abs(images["32-true"] - images["bf16-mixed"])
    assert diff.max() > 0            # the network really ran in bf16
    # Measured with CPU autocast (8 DDIM / DPM++ steps): max 2-3 levels, mean 0.2-0.35;
    # the bounds leave room for other kernels' rounding.
    assert diff.mean() < 1.0, diff.mean()
    assert diff.max() <= 8, diff.max()


def _compiled_and_eager_images(tmp_path, sample: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    models = tiny.untrained_model(tmp_path / "models")
    images = {}
    for mode in ("none", sample.compile):
        generate(models, tmp_path / mode, replace(sample, compile=mode), progress=False)
        images[mode] = np.load(shard_path(tmp_path / mode, 0)).astype(np.int16)
    return images["none"], images[sample.compile]


@pytest.mark.parametrize("mode,precision,sampler", [("default", "32-true", "ddim"),
                                                    ("reduce-overhead", "bf16-mixed", "dpmpp_2m")])
def test_compiled_sampling_network_gives_the_same_images(tmp_path, monkeypatch, mode,
                                                         precision, sampler):
    """sample.compile traces the sampling network (autocast inside) once and the images
    stay those of the plain network. Inductor takes about a minute per graph on this
    CPU, so this test compiles with aot_eager (Dynamo + AOTAutograd, ordinary kernels:
    ddpm/models/compiling.py); the inductor run is the slow test below. DPM-Solver++ keeps the
    previous step's output, which reduce-overhead's CUDA graphs would overwrite without
    CompiledNet's copy."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("DDPM_COMPILE_BACKEND", "aot_eager")
    counters.clear()
    sample = replace(SAMPLE, n=8, sampler=sampler, batch_size=8, shard_size=8,
                     precision=precision, compile=mode)
    eager, compiled = _compiled_and_eager_images(tmp_path, sample)
    assert counters["stats"]["unique_graphs"] >= 1  # the network really went through Dynamo
    diff = np.abs(eager - compiled)
    assert diff.max() <= 1, diff.max()  # decompositions may round differently, no more
    fingerprints = [json.loads((tmp_path / m / "fingerprint.json").read_text())
                    for m in ("none", mode)]
    assert fingerprints[0]["sample"]["compile"] == "none" != fingerprints[1]["sample"]["compile"]


@pytest.mark.slow
def test_inductor_compiled_sampling_stays_within_float_rounding(tmp_path, monkeypatch):
    """The real backend (inductor's generated C++ on this CPU, about a minute to compile):
    fused kernels round differently, so a pixel may move by one level, rarely. float32
    pinned: under `auto` a bf16-capable CPU samples in bf16, whose rounding is coarser."""
    monkeypatch.delenv("DDPM_COMPILE_BACKEND", raising=False)
    sample = replace(SAMPLE, n=8, sampler="ddim", batch_size=8, shard_size=8,
                     compile="default", precision="32-true")
    eager, compiled = _compiled_and_eager_images(tmp_path, sample)
    diff = np.abs(eager - compiled)
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
