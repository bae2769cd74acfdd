"""Prepared Parquet shards (or encoded latents) → training batches (image, t, ε, position), plus a fixed validation set.

Workers decode PNG → uint8 [3, H, W] and draw each image's t, flip and ε from
(seed, epoch, its position in the epoch's permutation) (`ddpm.training.draws`);
scaling to [-1, 1] happens on the device after transfer
(`DiffusionSystem.on_after_batch_transfer`), so images travel as uint8.

The training order is part of the resume state: epoch e's order is a function
of (seed, e) alone, and the checkpoint records the epoch and how many of its
batches the training loop has taken, so a resumed run continues the epoch where
the interrupted one stopped and ends with the same weights, to the bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ddpm.autoencoder.latents import LatentImages
from ddpm.data.prepared import PreparedImages
from ddpm.diffusion.samplers import sample_generators
from ddpm.errors import DataError
from ddpm.training.draws import draw


class TrainingBatch(NamedTuple):
    """One training image (or, collated, a batch) with its own draws: `images` uint8
    [B, 3, H, W] (flipped where the draw says so; float in [-1, 1] after transfer),
    `t` int64 [B], `noise` float32 [B, 3, H, W], `position` int64 [B] in epoch
    `epoch`'s global permutation, `epoch` int64 [B] (one value)."""

    images: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    position: torch.Tensor
    epoch: torch.Tensor


class TrainingImages(Dataset):
    """The training split, indexed by `EpochOrder`'s (epoch, position, index) keys."""

    def __init__(self, images: PreparedImages, *, seed: int, timesteps: int, hflip: bool):
        self.images, self.seed, self.timesteps, self.hflip = images, seed, timesteps, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> TrainingBatch:
        epoch, position, index = key
        image = self.images[index]
        t, flip, noise = draw(self.seed, epoch, position, tuple(image.shape), self.timesteps)
        if self.hflip and flip:
            # Latents: the mirror image's own latent (an autoencoder is not flip-equivariant).
            mirrored = getattr(self.images, "mirrored", None)
            image = mirrored(index) if mirrored else image.flip(-1)
        return TrainingBatch(image, torch.tensor(t), noise, torch.tensor(position),
                             torch.tensor(epoch))


class FixedNoiseImages(Dataset):
    """Images with a fixed ε and t per index: a validation loss comparable across runs.

    Image i gets ε from the generator seeded by (seed, i) and t = ⌊(i + ½)·T/N⌋,
    so the N images cover the timesteps evenly and every run, architecture and
    batch size sees exactly the same (x0, ε, t) triples.
    """

    def __init__(self, images: Dataset, timesteps: int, seed: int):
        self.images = images
        n = len(images)
        self.t = torch.tensor([int((i + 0.5) * timesteps / n) for i in range(n)])
        shape = tuple(images[0].shape) if n else ()
        self.noise = [torch.randn(shape, generator=g) for g in sample_generators(seed, range(n))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[index], self.noise[index], self.t[index]


class EpochOrder(Sampler[tuple[int, int, int]]):
    """This rank's share of a training epoch, in an order that depends on (seed, epoch) only.

    Epoch e is a permutation of the data set seeded by (seed, e) and dealt
    round-robin to the ranks (each gets the same count, so ranks step together):
    rank r takes positions r, r + W, r + 2W, … It yields (epoch, position, index)
    keys, so each image's draws follow its position, not its rank. `skip` drops the
    first keys of the next iteration: what an interrupted run had already trained on.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def positions(self) -> range:
        """This rank's positions in every epoch's permutation."""
        return range(self.rank, len(self) * self.world_size, self.world_size)

    def indices(self, epoch: int) -> list[int]:
        # SeedSequence wants non-negative entropy; fold negative seeds into 64 bits.
        permutation = np.random.default_rng([self.seed % 2**64, epoch]).permutation(self.size)
        return permutation[self.positions()].tolist()

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        keys = list(zip(self.positions(), self.indices(self.epoch)))[self.skip:]
        self.skip, epoch = 0, self.epoch
        return iter([(epoch, position, index) for position, index in keys])

    def __len__(self) -> int:
        return self.size // self.world_size


class ResumableLoader(DataLoader):
    """A training DataLoader whose position Lightning keeps in the checkpoint.

    Lightning calls `state_dict()` when it saves a checkpoint and
    `load_state_dict()` when it resumes from one, before the first batch. The
    position comes from the training loop (`consumed`), not from the loader:
    the loop fetches a batch ahead, so the loader has handed out one more batch
    than was trained on.
    """

    def __init__(self, dataset: Dataset, order: EpochOrder, consumed: Callable[[], int],
                 **kwargs):
        super().__init__(dataset, sampler=order, **kwargs)
        self.order, self.consumed = order, consumed

    def state_dict(self) -> dict:
        return {"epoch": self.order.epoch, "batches": self.consumed()}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = state["epoch"], state["batches"]
        if batches >= len(self):  # saved after an epoch's last batch: next epoch, from its start
            epoch, batches = epoch + 1, 0
        self.order.epoch, self.order.skip = epoch, batches * self.batch_size


class FaceDataModule(L.LightningDataModule):
    """Train split (shuffled and sharded by rank: `EpochOrder`) and a fixed val set."""

    def __init__(self, prepared_dir: str | Path, *, batch_size: int, num_workers: int,
                 val_images: int, timesteps: int, seed: int, hflip: bool,
                 latents_dir: str | Path | None = None):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.latents_dir = None if latents_dir is None else Path(latents_dir)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_images, self.timesteps, self.seed = val_images, timesteps, seed
        self.hflip = hflip

    def split(self, name: str, limit: int | None = None) -> Dataset:
        """A split's uint8 images, or in latent space its scaled latents."""
        if self.latents_dir is not None:
            return LatentImages(self.latents_dir, name, limit)
        return PreparedImages(self.prepared_dir, name, limit)

    def setup(self, stage: str) -> None:
        self.train_set = TrainingImages(self.split("train"), seed=self.seed,
                                        timesteps=self.timesteps, hflip=self.hflip)
        if len(self.train_set) < self.batch_size:
            raise DataError(f"train.batch_size = {self.batch_size}: larger than the "
                            f"{len(self.train_set)} training images; lower it")
        holdout = self.split("holdout", self.val_images)
        if len(holdout) == 0:  # tiny data sets: validate on training images instead
            holdout = self.split("train", self.val_images)
        self.val_set = FixedNoiseImages(holdout, self.timesteps, self.seed)

    def _loader_options(self) -> dict:
        return dict(batch_size=self.batch_size, num_workers=self.num_workers,
                    pin_memory=torch.cuda.is_available(),
                    persistent_workers=self.num_workers > 0,
                    # Its own generator for the workers' base seed: drawing it from the
                    # global one would shift the training noise on every resume.
                    generator=torch.Generator().manual_seed(self.seed))

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer  # None outside a Trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def _batches_consumed(self) -> int:
        # Batches of the current epoch the training loop has taken (restored on resume).
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> DataLoader:
        # The Trainer runs with use_distributed_sampler=False: EpochOrder shards by rank.
        rank, world_size = self._rank()
        order = EpochOrder(len(self.train_set), self.seed, rank, world_size)
        return ResumableLoader(self.train_set, order, self._batches_consumed, drop_last=True,
                               **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        rank, world_size = self._rank()
        sampler = (DistributedSampler(self.val_set, world_size, rank, shuffle=False)
                   if world_size > 1 else None)
        return DataLoader(self.val_set, sampler=sampler, **self._loader_options())
