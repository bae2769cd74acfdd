"""Prepared Parquet shards → uint8 image tensors for training, plus a fixed validation set.

Workers only decode PNG → uint8 [3, H, W]; scaling to [-1, 1] and flips happen on
the device after transfer (`DiffusionSystem.on_after_batch_transfer`), so the
loader moves 4× fewer bytes than float32 and the accelerator does the arithmetic.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ddpm.diffusion.samplers import sample_generators
from ddpm.errors import DataError


def read_manifest(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: prepared data set not found; run the prepare stage first "
                        "(dvc repro prepare)")
    return json.loads(path.read_text())


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes → uint8 tensor [3, H, W]."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))  # [H, W, 3]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


class PreparedImages(Dataset):
    """One split of a prepared data set, held as PNG bytes and decoded on access."""

    def __init__(self, prepared_dir: str | Path, split: str, limit: int | None = None):
        manifest = read_manifest(prepared_dir)
        self.keys: list[str] = []
        self.pngs: list[bytes] = []
        for shard in manifest["shards"][split]:
            table = pq.read_table(Path(prepared_dir) / shard)
            self.keys += table["key"].to_pylist()
            self.pngs += table["image"].to_pylist()
            if limit is not None and len(self.keys) >= limit:
                break
        if limit is not None:
            self.keys, self.pngs = self.keys[:limit], self.pngs[:limit]
        self.img_size = manifest["img_size"]

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return decode_png(self.pngs[index])


class FixedNoiseImages(Dataset):
    """Images with a fixed ε and t per index: a validation loss comparable across runs.

    Image i gets ε from the generator seeded by (seed, i) and t = ⌊(i + ½)·T/N⌋,
    so the N images cover the timesteps evenly and every run, architecture and
    batch size sees exactly the same (x0, ε, t) triples.
    """

    def __init__(self, images: PreparedImages, timesteps: int, seed: int):
        self.images = images
        n = len(images)
        self.t = torch.tensor([int((i + 0.5) * timesteps / n) for i in range(n)])
        size = images.img_size
        self.noise = [torch.randn((3, size, size), generator=g)
                      for g in sample_generators(seed, range(n))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[index], self.noise[index], self.t[index]


class FaceDataModule(L.LightningDataModule):
    """Train split (shuffled; Lightning adds a DistributedSampler under DDP) and a fixed val set."""

    def __init__(self, prepared_dir: str | Path, *, batch_size: int, num_workers: int,
                 val_images: int, timesteps: int, seed: int):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_images, self.timesteps, self.seed = val_images, timesteps, seed

    def setup(self, stage: str) -> None:
        self.train_set = PreparedImages(self.prepared_dir, "train")
        if len(self.train_set) < self.batch_size:
            raise DataError(f"train.batch_size = {self.batch_size}: larger than the "
                            f"{len(self.train_set)} training images; lower it")
        holdout = PreparedImages(self.prepared_dir, "holdout", limit=self.val_images)
        if len(holdout) == 0:  # tiny data sets: validate on training images instead
            holdout = PreparedImages(self.prepared_dir, "train", limit=self.val_images)
        self.val_set = FixedNoiseImages(holdout, self.timesteps, self.seed)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          drop_last=shuffle, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
