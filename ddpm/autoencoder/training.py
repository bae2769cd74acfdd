"""`train_autoencoder(...)`: our small autoencoder, trained with Lightning, saved with its quality.

The objective (Rombach et al. 2022, appendix G, without its two image-quality terms):

    loss = rec(x, x̂) + kl_weight · KL(q(z|x) ‖ N(0, I)) / D,   x̂ = decode(z), z ~ q(z|x)

with rec the mean squared error per pixel value and D = 3·H·W. LDM sums both terms
over the image; dividing both by D keeps `kl_weight` LDM's (1e-6) and the loss on a
per-pixel scale, which Adam does not see.

MSE rather than LDM's L1: on 32 px demo faces at f = 4 (400 steps, batch 8, lr 1e-3;
bicubic round trip 21.7 dB) MSE reached a holdout PSNR of 21.3 dB against L1's 20.8,
and 21.7 against 19.8 with the encoder's logvar starting at −6 (network.py uses −10); PSNR
is a function of the MSE. LDM's LPIPS perceptual loss and patch discriminator are
left out: their pretrained weights need the network, and the pipeline measures PSNR
against the bicubic baseline.

Batches are a function of (seed, step): step s takes the images and flips drawn from
numpy's PCG64 keyed by (seed, s), and its posterior noise from a torch generator
seeded by the same draw. No loader state or RNG state is saved, and a run resumed
from a checkpoint sees exactly the batches of an uninterrupted one.

Resuming: `state_dir/last.ckpt`, replaced atomically every `checkpoint_every` steps
and at the end, holds a fingerprint (the settings that change what is learned, f, C,
the training set's size); a checkpoint with another fingerprint is set aside, with
one line saying so. `max_steps` is not fingerprinted (the learning rate is constant
after warm-up), so raising it continues a finished run.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ddpm.autoencoder.config import AutoencoderConfig
from ddpm.autoencoder.files import save_autoencoder
from ddpm.autoencoder.network import Autoencoder, kl_divergence
from ddpm.autoencoder.quality import bicubic_roundtrip, quality_summary, reconstruct
from ddpm.config import to_dict
from ddpm.errors import ConfigError, DataError
from ddpm.io.atomic import write_atomically
from ddpm.io.devices import torch_device
from ddpm.io.images import grid_image, to_unit_range
from ddpm.io.progress import progress_line

CHECKPOINT = "last.ckpt"
GRID_IMAGES = 8
# Settings that do not change what is learned: changing them keeps a checkpoint resumable.
NOT_FINGERPRINTED = {"max_steps", "checkpoint_every", "eval_images", "accelerator"}

# Batches are drawn in the main process on purpose (their draws are cheap next to a step).
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
# Third-party noise with nothing for the user to do (as in the train stage): torch's pytree
# deprecation raised inside Lightning, Lightning's advert, and its note on saving full
# checkpoints (which reads like a warning about our weights_only=True loads).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
                        category=FutureWarning)
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.getMessage()).startswith("💡 Tip"))
logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(
    lambda record: "was not set, defaulting to" not in str(record.getMessage()))


# ---------------------------------------------------------------- batches


def draw_batch(seed: int, step: int, n_images: int, batch_size: int
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """(image indices, horizontal flips, posterior noise seed) of step `step`, always drawn
    in this order from PCG64 keyed by (seed, step). Indices are drawn with replacement:
    no epochs, so a step's batch depends on no other step's draws."""
    rng = np.random.default_rng([seed % 2**64, step])
    indices = rng.integers(n_images, size=batch_size)
    flips = rng.random(batch_size) < 0.5
    return indices, flips, int(rng.integers(2**63))


def crop_offsets(seed: int, step: int, batch_size: int, room: int) -> np.ndarray:
    """[B, 2] (top, left) of each image's crop at step `step`, each in 0..room, from their
    own PCG64 stream keyed by (seed, step, 1): draw_batch's draws stay as they were."""
    return np.random.default_rng([seed % 2**64, step, 1]).integers(room + 1, size=(batch_size, 2))


