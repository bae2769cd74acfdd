"""The check's parts (each runs in its own process: gpu_check.runner). Each takes the
plan and the work folder and returns its figures; the runner records them.

  device    card, torch, the bf16 matmul rate measured here (8192³; the peak
            MFU could at best approach)
  prepare   the carried faces at 64 px (celeba crop), as the prepare stage does
  fid_ref   the fid_ref stage on the prepared faces (Inception on the device),
            after making stand-in Inception weights when none were given
  train-*   the log's #5 UNet in bf16 through this project's Lightning loop:
            plain, compile + channels_last, diffusers' UNet2DModel laid out the
            same (scripts/diffusers_peer.py), and DDP over every GPU when there
            are several. Images/s from the steps after warm-up; FLOPs per image
            counted by torch.utils.flop_counter over one forward + backward of
            the training loss; MFU = FLOPs/image × images/s ÷ the assumed peak
  generate  the generate stage: SAMPLE_N DDIM-50 samples at 64 px from the
            plain run's EMA weights (shards, per-index seeds), bf16 + compile;
            and split over every GPU when there are several
  fid       FID of those samples (all, or the shards a cut generation kept)
            against fid_ref's statistics through ddpm.evaluation.score (Inception on
            the device), then the fid stage's other metrics on them
  loader    the training input path alone: uint8 batches through the loader
            (pinned) to the device, per worker count
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ddpm.config import load_params, to_dict
from ddpm.data.config import DataConfig
from ddpm.data.prepare import prepare_dataset
from ddpm.diffusion.config import DiffusionConfig
from ddpm.diffusion.forward import training_loss
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.errors import DdpmError
from ddpm.evaluation.config import FidConfig
from ddpm.evaluation.score import generated_fid
from ddpm.io.atomic import write_text_atomically
from ddpm.io.devices import torch_device
from ddpm.metrics.fid import weights_info
from ddpm.metrics.inception_standin import make_standin_weights
from ddpm.metrics.sample_scores import sample_metrics
from ddpm.models.checkpoint import save_model
from ddpm.models.config import ModelConfig
from ddpm.training.config import TrainConfig
from ddpm.training.data import FaceDataModule
from ddpm.training.run import build_trainer
from ddpm.training.system import DiffusionSystem
from gpu_check.plan import Plan, results_folder, work_paths
from gpu_check.results import is_rank_zero, record
from gpu_check.shards import finished_shards
from gpu_check.table import TRAIN_VARIANTS
from stages.fid_ref import main as fid_ref_stage
from stages.generate import main as generate_stage


def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if cuda():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if cuda() else None


def part_device(plan: Plan, work: Path) -> dict:
    """The card and the bf16 matmul rate on it: the ceiling next to the assumed peaks."""
    if cuda():
        n, dtype, device, name = 8192, torch.bfloat16, "cuda", torch.cuda.get_device_name()
    else:
        n, dtype, device, name = 256, torch.float32, "cpu", "CPU (smoke run)"
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    tflops = 10 * 2 * n**3 / (time.perf_counter() - start) / 1e12
    return {"name": name, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "lightning": L.__version__, "matmul_tflops": tflops,
            "matmul": f"{n}³ {str(dtype).removeprefix('torch.')}",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def part_prepare(plan: Plan, work: Path) -> dict:
    """The prepare stage's code on the carried faces (celeba crop), or the demo set."""
    demo = plan.faces == "demo"
    data = DataConfig(source=plan.faces, crop="center" if demo else "celeba", demo_size=16,
                      holdout_fraction=plan.holdout, workers=0 if plan.smoke else 8)
    start = time.perf_counter()
    manifest = prepare_dataset(data, plan.model["img_size"], work_paths(work)["prepared"],
                               progress=False)
    seconds = time.perf_counter() - start
    n = sum(manifest["counts"].values())
    return {"images": n, "counts": manifest["counts"], "seconds": seconds,
            "rate": n / seconds, "source": plan.faces, "crop": data.crop}


