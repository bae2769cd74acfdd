"""Generate N samples as uint8 shards: deterministic per index, resumable, sharded over devices.

Sample i draws all its noise from its own generator seeded by (seed, i)
(`ddpm.diffusion.samplers.sample_generators`), so its pixels do not depend on
the batch size, the number of devices, or interruptions.

Output folder:
    shard-00000.npy ...   uint8 [k, H, W, 3]; shard s holds indices s·shard_size ... (< n)
    shard-00000.sha256    the SHA-256 of that shard's file, recorded as it is written
    fingerprint.json      what the shards were made with (weights hash + sampler settings)
    manifest.json         n, shards, settings, throughput
    grid.png              the first 64 samples, for people to look at
    trajectory.gif        x_t and the predicted x0 along the sampling steps (log #6)

Resuming: shards are written under a temporary name and renamed, so a shard
file is either complete or absent. A rerun with the same fingerprint keeps
every finished shard whose bytes still match its recorded hash, and generates
again, with one line, any that do not (changed, truncated, unreadable); a
different fingerprint clears the folder first. `n` is not part of the
fingerprint, so raising it extends an existing run.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ddpm.autoencoder.decoding import LatentDecoder, load_decoder
from ddpm.config import build_section, to_dict
from ddpm.diffusion.registry import sample_images, sampler_nfe
from ddpm.diffusion.samplers import initial_noise, sample_generators
from ddpm.io.atomic import write_atomically, write_json_atomically, write_text_atomically
from ddpm.io.images import grid_image, to_uint8
from ddpm.io.precision import resolve_sample
from ddpm.io.progress import progress_bar
from ddpm.models.checkpoint import WEIGHTS_FILES, load_model
from ddpm.models.compiling import CompiledNet
from ddpm.models.config import ModelConfig
from ddpm.sampling.config import SampleConfig

GRID_SIZE = 64
TRAJECTORY_SEEDS = 4
TRAJECTORY_FRAMES = 16


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Settings that do not change any image: a run may resume or extend with other values.
# precision and compile stay in: bf16 changes pixels by a few levels, and compiled
# kernels fuse (and, under bf16, round) differently, so their shards must not mix.
NOT_FINGERPRINTED = ("n", "batch_size", "accelerator", "devices", "num_nodes",
                     "sweep_samplers", "sweep_steps", "sweep_n")


def sample_fingerprint(model_dir: Path, sample: SampleConfig, device_type: str) -> dict:
    settings = {k: v for k, v in to_dict(sample).items() if k not in NOT_FINGERPRINTED}
    weights = model_dir / WEIGHTS_FILES[sample.use_ema]
    # CPU and GPU kernels round differently: shards from both must not mix.
    expected = {"weights_sha256": file_sha256(weights), "sample": settings,
                "device_type": device_type}
    latent = json.loads((model_dir / "config.json").read_text()).get("latent")
    if latent:  # latent space: the images also depend on the decoder and the scale
        expected["latent"] = latent
    return expected


def shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"shard-{shard:05d}.npy"


def shard_indices(sample: SampleConfig, shard: int) -> range:
    return range(shard * sample.shard_size, min((shard + 1) * sample.shard_size, sample.n))


def shard_count(sample: SampleConfig) -> int:
    return (sample.n + sample.shard_size - 1) // sample.shard_size


def hash_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"shard-{shard:05d}.sha256"


def shard_damage(out_dir: Path, shard: int) -> str | None:
    """Why an existing shard file cannot be kept (its bytes differ from the record), or None."""
    recorded = hash_path(out_dir, shard)
    if not recorded.is_file():
        return f"no recorded hash ({recorded.name} is missing)"
    if file_sha256(shard_path(out_dir, shard)) != recorded.read_text().strip():
        return f"its bytes differ from the SHA-256 recorded in {recorded.name}"
    return None


def shard_done(out_dir: Path, sample: SampleConfig, shard: int) -> bool:
    """Whether shard `shard` is on disk, intact and holds all its images."""
    path = shard_path(out_dir, shard)
    if not path.is_file():
        return False
    damage = shard_damage(out_dir, shard)
    if damage:
        print(f"{path}: damaged, {damage}; generating it again")
        return False
    # Intact but shorter: made when sample.n was smaller, so it is extended.
    return np.load(path, mmap_mode="r").shape[0] == len(shard_indices(sample, shard))


class AutocastNet(torch.nn.Module):
    """The network under bf16 autocast, its output returned in float32.

    Only the network's matmuls and convolutions run in bf16 (where GPUs have the
    throughput); the sampler's update x_t → x_s, whose small differences of large
    numbers bf16 would round away, stays in float32.
    """

    def __init__(self, net: torch.nn.Module, device_type: str):
        super().__init__()
        self.net, self.device_type = net, device_type

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.net(x, t).float()


def sampling_net(net: torch.nn.Module, sample: SampleConfig,
                 device: str | torch.device) -> torch.nn.Module:
    """The network as the sampler calls it: under bf16 autocast and compiled, per `sample`.

    Build it once per model: each new wrapper would compile again.
    """
    sample, _ = resolve_sample(sample, device)  # `auto`: bf16 only where it is native
    if sample.precision == "bf16-mixed":
        net = AutocastNet(net, torch.device(device).type)
    if sample.compile != "none":
        net = CompiledNet(net, sample.compile)  # autocast inside the traced graph
    return net


def run_sampler(net, schedule, sample: SampleConfig, prediction: str, indices,
                shape: tuple[int, int, int], device, trajectory_frames: int = 0):
    """Samples for `indices` (a batch) with the configured sampler; a SampleResult.

    `net` is the sampling network (`sampling_net`): precision and compilation are
    applied there, once, not per batch.
    """
    generators = sample_generators(sample.seed, indices)
    noise = initial_noise(generators, shape, device)
    return sample_images(sample.sampler, net, schedule, noise, generators, steps=sample.steps,
                         eta=sample.eta, spacing=sample.spacing,
                         solver_spacing=sample.solver_spacing, variance=sample.variance,
                         clip_x0=sample.clip_x0, prediction=prediction,
                         frames=trajectory_frames)


@dataclass
class Generator:
    """Generates the shards assigned to one rank."""
    net: torch.nn.Module  # as trained, in eval mode on `device`; the sampler calls `sampler_net`
    schedule: object
    sample: SampleConfig
    prediction: str
    shape: tuple[int, int, int]  # of what the network denoises: images, or latents
    device: torch.device
    decoder: LatentDecoder | None = None  # latent space: latents → images

    def __post_init__(self):
        self.sampler_net = sampling_net(self.net, self.sample, self.device)

    @property
    def image_size(self) -> int:
        """Side of the output images (px)."""
        return self.shape[-1] * (1 if self.decoder is None else self.decoder.factor)

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """The sampler's output as uint8 images [B, 3, H, W] (decoded in latent space)."""
        return to_uint8(x if self.decoder is None else self.decoder(x))

    def images(self, indices: range, bar: tqdm | None = None) -> np.ndarray:
        """Samples `indices` as uint8 [k, H, W, 3], `sample.batch_size` at a time."""
        images = []
        for start in range(indices.start, indices.stop, self.sample.batch_size):
            batch = range(start, min(start + self.sample.batch_size, indices.stop))
            result = run_sampler(self.sampler_net, self.schedule, self.sample, self.prediction,
                                 batch, self.shape, self.device)
            images.append(self.to_uint8(result.images).permute(0, 2, 3, 1).cpu().numpy())
            if bar is not None:
                bar.update(len(batch))
        return np.concatenate(images)

    def shard(self, out_dir: Path, shard: int, bar: tqdm) -> None:
        buffer = io.BytesIO()
        np.save(buffer, self.images(shard_indices(self.sample, shard), bar))
        data = buffer.getvalue()
        # The hash first: a kill between the two leaves a hash without its shard
        # (generated again, silently), never a shard that cannot be checked.
        write_text_atomically(hash_path(out_dir, shard), hashlib.sha256(data).hexdigest() + "\n")
        write_atomically(shard_path(out_dir, shard), lambda tmp: tmp.write_bytes(data))