class StepBatches(IterableDataset):
    """Batches (uint8 images [B, 3, H, W], noise seed, step) from step `first_step()` on.

    `first_step` is read when iteration starts, after Lightning restored a checkpoint.
    """

    def __init__(self, images: Dataset, *, seed: int, batch_size: int,
                 first_step: Callable[[], int], crop: int = 0):
        self.images, self.seed, self.batch_size = images, seed, batch_size
        self.first_step, self.crop = first_step, crop

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices, flips, noise_seed = draw_batch(self.seed, step, len(self.images),
                                                self.batch_size)
        images = torch.stack([self.images[int(i)].flip(-1) if flip else self.images[int(i)]
                              for i, flip in zip(indices, flips)])
        side = images.shape[-1]
        if 0 < self.crop < side:
            offsets = crop_offsets(self.seed, step, self.batch_size, side - self.crop)
            images = torch.stack([image[:, y:y + self.crop, x:x + self.crop]
                                  for image, (y, x) in zip(images, offsets)])
        return images, torch.tensor(noise_seed), torch.tensor(step)

    def __iter__(self) -> Iterator:
        return (self.batch(step) for step in itertools.count(self.first_step()))


# ---------------------------------------------------------------- the Lightning system


def objective(net: Autoencoder, x: torch.Tensor, kl_weight: float,
              generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, rec, KL) of a batch x in [-1, 1]: rec + kl_weight · KL / D (module docstring).

    rec is the mean squared error per pixel value (see the module docstring for why
    not L1); KL is summed over the latent, averaged over the batch; D = 3·H·W.
    """
    x_hat, mean, logvar = net(x, generator)
    rec = (x_hat - x).pow(2).mean()
    kl = kl_divergence(mean, logvar)
    return rec + kl_weight * kl / x[0].numel(), rec, kl


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up of the learning rate over `warmup_steps`, then constant."""
    return min(1.0, (step + 1) / max(warmup_steps, 1))


class AutoencoderSystem(L.LightningModule):
    """`net` trained on rec + kl_weight · KL / D (see the module docstring)."""

    def __init__(self, net: Autoencoder, config: AutoencoderConfig):
        super().__init__()
        self.net, self.config = net, config
        self.save_hyperparameters({"autoencoder": to_dict(config), "factor": net.factor,
                                   "latent_channels": net.latent_channels})

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, noise_seed, step = batch
        if int(step) != self.global_step:  # the resume guarantee rests on this
            raise RuntimeError(f"batch of step {int(step)} at step {self.global_step}")
        generator = torch.Generator(self.device).manual_seed(int(noise_seed))
        loss, rec, kl = objective(self.net, to_unit_range(images), self.config.kl_weight,
                                  generator)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/rec", rec, on_step=True, on_epoch=False)
        self.log("train/kl", kl, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_factor(step, self.config.warmup_steps))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# ---------------------------------------------------------------- resume state


def fingerprint(config: AutoencoderConfig, factor: int, latent_channels: int,
                n_train: int) -> dict:
    settings = {k: v for k, v in to_dict(config).items() if k not in NOT_FINGERPRINTED}
    return {**settings, "factor": factor, "latent_channels": latent_channels,
            "train_images": n_train}


def resume_path(path: Path, expected: dict, max_steps: int) -> Path | None:
    """`path` if it holds a checkpoint made with `expected` and no further than `max_steps`;
    else None, setting it aside (renamed, never deleted) with one line saying why."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means the same: start over
        saved = f"unreadable ({type(err).__name__})"
    found = saved.get("autoencoder_fingerprint", {}) if isinstance(saved, dict) else {}
    if found == expected and saved["global_step"] <= max_steps:
        print(f"resuming from {path} at step {saved['global_step']}")
        return path
    if found == expected:
        why = f"trained to step {saved['global_step']}, past max_steps = {max_steps}"
    elif isinstance(saved, dict):
        changed = [f"{k} {found.get(k)!r} -> {expected.get(k)!r}"
                   for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k)]
        why = "made with other settings or data (" + ", ".join(changed[:4]) + ")"
    else:
        why = saved if isinstance(saved, str) else "not a training checkpoint"
    aside = path.with_name(f"set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.ckpt")
    path.rename(aside)
    print(f"set aside {path} as {aside.name}: {why}; training starts from scratch")
    return None


class ResumeCheckpoint(L.Callback):
    """A full checkpoint every `every` steps and at the end, written under a temporary
    name and renamed, so a kill mid-write leaves the previous one whole."""

    def __init__(self, path: Path, every: int, fingerprint: dict):
        self.path, self.every, self.fingerprint = Path(path), every, fingerprint

    def _save(self, trainer: L.Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        os.replace(tmp, self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["autoencoder_fingerprint"] = self.fingerprint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step % self.every:  # else saved at the last batch already
            self._save(trainer)


class ProgressTenths(L.Callback):
    """A plain progress line every tenth of the run (logs and pipes, where a bar is unreadable)."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self._start, self._step0 = 0.0, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._step0 = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % max(1, trainer.max_steps // 10) == 0 or step == trainer.max_steps:
            loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
            print(progress_line("autoencoder step", step, trainer.max_steps,
                                time.perf_counter() - self._start, step - self._step0,
                                per_item=self.images_per_step, extra=f"  loss {loss:.4f}"),
                  flush=True)


