"""The Lightning "system": network + diffusion loss + EMA + optimiser. No schedule algebra here."""

from __future__ import annotations

import math
import time
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F

from ddpm.config import to_dict
from ddpm.diffusion.config import DiffusionConfig
from ddpm.diffusion.forward import (TrainingLoss, predict_x0_and_eps, prediction_target,
                                    q_sample, training_losses)
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import DdpmError
from ddpm.io.images import to_unit_range
from ddpm.models.compiling import compile_module
from ddpm.models.config import ModelConfig
from ddpm.models.registry import build_model
from ddpm.training.config import TrainConfig
from ddpm.training.data import TrainingBatch
from ddpm.training.draws import seed_dropout
from ddpm.training.ema import EMA


class NonFiniteLoss(DdpmError):
    """Training produced a NaN or inf loss."""


class DiffusionSystem(L.LightningModule):
    """`net(x, t)` trained on the diffusion loss; `net` defaults to `build_model(model)`
    (scripts/gpu_bench.py passes a peer network through the same loop)."""

    def __init__(self, model: ModelConfig, diffusion: DiffusionConfig, train: TrainConfig,
                 net: torch.nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters({"model": to_dict(model), "diffusion": to_dict(diffusion),
                                   "train": to_dict(train)})
        self.model_config, self.diffusion, self.train_config = model, diffusion, train
        self.net = build_model(model) if net is None else net
        if train.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.schedule = NoiseSchedule.from_name(diffusion.schedule, diffusion.timesteps)
        # Warm-up (decay min(d, (1+n)/(10+n))) so short runs are not dominated by the
        # random initial weights: 0.999^800 would still weigh them at 45 %.
        self.ema = EMA(self.net, train.ema_decay, warmup=True)
        # Registered so Lightning moves it to the device and checkpoints it.
        self.ema_net = self.ema.shadow
        # torch.compile wraps the network for the forward pass only; parameters,
        # EMA and checkpoints stay on the plain module (no "_orig_mod." keys).
        self._forward_net = compile_module(self.net) if train.compile else self.net
        # Wall time of training, summed over every run that resumed this one.
        self.seconds_before, self._fit_start = 0.0, time.perf_counter()

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def train_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self._fit_start

    # ------------------------------------------------------------ batches

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, TrainingBatch):  # dropout's draws, resumable (ddpm.training.draws)
            seed_dropout(self.train_config.seed, int(batch.epoch[0]), int(batch.position[0]))
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, TrainingBatch):  # images, already flipped, with their draws
            batch = batch._replace(images=_model_range(batch.images))
        else:  # validation: (images, fixed noise, fixed t)
            images, noise, t = batch
            batch = (_model_range(images), noise, t)
        if self.train_config.channels_last:
            batch = _channels_last(batch)
        return batch

    # ------------------------------------------------------------ steps

    def loss(self, batch: TrainingBatch) -> TrainingLoss:
        """(the loss to minimise, weighted as `diffusion.loss_weighting` says; its unweighted MSE)."""
        return training_losses(self._forward_net, self.schedule, batch.images,
                               self.diffusion.prediction, draws=(batch.t, batch.noise),
                               loss_weighting=self.diffusion.loss_weighting,
                               min_snr_gamma=self.diffusion.min_snr_gamma)

    def training_step(self, batch: TrainingBatch, batch_idx: int) -> torch.Tensor:
        loss, mse = self.loss(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"training loss is {loss.item()} at step {self.global_step}; "
                                "stopped (the last checkpoint is kept): lower train.lr or use "
                                "train.precision=32-true")
        # train/loss is what is minimised (min-SNR-weighted when that is on); train/mse
        # is the same batch's unweighted MSE of the target, the quantity val/loss measures.
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/mse", mse, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x0, noise, t = batch
        x_t = q_sample(self.schedule, x0, t, noise)
        target = prediction_target(self.schedule, x0, noise, t, self.diffusion.prediction)
        output = self.ema_net(x_t, t).float()
        loss = F.mse_loss(output, target.float())
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, prog_bar=True,
                 batch_size=x0.shape[0])
        # ε-MSE whatever the network predicts, so runs with different targets compare.
        _, eps_hat = predict_x0_and_eps(self.schedule, x_t, t, output, self.diffusion.prediction)
        self.log("val/eps_mse", F.mse_loss(eps_hat, noise.float()), on_epoch=True,
                 sync_dist=True, batch_size=x0.shape[0])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)  # once per optimizer step, after the update

    def configure_optimizers(self):
        cfg = self.train_config
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, warmup_steps=cfg.warmup_steps,
                               max_steps=cfg.max_steps, schedule=cfg.lr_schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

    # ------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # No RNG state: every draw of training is a function of (seed, epoch, position).
        checkpoint["ema_updates"] = self.ema.num_updates
        checkpoint["train_seconds"] = self.train_seconds()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.ema.num_updates = checkpoint.get("ema_updates", 0)
        self.seconds_before = checkpoint.get("train_seconds", 0.0)


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps`, then "constant" 1, or "cosine": half a
    cosine from 1 at the end of warm-up to 0 at `max_steps` (Loshchilov & Hutter
    2017, SGDR, without restarts), so short runs end on small, averaging steps.
    """
    warmup = max(warmup_steps, 1)
    if step < warmup or schedule == "constant":
        return min(1.0, (step + 1) / warmup)
    progress = min(1.0, (step + 1 - warmup) / max(max_steps - warmup, 1))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → [-1, 1]; latents (already scaled floats) pass unchanged."""
    return to_unit_range(images) if images.dtype == torch.uint8 else images


def _channels_last(batch):
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
    return type(batch)(*(_channels_last(b) for b in batch)) if isinstance(batch, TrainingBatch) \
        else tuple(_channels_last(b) for b in batch)