def part_loader(plan: Plan, work: Path) -> dict:
    """Images/s of the training loader alone (decode in workers, pinned, to the device)."""
    device = "cuda" if cuda() else "cpu"
    rates = {}
    for workers in plan.loader_workers:
        data = FaceDataModule(work_paths(work)["prepared"], batch_size=plan.batch,
                              num_workers=workers, val_images=8, timesteps=1000, seed=0,
                              hflip=True)
        data.setup("fit")
        batches = max(2, min(64, 2 * (len(data.train_set) // plan.batch)))
        loader, done, start = data.train_dataloader(), 0, None
        while done < batches:  # epochs restart the iterator, as in training
            for batch in loader:
                for part in batch:  # images, t, ε, position, epoch
                    part.to(device, non_blocking=True)
                done += 1
                if done == 1:  # the first batch waits for the workers to start
                    sync()
                    start = time.perf_counter()
                if done == batches:
                    break
        sync()
        rates[str(workers)] = (batches - 1) * plan.batch / (time.perf_counter() - start)
        del loader
    return {"rates": rates, "pinned": torch.cuda.is_available()}


def train_flops_per_image(net, plan: Plan) -> float:
    """FLOPs of one forward + backward of the training loss, per image.

    Counted by torch.utils.flop_counter on a batch of 2 in float32, attention through
    the math kernel (its matmuls are counted on any device; the fused kernels only
    on some). Optimizer and elementwise work is not counted, as in MFU.
    """
    diffusion = DiffusionConfig()
    schedule = NoiseSchedule.from_name(diffusion.schedule, diffusion.timesteps)
    device = next(net.parameters()).device
    size = plan.model["img_size"]
    x0 = torch.rand(2, 3, size, size, device=device) * 2 - 1
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss = training_loss(net, schedule, x0, diffusion.prediction,
                             loss_weighting=diffusion.loss_weighting,
                             min_snr_gamma=diffusion.min_snr_gamma)
        loss.backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


class StepTimer(L.Callback):
    """Wall time of the optimizer steps after `warmup` (compilation, autotuning, allocator).

    The GPU is waited for only where the clock is read (the end of step `warmup` and
    of training), so the timer itself stalls no step.
    """

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps, self.elapsed = warmup, None, 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        sync()
        self.steps = trainer.global_step - self.warmup
        self.elapsed = time.perf_counter() - self.start


def part_train(plan: Plan, work: Path, variant: str) -> dict:
    """Train one variant through the train stage's Lightning loop; images/s after warm-up."""
    network, fast, devices = TRAIN_VARIANTS[variant]
    fast = plan.peer == "compile" if fast is None else fast
    devices = devices or max(1, torch.cuda.device_count())
    model = ModelConfig(**plan.model)
    net = None
    if network == "diffusers":
        from diffusers_peer import DiffusersUNet  # beside gpu_bench.py; needs diffusers

        net = DiffusersUNet(model)
    cfg = TrainConfig(max_steps=plan.train_steps, batch_size=plan.batch,
                      precision="bf16-mixed" if cuda() else "32-true",
                      accelerator="gpu" if cuda() else "cpu", devices=devices,
                      strategy="ddp" if devices > 1 else "auto", compile=fast,
                      channels_last=fast, num_workers=plan.workers, val_every=10**6,
                      sample_every=10**6, checkpoint_every=10**6)
    diffusion = DiffusionConfig()
    system = DiffusionSystem(model, diffusion, cfg, net=net)
    data = FaceDataModule(work_paths(work)["prepared"], batch_size=plan.batch,
                          num_workers=plan.workers, val_images=8, timesteps=1000, seed=0,
                          hflip=True)
    timer = StepTimer(plan.warmup)
    reset_peak()
    trainer = build_trainer(cfg, logger=False, callbacks=[timer], progress=False)
    trainer.fit(system, datamodule=data)
    if not trainer.is_global_zero:
        return {}
    rate = timer.steps * plan.batch * trainer.world_size / timer.elapsed
    peak = peak_gib()
    # Lightning moves the module back to the CPU after fit; count on the device.
    flops = train_flops_per_image(system.net.to("cuda" if cuda() else "cpu"), plan)
    if variant == "train-plain":  # the generate part samples from these weights
        save_model(system.ema_net, system.net, work_paths(work)["models"],
                   {"model": to_dict(model), "diffusion": to_dict(diffusion)})
    return {"network": network, "compile_channels_last": fast, "devices": trainer.world_size,
            "rate": rate, "peak_gib": peak, "flops_per_image": flops,
            "params": sum(p.numel() for p in system.net.parameters()),
            "steps_timed": timer.steps, "precision": cfg.precision}


def write_params(plan: Plan, work: Path, devices: int) -> Path:
    """A params.yaml for the stages: DDIM-50 in bf16 + compile, and Inception settings."""
    paths = work_paths(work)
    weights = plan.fid_weights or str(paths["standin"])
    params = {"sample": {"n": plan.sample_n, "sampler": "ddim", "steps": plan.ddim_steps,
                         "eta": 0.0, "batch_size": plan.sample_batch,
                         "shard_size": plan.shard_size, "precision": "bf16-mixed",
                         "compile": plan.sample_compile, "devices": devices},
              "fid": {"batch_size": plan.fid_batch, "weights": weights}}
    # Atomically: DDP ranks re-run this part and write the same file while others read it.
    write_text_atomically(paths["params"], yaml.safe_dump(params, sort_keys=False))
    return paths["params"]


def part_generate(plan: Plan, work: Path, devices: int = 1) -> dict:
    """The generate stage itself (Fabric launches one process per GPU when devices > 1).

    It writes each shard as it finishes it, so a cap that cuts it keeps those
    (the runner counts them; the fid part scores them)."""
    devices = devices or torch.cuda.device_count()
    paths = work_paths(work)
    params = write_params(plan, work, devices)
    out = paths["samples"] if devices == 1 else paths["samples_ddp"]
    reset_peak()
    start = time.perf_counter()
    generate_stage(params=params, models=paths["models"], out=out)
    wall = time.perf_counter() - start
    if not is_rank_zero():
        return {}
    manifest = json.loads((out / "manifest.json").read_text())
    return {"n": manifest["n"], "devices": devices, "wall_s": wall,
            "shards_s": manifest["seconds"], "rate": manifest["n"] / wall,
            "peak_gib": peak_gib(), "compile": plan.sample_compile,
            "precision": manifest["sample"]["precision"], "steps": plan.ddim_steps}


def fid_weights(plan: Plan, work: Path) -> tuple[str, dict]:
    """The Inception weights file (plan's, else stand-in weights made here) and its info.

    The official file (96 MB) does not fit the device tool's 64 MiB carry, and the
    device has no network: stand-in weights are calibrated there, on its CPU.
    """
    path = Path(plan.fid_weights or work_paths(work)["standin"])
    if not path.is_file():
        make_standin_weights(path, n_images=plan.standin_images)
    return str(path), weights_info(path)


def part_fid_ref(plan: Plan, work: Path) -> dict:
    """The fid_ref stage on the prepared faces (after making stand-in weights if needed)."""
    paths = work_paths(work)
    start = time.perf_counter()
    _, info = fid_weights(plan, work)
    standin_s = time.perf_counter() - start
    params = write_params(plan, work, 1)
    start = time.perf_counter()
    fid_ref_stage(params=params, data=paths["prepared"], out=paths["ref"])
    wall = time.perf_counter() - start
    meta = json.loads(paths["ref"].with_suffix(".json").read_text())
    images = sum(split["n"] if name == meta["split"] else split["kept"]
                 for name, split in meta["splits"].items())
    return {"wall_s": wall, "images": images, "rate": images / wall,
            "official": info["official"], "standin_made_s": standin_s,
            "standin_made": not plan.fid_weights}


def part_fid(plan: Plan, work: Path) -> dict:
    """FID of the generated samples (ddpm.evaluation.score, as the fid stage), then its other
    metrics. Scores what generate finished: every shard, or those a cut run kept."""
    paths = work_paths(work)
    fid = load_params(write_params(plan, work, 1), fid=FidConfig).fid
    device = torch_device("fid", fid.accelerator)
    start = time.perf_counter()
    files, complete = finished_shards(paths["samples"])
    if not files:
        raise DdpmError(f"no finished shard in {paths['samples']}: generate made none")
    shards = [np.load(path) for path in files]
    n = sum(len(s) for s in shards)
    value, features = generated_fid(shards, n, paths["ref"], fid, device)
    wall = time.perf_counter() - start
    result = {"fid": value, "n": n, "planned": plan.sample_n, "complete": complete,
              "shards": len(files), "wall_s": wall, "rate": n / wall, "batch": fid.batch_size,
              "official": weights_info(fid.weights)["official"]}
    # Kept if the other metrics fail, or the run ends during them.
    record(plan, results_folder(plan, work), "fid", "partial", result)
    start = time.perf_counter()
    sample_metrics(features, np.concatenate(shards), paths["ref"], paths["prepared"],
                   paths["figures"], fid, device)
    return {**result, "rest_s": time.perf_counter() - start}


# name → its function (gpu_check.plan.PARTS holds their order and caps)
PART_FUNCTIONS = {
    "device": part_device,
    "prepare": part_prepare,
    "loader": part_loader,
    "fid_ref": part_fid_ref,
    "train-plain": lambda p, w: part_train(p, w, "train-plain"),
    "train-peer": lambda p, w: part_train(p, w, "train-peer"),
    "train-compile": lambda p, w: part_train(p, w, "train-compile"),
    "generate": part_generate,
    "fid": part_fid,
    "train-ddp": lambda p, w: part_train(p, w, "train-ddp"),
    "generate-ddp": lambda p, w: part_generate(p, w, devices=0),
}
