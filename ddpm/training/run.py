"""`train(...)`: params → Lightning Trainer → EMA weights, metrics, sample grids, resume state.

Resuming: a full checkpoint lives at `state_dir/last.ckpt`. When the train
step starts and finds one made with the same fingerprint (every param that
changes the training trajectory, the data's content hash and the training
code's hash), it continues
from it; `max_steps` is not part of the fingerprint under a constant learning
rate, so raising it continues a finished run (under the cosine schedule the
whole learning-rate curve depends on it, so changing it starts afresh). A checkpoint with another fingerprint is set aside (renamed, never
deleted) with one line saying which params differ.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import pickle
import time
import warnings
from pathlib import Path
from typing import Protocol, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from ddpm.autoencoder.decoding import LatentDecoder, copy_autoencoder
from ddpm.autoencoder.files import load_autoencoder
from ddpm.autoencoder.latents import read_latent_manifest
from ddpm.config import Sections, to_dict
from ddpm.data.prepared import read_manifest
from ddpm.diffusion.config import DiffusionConfig
from ddpm.errors import DataError
from ddpm.io.devices import check_accelerator, torch_device
from ddpm.io.precision import resolve_train
from ddpm.io.progress import interactive
from ddpm.models.checkpoint import save_model
from ddpm.models.config import ModelConfig
from ddpm.training.callbacks import ProgressLines, ResumeCheckpoint, SampleGrid, Throughput
from ddpm.training.config import TrainConfig
from ddpm.training.data import FaceDataModule
from ddpm.training.loggers import build_loggers, log_final, require_mlflow
from ddpm.training.system import DiffusionSystem

CHECKPOINT = "last.ckpt"

# Both are intended here: the EMA copy lives in eval mode inside the module, and
# the module (not the DataModule) scales batches to [-1, 1] on the device.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*overridden `on_(before|after)_batch_transfer`.*")
# Third-party noise with nothing for the user to do: torch's own pytree deprecation
# (raised inside Lightning) and Lightning's advert for its cloud logger.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
                        category=FutureWarning)
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.getMessage()).startswith("💡 Tip"))
# Said when a full checkpoint (optimizer, loops) is SAVED, not loaded: reads like a
# security warning next to our weights_only=True loads, and asks nothing of the user.
logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(
    lambda record: "was not set, defaulting to" not in str(record.getMessage()))
# Keys that do not change what is learned: changing them keeps a checkpoint resumable.
NOT_FINGERPRINTED = {"max_steps", "val_every", "val_images", "sample_every", "preview_sampler",
                     "preview_steps", "checkpoint_every", "num_workers", "loggers"}


class TrainingParams(Protocol):
    """The sections training reads: `load_params(path, model=..., diffusion=..., train=...)`'s
    `Sections`, or a whole `Params`."""

    @property
    def model(self) -> ModelConfig: ...

    @property
    def diffusion(self) -> DiffusionConfig: ...

    @property
    def train(self) -> TrainConfig: ...


# The code that decides what is learned: an edit to it re-runs the stage (dvc.yaml
# deps), and must also start training afresh rather than resume the old run.
TRAINING_CODE = ("config.py", "io/precision.py", "data/prepared.py", "autoencoder/latents.py",
                 "models", "diffusion", "training")


def code_sha256() -> str:
    root = Path(__file__).resolve().parents[1]  # the ddpm package
    digest = hashlib.sha256()
    for name in TRAINING_CODE:
        paths = [root / name] if name.endswith(".py") else sorted((root / name).rglob("*.py"))
        for path in paths:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(params: TrainingParams, data_sha256: str) -> dict:
    # The cosine learning rate at every step depends on max_steps: a run resumed with
    # another max_steps would not be the run it claims to continue.
    free = NOT_FINGERPRINTED - ({"max_steps"} if params.train.lr_schedule == "cosine" else set())
    train = {k: v for k, v in to_dict(params.train).items() if k not in free}
    return {"model": to_dict(params.model), "diffusion": to_dict(params.diffusion),
            "train": train, "data_sha256": data_sha256, "code_sha256": code_sha256()}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def read_checkpoint(path: Path) -> tuple[dict | None, str]:
    """(checkpoint, "") or (None, why it cannot be used); never runs code from the file.

    `weights_only=True` unpickles tensors and plain values only: a crafted
    checkpoint cannot execute anything. Any failure to read the file (torch's zip
    reader, a short file, the safe unpickler's refusal, garbage) means the same
    thing here, that the file is not a checkpoint this run can continue, so all
    are caught alike.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" on garbage
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None, "not a checkpoint of tensors and plain values (refused to unpickle it)"
    except Exception as err:  # noqa: BLE001 - see the docstring
        detail = (str(err).splitlines() or [""])[0].split(". ")[0][:100]
        return None, f"unreadable ({type(err).__name__}{': ' + detail if detail else ''})"
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        return None, "not a training checkpoint (no global_step)"
    return checkpoint, ""


def _set_aside(path: Path, why: str) -> None:
    stamp = time.strftime('%Y%m%d-%H%M%S')
    aside = path.with_name(f"set-aside-{stamp}.ckpt")
    for n in itertools.count(2):  # never replace one set aside earlier in the same second
        if not aside.exists():
            break
        aside = path.with_name(f"set-aside-{stamp}-{n}.ckpt")
    path.rename(aside)
    print(f"set aside {path} as {aside.name}: {why}; training starts from scratch")


def resume_path(state_dir: Path, expected: dict) -> Path | None:
    """The checkpoint to resume from, or None; sets aside one that is damaged or made otherwise."""
    path = state_dir / CHECKPOINT
    if not path.is_file():
        return None
    checkpoint, unusable = read_checkpoint(path)
    saved = checkpoint.get("ddpm_fingerprint") if checkpoint else None
    if checkpoint and saved == expected:
        if rank_zero_only.rank == 0:
            print(f"resuming from {path} at step {checkpoint['global_step']}")
        return path
    if rank_zero_only.rank == 0:
        why = ", ".join(_differences(saved or {}, expected)[:4]) or "no fingerprint"
        _set_aside(path, unusable or f"made with different params or code ({why})")
    return None


def build_trainer(cfg: TrainConfig, logger, callbacks: Sequence[L.Callback],
                  progress: bool = True) -> L.Trainer:
    """The Lightning Trainer for `train.*`; validation every `val_every` optimizer steps."""
    return L.Trainer(
        max_steps=cfg.max_steps, max_epochs=-1, accumulate_grad_batches=cfg.accumulate_grad_batches,
        precision=cfg.precision, gradient_clip_val=cfg.grad_clip or None,
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, logger=logger, callbacks=list(callbacks),
        enable_checkpointing=False,
        # The DataModule shards the training order by rank itself (EpochOrder), so the
        # order can be saved and resumed; Lightning must not swap in its own sampler.
        use_distributed_sampler=False,
        # Lightning counts validation intervals in batches, not optimizer steps.
        val_check_interval=cfg.val_every * cfg.accumulate_grad_batches,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=10,
        enable_progress_bar=progress, enable_model_summary=False)


def latent_data(model: ModelConfig, latents_dir: str | Path | None,
                autoencoder_dir: str | Path | None, device: torch.device
                ) -> tuple[dict | None, LatentDecoder | None]:
    """Latent space: the encode stage's manifest (checked against `model`) and a decoder
    for the sample grids; pixel space: (None, None)."""
    if model.space != "latent":
        return None, None
    if latents_dir is None or autoencoder_dir is None:
        raise DataError("model.space = 'latent' needs the encoded latents and the autoencoder "
                        "(--latents, --autoencoder); run the pipeline with dvc repro")
    manifest = read_latent_manifest(latents_dir)
    if manifest.get("space") != "latent" or tuple(manifest["shape"]) != model.data_shape:
        raise DataError(f"{latents_dir} holds latents of shape {manifest.get('shape')} but "
                        f"model.* asks for {list(model.data_shape)}; re-run encode (dvc repro)")
    decoder = LatentDecoder(load_autoencoder(autoencoder_dir, device), manifest["scale"])
    return manifest, decoder


def train(params: TrainingParams, prepared_dir: str | Path, models_dir: str | Path,
          state_dir: str | Path, live_dir: str | Path, *, mlruns_dir: str | Path = "mlruns",
          latents_dir: str | Path | None = None, autoencoder_dir: str | Path | None = None,
          extra_callbacks: Sequence[L.Callback] = (), progress: bool = True) -> None:
    """Train (or resume) the model described by `params` on a prepared data set (or, in
    latent space, on its latents in `latents_dir`, made with `autoencoder_dir`)."""
    check_accelerator("train", params.train.accelerator, params.train.devices)
    if "mlflow" in params.train.loggers:
        require_mlflow()  # before any work
    manifest = read_manifest(prepared_dir)
    if manifest["img_size"] != params.model.img_size:
        raise DataError(f"model.img_size = {params.model.img_size} but {prepared_dir} holds "
                        f"{manifest['img_size']}px images; re-run prepare (dvc repro)")
    # `auto` formats resolved here, once: the fingerprint, the hyperparameters that
    # DVCLive logs and models/config.json all carry the values the run used.
    train_cfg, formats = resolve_train(params.train, torch_device("train", params.train.accelerator))
    if rank_zero_only.rank == 0:
        print(f"train formats {formats}")
    params = Sections(model=params.model, diffusion=params.diffusion, train=train_cfg)
    cfg, state_dir = params.train, Path(state_dir)
    latents, decoder = latent_data(params.model, latents_dir, autoencoder_dir,
                                   torch_device("train", cfg.accelerator))
    expected = fingerprint(params, manifest["content_sha256"])
    if latents is not None:  # the latents depend on the autoencoder too
        expected["latent"] = {k: latents[k] for k in ("scale", "factor", "autoencoder_sha256")}
    resume = resume_path(state_dir, expected)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    system = DiffusionSystem(params.model, params.diffusion, cfg)
    data = FaceDataModule(prepared_dir, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          val_images=cfg.val_images, timesteps=params.diffusion.timesteps,
                          seed=cfg.seed, hflip=cfg.hflip,
                          latents_dir=latents_dir if latents is not None else None)
    loggers = build_loggers(cfg.loggers, Path(live_dir), Path(mlruns_dir), state_dir,
                            resume is not None)
    callbacks = [ResumeCheckpoint(state_dir / CHECKPOINT, cfg.checkpoint_every, expected),
                 SampleGrid(cfg.sample_every, cfg.preview_sampler, cfg.preview_steps,
                            seed=cfg.seed, decode=decoder), Throughput(),
                 *extra_callbacks]
    # A live bar on a terminal; elsewhere (dvc repro's pipe, CI logs) plain lines.
    bar = progress and interactive()
    if progress and not bar:
        callbacks.append(ProgressLines(images_per_step=cfg.batch_size
                                       * cfg.accumulate_grad_batches * cfg.devices
                                       * cfg.num_nodes))
    trainer = build_trainer(cfg, loggers, callbacks, bar)
    trainer.fit(system, datamodule=data, ckpt_path=resume, weights_only=True)
    if trainer.is_global_zero:
        seconds = round(system.train_seconds(), 1)
        live = loggers[0].experiment
        live.log_metric("train/time_s", seconds, plot=False)
        # The formats `auto` chose, as columns of `dvc exp show` (it shows strings too).
        live.summary.setdefault("train", {}).update(precision=cfg.precision,
                                                    channels_last=cfg.channels_last)
        live.make_summary()
        config = {**expected, "formats": formats, "steps": trainer.global_step,
                  "images_seen": trainer.global_step * cfg.batch_size
                  * cfg.accumulate_grad_batches * trainer.world_size}
        if latents is not None:  # generate decodes with these: models/ is all it needs
            copy_autoencoder(autoencoder_dir, models_dir)
        save_model(system.ema_net, system.net, models_dir, config)
        log_final(loggers, Path(models_dir), {"train/time_s": seconds}, trainer.global_step)
        print(f"trained to step {trainer.global_step}; EMA weights in {models_dir}")