def load_generator(model_dir: Path, sample: SampleConfig,
                   device: str | torch.device = "cpu") -> Generator:
    """A Generator for the trained model in `model_dir` (EMA or raw weights, per `sample`)."""
    net, schedule, config = load_model(model_dir, device, use_ema=sample.use_ema)
    model = build_section(ModelConfig, config["model"], "model")
    decoder = load_decoder(model_dir, config, device)
    return Generator(net, schedule, for_space(sample, model), config["diffusion"]["prediction"],
                     model.data_shape, torch.device(device), decoder)


def for_space(sample: SampleConfig, model: ModelConfig) -> SampleConfig:
    """`sample` as it applies to `model.space`: latents have no fixed range, so
    `sample.clip_x0` (clip to [-1, 1]) applies to pixel space only."""
    return replace(sample, clip_x0=sample.clip_x0 and model.space == "pixel")


def prepare_output(out_dir: Path, expected: dict) -> None:
    """Keep finished shards made with the same fingerprint; otherwise start clean."""
    path = out_dir / "fingerprint.json"
    if out_dir.exists() and (not path.is_file() or json.loads(path.read_text()) != expected):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, expected)


def iter_shards(out_dir: str | Path):
    """Yield the generated images shard by shard (uint8 [k, H, W, 3]), per the manifest."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    for name in manifest["shards"]:
        yield np.load(out_dir / name)


def generate(model_dir: str | Path, out_dir: str | Path, sample: SampleConfig, *,
             rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
             barrier=lambda: None, progress: bool = True) -> dict | None:
    """Generate `sample.n` images into `out_dir`; every rank calls this with its rank.

    Rank r makes the unfinished shards s with s % world_size == r; rank 0 then
    writes the grid, the trajectory movie and the manifest (returned on rank 0).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    # Resolved first: the fingerprint (resuming) and the manifest carry what was used.
    sample, formats = resolve_sample(sample, device)
    if rank == 0 and progress:
        print(f"sampling {formats}")
    engine = load_generator(model_dir, sample, device)
    expected = sample_fingerprint(model_dir, sample, torch.device(device).type)
    if rank == 0:
        prepare_output(out_dir, expected)
    barrier()
    img_size, schedule = engine.image_size, engine.schedule
    shards = shard_count(sample)
    mine = [s for s in range(shards) if s % world_size == rank
            and not shard_done(out_dir, sample, s)]
    todo = sum(len(shard_indices(sample, s)) for s in mine)
    start = time.perf_counter()
    with progress_bar(todo, f"generate ({sample.sampler})",
                      disable=not progress or rank != 0) as bar:
        for shard in mine:
            engine.shard(out_dir, shard, bar)
    elapsed = time.perf_counter() - start
    barrier()
    if rank != 0:
        return None
    write_grid(first_images(out_dir, shards, GRID_SIZE), out_dir / "grid.png")
    write_trajectory(engine, out_dir / "trajectory.gif")
    manifest = {"n": sample.n, "img_size": img_size, "shards": [shard_path(out_dir, s).name
                                                               for s in range(shards)],
                "format": f"npy, uint8 [k, H, W, 3]; shard s holds indices from "
                          f"s*{sample.shard_size}",
                "shard_sha256": {shard_path(out_dir, s).name: hash_path(out_dir, s).read_text()
                                 .strip() for s in range(shards)},
                "sample": to_dict(sample), "formats": formats,
                "nfe": sampler_nfe(sample.sampler, sample.steps, schedule.timesteps),
                "weights_sha256": expected["weights_sha256"],
                "generated_now": todo, "seconds": round(elapsed, 2),
                "images_per_s_rank0": round(todo / elapsed, 2) if todo and elapsed else None}
    write_json_atomically(out_dir / "manifest.json", manifest)
    return manifest


