"""Prepared Parquet shards → uint8 image tensors for training, plus a fixed validation set.

Workers only decode PNG → uint8 [3, H, W]; scaling to [-1, 1] and flips happen on
the device after transfer (`DiffusionSystem.on_after_batch_transfer`), so the
loader moves 4× fewer bytes than float32 and the accelerator does the arithmetic.

The training order is part of the resume state: epoch e's order is a function
of (seed, e) alone, and the checkpoint records the epoch and how many of its
batches the training loop has taken, so a resumed run continues the epoch where
the interrupted one stopped and ends with the same weights, to the bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ddpm.data.prepared import PreparedImages
from ddpm.diffusion.samplers import sample_generators
from ddpm.errors import DataError


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


class EpochOrder(Sampler[int]):
    """This rank's share of a training epoch, in an order that depends on (seed, epoch) only.

    Epoch e is a permutation of the data set seeded by (seed, e) and dealt
    round-robin to the ranks (each gets the same count, so ranks step together).
    `skip` drops the first indices of the next iteration: what an interrupted
    run had already trained on.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def indices(self, epoch: int) -> list[int]:
        # SeedSequence wants non-negative entropy; fold negative seeds into 64 bits.
        rng = np.random.default_rng([self.seed % 2**64, epoch])
        usable = len(self) * self.world_size
        return rng.permutation(self.size)[self.rank:usable:self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.indices(self.epoch)[self.skip:]
        self.skip = 0
        return iter(order)

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