# ---------------------------------------------------------------- the run


def train_autoencoder(config: AutoencoderConfig, *, factor: int, latent_channels: int,
                      train_images: Dataset, holdout_images: Dataset, out_dir: str | Path,
                      state_dir: str | Path, live_dir: str | Path,
                      progress: bool = True) -> dict:
    """Train (or resume) our autoencoder; save it to `out_dir` with reconstructions.png;
    log its holdout quality to `live_dir` and return it (`quality_summary` + "kl")."""
    from dvclive.lightning import DVCLiveLogger

    if len(train_images) == 0 or len(holdout_images) < 2:
        raise DataError(f"the autoencoder needs training images and at least 2 holdout images "
                        f"(has {len(train_images)} and {len(holdout_images)}); use more data "
                        "or raise data.holdout_fraction")
    device = torch.device(torch_device("autoencoder", config.accelerator))
    expected = fingerprint(config, factor, latent_channels, len(train_images))
    resume = resume_path(Path(state_dir) / CHECKPOINT, expected, config.max_steps)
    with torch.random.fork_rng(devices=[]):  # the initial weights, leaving the caller's RNG
        torch.manual_seed(config.seed)
        net = Autoencoder.from_config(config, factor=factor, latent_channels=latent_channels)
    system = AutoencoderSystem(net, config)
    if config.crop % factor:
        raise ConfigError(f"autoencoder.crop = {config.crop} is not a multiple of "
                          f"model.latent_factor = {factor}: use {max(factor, config.crop // factor * factor)}")
    batches = StepBatches(train_images, seed=config.seed, batch_size=config.batch_size,
                          first_step=lambda: system.global_step, crop=config.crop)
    bar = progress and sys.stderr.isatty()
    callbacks: list[L.Callback] = [ResumeCheckpoint(Path(state_dir) / CHECKPOINT,
                                                    config.checkpoint_every, expected)]
    if progress and not bar:
        callbacks.append(ProgressTenths(config.batch_size))
    logger = DVCLiveLogger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False,
                           resume=resume is not None)
    trainer = L.Trainer(max_steps=config.max_steps, max_epochs=-1,
                        accelerator="cpu" if device.type == "cpu" else "gpu", devices=1,
                        precision="32-true", logger=logger, callbacks=callbacks,
                        enable_checkpointing=False, log_every_n_steps=10,
                        enable_progress_bar=bar, enable_model_summary=False)
    trainer.fit(system, DataLoader(batches, batch_size=None), ckpt_path=resume,
                weights_only=True)

    net = system.net.to(device).eval()
    summary = evaluate(net, holdout_images, config.eval_images, factor, out_dir)
    live = logger.experiment
    for name, value in summary.items():
        live.log_metric(name, value, plot=False)
    live.make_summary()
    save_autoencoder(net, out_dir, {"autoencoder": to_dict(config),
                                    "steps": trainer.global_step, "quality": summary})
    print(f"autoencoder trained to step {trainer.global_step}: holdout PSNR "
          f"{summary['psnr_db']:.2f} dB (bicubic x{factor}: {summary['bicubic_psnr_db']:.2f} dB)")
    return summary


@torch.no_grad()
def evaluate(net: Autoencoder, holdout_images: Dataset, n: int, factor: int,
             out_dir: str | Path) -> dict:
    """`quality_summary` + the mean KL over the first `n` holdout images; writes
    out_dir/reconstructions.png (rows: originals, bicubic round trip, autoencoder)."""
    device = next(net.parameters()).device
    images = torch.stack([holdout_images[i] for i in range(min(n, len(holdout_images)))])
    summary = quality_summary(net, images, factor)
    kl = [kl_divergence(*net.encode(to_unit_range(batch.to(device)))) * len(batch)
          for batch in images.split(16)]
    summary["kl"] = float(sum(kl)) / len(images)
    shown = images[:GRID_IMAGES]
    rows = torch.cat([shown, bicubic_roundtrip(shown, factor), reconstruct(net, shown)])
    grid = grid_image(rows, nrow=len(shown))
    write_atomically(Path(out_dir) / "reconstructions.png",
                     lambda tmp: grid.save(tmp, format="PNG"))
    return summary