def first_images(out_dir: Path, shards: int, count: int) -> np.ndarray:
    images, total = [], 0
    for shard in range(shards):
        if total >= count:
            break
        images.append(np.load(shard_path(out_dir, shard))[:count - total])
        total += len(images[-1])
    return np.concatenate(images)


def write_grid(images: np.ndarray, path: Path) -> None:
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # [B, 3, H, W]
    grid = grid_image(tensor, nrow=int(np.ceil(np.sqrt(len(images)))))
    write_atomically(path, lambda p: grid.save(p, format="PNG"))


def write_trajectory(engine: Generator, path: Path) -> None:
    """An animated GIF: for a few fixed seeds, x_t (top row) and predicted x0 (bottom row)."""
    # Uncompiled: a graph for one more batch shape would take longer than these few images.
    eager = replace(engine.sample, compile="none")
    result = run_sampler(sampling_net(engine.net, eager, engine.device), engine.schedule, eager,
                         engine.prediction, range(TRAJECTORY_SEEDS), engine.shape,
                         engine.device, trajectory_frames=TRAJECTORY_FRAMES)
    frames = []
    for t, x_t, x0_hat in result.trajectory:
        both = torch.cat([engine.to_uint8(x_t), engine.to_uint8(x0_hat)])  # [2·seeds, 3, H, W]
        frame = grid_image(both, nrow=TRAJECTORY_SEEDS)
        scale = max(1, 64 // engine.image_size)  # small images enlarged to 64 px, no more
        frames.append(frame.resize((frame.width * scale, frame.height * scale),
                                   Image.Resampling.NEAREST))
    durations = [120] * (len(frames) - 1) + [1500]  # linger on the result

    def save(tmp: Path) -> None:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0)

    write_atomically(path, save)
    if shutil.which("ffmpeg"):
        mp4 = path.with_suffix(".mp4")
        subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(path), "-movflags",
                        "faststart", "-pix_fmt", "yuv420p", "-vf",
                        "scale=trunc(iw/2)*2:trunc(ih/2)*2", str(mp4)], check=False)
