"""The encode stage's output: every prepared image's latent, and its mirror image's, once.

    latents/
      manifest.json          space, scale, shape [C, h, w], shards per split, hashes
      train-00000.npy ...    float32 [k, 2, C, h, w]: the posterior mean of image i and
      holdout-00000.npy ...  of its mirror image (index 1), before scaling

The diffusion model sees `scale · z`: `scale` = 1 / (the standard deviation of the
training latents), so its data has unit variance as the noise schedule assumes
(Rombach et al. 2022, §4.3.2's "rescaling"); decoding divides by it again.

Why store the mirror image's latent: training flips half its images, and a
convolutional autoencoder is not flip-equivariant (its learned filters are not
symmetric), so flip(encode(x)) ≠ encode(flip(x)). Encoding both once is exact
and costs one more encoder pass per image at encode time only.

Why the posterior mean and not a sample: with a KL weight of ~1e-6 the posterior's
standard deviation is tiny next to the data, and the mean makes the latents (and so
every cached stage after encode) deterministic.

In pixel space the stage writes only a manifest saying so, the same every time, so
changing `autoencoder.*` in pixel space re-runs nothing downstream.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm.data.prepared import PreparedImages, read_manifest
from ddpm.errors import DataError
from ddpm.io.atomic import write_json_atomically, write_npy_atomically
from ddpm.io.images import to_unit_range
from ddpm.io.progress import progress_bar

MANIFEST = "manifest.json"
SPLITS = ("train", "holdout")


def pixel_manifest(out_dir: str | Path) -> None:
    """Pixel space: a constant manifest, so nothing downstream sees a change."""
    write_json_atomically(Path(out_dir) / MANIFEST, {"space": "pixel"})


@torch.no_grad()
def encode_split(codec, images: PreparedImages, batch_size: int, device: torch.device,
                 bar=None) -> np.ndarray:
    """float32 [N, 2, C, h, w]: the posterior means of each image and of its mirror image."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([images[i] for i in range(start, min(start + batch_size,
                                                                  len(images)))])
        x = to_unit_range(batch.to(device))
        pair = torch.stack([codec.encode(x)[0], codec.encode(x.flip(-1))[0]], dim=1)
        out.append(pair.float().cpu().numpy())
        if bar is not None:
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 2, 1, 1, 1), np.float32)


def unit_variance_scale(train_latents: np.ndarray) -> float:
    """1 / std of the training latents (both mirror halves), over every value."""
    std = float(train_latents.astype(np.float64).std())
    if not np.isfinite(std) or std <= 0:
        raise DataError(f"training latents have standard deviation {std}: the autoencoder "
                        "collapsed; check autoencoder/ (its PSNR) and re-run it")
    return 1.0 / std


def encode_dataset(codec, prepared_dir: str | Path, out_dir: str | Path, *,
                   shard_size: int, batch_size: int, device: torch.device,
                   autoencoder_sha256: str) -> dict:
    """Encode both splits into `out_dir` (shards, then the manifest last)."""
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.npy"):  # a previous run's shards
        stale.unlink()
    splits = {split: PreparedImages(prepared_dir, split) for split in SPLITS}
    total = sum(len(s) for s in splits.values())
    shards, latents = {}, {}
    with progress_bar(total=total, desc="encode", unit="img") as bar:
        for split, images in splits.items():
            latents[split] = encode_split(codec, images, batch_size, device, bar)
    for split, z in latents.items():
        shards[split] = []
        for k, start in enumerate(range(0, len(z), shard_size)):
            name = f"{split}-{k:05d}.npy"
            write_npy_atomically(out_dir / name, z[start:start + shard_size])
            shards[split].append(name)
    if len(latents["train"]) == 0:
        raise DataError(f"{prepared_dir}: no training images to encode")
    manifest = {
        "space": "latent", "scale": unit_variance_scale(latents["train"]),
        "shape": list(latents["train"].shape[2:]), "factor": int(codec.factor),
        "counts": {split: len(z) for split, z in latents.items()}, "shards": shards,
        "mirrored": True, "statistic": "posterior mean",
        "format": "npy, float32 [k, 2, C, h, w]: image, mirror image; unscaled",
        "data_sha256": read_manifest(prepared_dir)["content_sha256"],
        "autoencoder_sha256": autoencoder_sha256,
    }
    write_json_atomically(out_dir / MANIFEST, manifest)
    return manifest


def autoencoder_sha256(folder: str | Path) -> str:
    """A hash of what loads the autoencoder (config and weights, not the quality files)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix not in (".png", ".npy") and path.name != "quality.json":
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def read_latent_manifest(latents_dir: str | Path) -> dict:
    path = Path(latents_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no encoded latents; run the encode stage first "
                        "(dvc repro encode)")
    return json.loads(path.read_text())


class LatentImages(Dataset):
    """One split's scaled latents: `[i]` is image i's, `mirrored(i)` its mirror image's."""

    def __init__(self, latents_dir: str | Path, split: str, limit: int | None = None):
        manifest = read_latent_manifest(latents_dir)
        if manifest.get("space") != "latent":
            raise DataError(f"{latents_dir} holds no latents (model.space was pixel when it "
                            "was written); re-run encode (dvc repro)")
        arrays = [np.load(Path(latents_dir) / name) for name in manifest["shards"][split]]
        z = np.concatenate(arrays) if arrays else np.zeros((0, 2, *manifest["shape"]),
                                                           np.float32)
        self.latents = torch.from_numpy(z[:limit] * np.float32(manifest["scale"]))
        self.scale, self.shape = manifest["scale"], tuple(manifest["shape"])

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.latents[index, 0]

    def mirrored(self, index: int) -> torch.Tensor:
        return self.latents[index, 1]
