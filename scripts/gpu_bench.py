"""The GPU check of issue 14, part by part (scripts/gpu_check.sh is the one entry point).

    python scripts/gpu_bench.py check FACES WORK [--smoke] [--inline] [sizes…]

`check` writes WORK/plan.json, runs each part below in its own process with a
time cap (so a slow part cannot eat the others' time; a 9-minute budget in
all), and prints one markdown table from the results the parts left in
WORK/results/. `--inline` runs the parts in this process instead (the CPU smoke
run: it saves an import of torch and Lightning per part). The parts:

  device    card, torch, the bf16 matmul rate measured here (8192³; the peak
            MFU could at best approach)
  prepare   the carried faces at 64 px (celeba crop), as the prepare stage does
  loader    the training input path alone: uint8 batches through the loader
            (pinned) to the device, per worker count
  fid_ref   the fid_ref stage on the prepared faces (Inception on the device)
  train-*   the log's #5 UNet in bf16 through this project's Lightning loop:
            plain, compile + channels_last, diffusers' UNet2DModel laid out the
            same (scripts/diffusers_peer.py), and DDP over every GPU when there
            are several. Images/s from the steps after warm-up; FLOPs per image
            counted by torch.utils.flop_counter over one forward + backward of
            the training loss; MFU = FLOPs/image × images/s ÷ the assumed peak
  generate  the generate stage: SAMPLE_N DDIM-50 samples at 64 px from the
            plain run's EMA weights (shards, per-index seeds), bf16 + compile;
            and split over every GPU when there are several
  fid       FID of those samples against fid_ref's statistics through
            ddpm.evaluation (Inception on the device), then the fid stage's
            other metrics (KID, precision/recall, memorisation) on them
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import typer
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ddpm.atomic import write_text_atomically
from ddpm.config import (DataConfig, DiffusionConfig, ModelConfig, TrainConfig, load_params,
                         to_dict)
from ddpm.data.prepare import prepare_dataset
from ddpm.devices import torch_device
from ddpm.diffusion.forward import training_loss
from ddpm.diffusion.schedules import NoiseSchedule
from ddpm.evaluation import generated_fid
from ddpm.fid import weights_info
from ddpm.generation import iter_shards
from ddpm.inception_standin import make_standin_weights
from ddpm.log_layouts import LOG9_LISTS, LOG_RES_BLOCKS, WIDE_CHANNELS
from ddpm.metrics.sample_scores import sample_metrics
from ddpm.training.data import FaceDataModule
from ddpm.training.run import build_trainer
from ddpm.training.system import DiffusionSystem
from ddpm.weights import save_model
from stages.fid_ref import main as fid_ref_stage
from stages.generate import main as generate_stage

app = typer.Typer(add_completion=False, no_args_is_help=True)

BUDGET_S = 540                # 9 minutes for every part together (issue 14)
PEAKS = (790.0, 989.0)        # TFLOP/s dense bf16: measured on an H200 here / H100-H200 SXM spec
# The goals (full sizes only; a smoke run judges nothing).
GOAL_MFU, GOAL_PEER, GOAL_GENERATE_S, GOAL_FID_S = 0.40, 1.3, 300.0, 60.0
STANDIN_NOTE = "STAND-IN Inception weights (FIDs compare runs of the same file only)"

# Research log #5 at 64 px: its channels; attention and index lists as written in #9.
LOG5 = dict(img_size=64, channels=WIDE_CHANNELS, num_res_blocks=LOG_RES_BLOCKS, **LOG9_LISTS)
# The smoke run's UNet: attention at a down, the mid and an up layer, so the peer's
# mapping of attention levels runs too.
SMOKE_MODEL = dict(img_size=16, channels=[16, 32], num_res_blocks=1, num_heads=2,
                   norm_groups=4, down_attn=[False, True],
                   down_channel_indices=[[0, 0], [0, 1]], mid_attn=[True],
                   mid_channel_indices=[[1, 1]], up_attn=[True], up_channel_indices=[[1, 0]])


@dataclass
class Plan:
    """Sizes of one check; written to WORK/plan.json by `check`, read by every part."""
    faces: str
    smoke: bool = False
    holdout: float = 0.1         # data.holdout_fraction
    model: dict = field(default_factory=lambda: json.loads(json.dumps(LOG5)))
    batch: int = 128
    train_steps: int = 150
    warmup: int = 50             # steps not timed: compilation, cuDNN autotuning, allocator
    workers: int = 8
    loader_workers: list[int] = field(default_factory=lambda: [4, 8, 12])
    # How the diffusers peer trains, plain or compile (+ channels_last); its ratio is
    # against the ddpm row trained the same way. Plain by default: a second
    # compilation would take the time the 50K samples need.
    peer: str = "plain"
    sample_n: int = 50000
    sample_batch: int = 1000
    shard_size: int = 5000
    ddim_steps: int = 50
    sample_compile: str = "default"
    fid_batch: int = 1000
    fid_weights: str = ""        # empty: stand-in weights made on this machine
    peaks: list[float] = field(default_factory=lambda: list(PEAKS))
    gpus: int = 1                # set by `check` from torch.cuda.device_count()

    @classmethod
    def smoke_sizes(cls, faces: str) -> "Plan":
        # 40 % held out: the memorisation check needs a few holdout images among 16.
        return cls(faces=faces, smoke=True, holdout=0.4, model=dict(SMOKE_MODEL), batch=4,
                   train_steps=4, warmup=2, workers=0, loader_workers=[0], sample_n=8,
                   sample_batch=4, shard_size=4, ddim_steps=2, fid_batch=8)


# ------------------------------------------------------------------ small helpers


def work_paths(work: Path) -> dict[str, Path]:
    return {"plan": work / "plan.json", "results": work / "results",
            "prepared": work / "prepared", "models": work / "models",
            "params": work / "params.yaml", "samples": work / "samples",
            "samples_ddp": work / "samples-ddp", "ref": work / "fid_ref" / "stats.npz",
            "figures": work / "memorisation", "standin": work / "standin-inception.pth"}


def read_plan(work: Path) -> Plan:
    return Plan(**json.loads(work_paths(work)["plan"].read_text()))


def is_rank_zero() -> bool:
    """False in the extra processes Lightning and Fabric start for DDP (they re-run argv)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def save_result(work: Path, name: str, result: dict) -> None:
    if not is_rank_zero():  # DDP: rank 0 speaks for all
        return
    folder = work_paths(work)["results"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1))


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


# ------------------------------------------------------------------ parts


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
            "matmul": f"{n}³ {str(dtype).removeprefix('torch.')}"}


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
                              num_workers=workers, val_images=8, timesteps=1000, seed=0)
        data.setup("fit")
        batches = max(2, min(64, 2 * (len(data.train_set) // plan.batch)))
        loader, done, start = data.train_dataloader(), 0, None
        while done < batches:  # epochs restart the iterator, as in training
            for batch in loader:
                batch.to(device, non_blocking=True)
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


TRAIN_VARIANTS = {  # name → (network, compile + channels_last, devices: 1 or all GPUs)
    "train-plain": ("ddpm", False, 1),
    "train-compile": ("ddpm", True, 1),
    "train-peer": ("diffusers", None, 1),   # None: as plan.peer says
    "train-ddp": ("ddpm", True, 0),         # 0: every visible GPU
}


def part_train(plan: Plan, work: Path, variant: str) -> dict:
    """Train one variant through the train stage's Lightning loop; images/s after warm-up."""
    network, fast, devices = TRAIN_VARIANTS[variant]
    fast = plan.peer == "compile" if fast is None else fast
    devices = devices or max(1, torch.cuda.device_count())
    model = ModelConfig(**plan.model)
    net = None
    if network == "diffusers":
        from diffusers_peer import DiffusersUNet  # beside this script; needs diffusers

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
                          num_workers=plan.workers, val_images=8, timesteps=1000, seed=0)
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
    """The generate stage itself (Fabric launches one process per GPU when devices > 1)."""
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
        make_standin_weights(path)
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
            "official": info["official"], "standin_made_s": standin_s}


def part_fid(plan: Plan, work: Path) -> dict:
    """FID of the generated samples (ddpm.evaluation, as the fid stage), then its other metrics."""
    paths = work_paths(work)
    fid = load_params(write_params(plan, work, 1)).fid
    device = torch_device("fid", fid.accelerator)
    start = time.perf_counter()
    shards = list(iter_shards(paths["samples"]))
    n = sum(len(s) for s in shards)
    value, features = generated_fid(shards, n, paths["ref"], fid, device)
    wall = time.perf_counter() - start
    result = {"fid": value, "n": n, "wall_s": wall, "rate": n / wall, "batch": fid.batch_size,
              "official": weights_info(fid.weights)["official"]}
    save_result(work, "fid", result)  # kept if the other metrics fail
    start = time.perf_counter()
    sample_metrics(features, np.concatenate(shards), paths["ref"], paths["prepared"],
                   paths["figures"], fid, device)
    return {**result, "rest_s": time.perf_counter() - start}


# name → (function, time cap in seconds), in the order they run. Expected on an H200
# (not yet measured): about 8 + 10 + 20 + 25 + 30 + 40 + 100 + 190 + 40 s, so the
# caps and the 9-minute budget cut a part only when it runs far over.
PARTS = {
    "device": (part_device, 45),
    "prepare": (part_prepare, 60),
    "loader": (part_loader, 60),
    "fid_ref": (part_fid_ref, 90),
    "train-plain": (lambda p, w: part_train(p, w, "train-plain"), 90),
    "train-peer": (lambda p, w: part_train(p, w, "train-peer"), 120),
    "train-compile": (lambda p, w: part_train(p, w, "train-compile"), 150),
    "generate": (part_generate, 300),
    "fid": (part_fid, 120),
    "train-ddp": (lambda p, w: part_train(p, w, "train-ddp"), 180),
    "generate-ddp": (lambda p, w: part_generate(p, w, devices=0), 300),
}
MULTI_GPU_PARTS = ("train-ddp", "generate-ddp")


# ------------------------------------------------------------------ the table


def _num(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _goal(met: bool, text: str) -> str:
    return f"{'met' if met else 'MISSED'}: {text}"


def _row(part: str, setting: str, plan: Plan, *, rate=None, wall=None, peak=None,
         gflop: str = "—", mfus: list[str] | None = None, ratio: str = "—",
         goal: str = "—") -> list[str]:
    return [part, setting, _num(rate), _num(wall, 1), _num(peak, 1), gflop,
            *(mfus or ["—"] * len(plan.peaks)), ratio, goal]


def _data_rows(plan: Plan, results: dict[str, dict]) -> list[list[str]]:
    prep, loader = results.get("prepare", {}), results.get("loader", {})
    rows = [_row("prepare", f"{prep.get('images', '?')} images of {plan.faces}, "
                 f"{plan.model['img_size']} px, {prep.get('crop', '?')} crop", plan,
                 rate=prep.get("rate"), wall=prep.get("seconds"),
                 goal=prep.get("status", "—"))]
    pinned = "pinned" if loader.get("pinned") else "not pinned"
    for workers, rate in loader.get("rates", {"?": None}).items():
        rows.append(_row("input path", f"loader alone, {workers} workers, batch {plan.batch}, "
                         f"{pinned}, uint8 to the device", plan, rate=rate,
                         goal=loader.get("status", "—")))
    return rows


def _train_row(plan: Plan, name: str, r: dict, peer: dict) -> list[str]:
    network, fast, _ = TRAIN_VARIANTS[name]
    fast = r.get("compile_channels_last", plan.peer == "compile" if fast is None else fast)
    what = {"ddpm": "ddpm UNet", "diffusers": "diffusers UNet2DModel"}[network]
    what += " (smoke layout)" if plan.smoke else \
        " (log #5)" if network == "ddpm" else " (log #5's levels)"
    setting = (f"{what}, {r.get('precision', 'bf16-mixed')}, batch {plan.batch}, "
               f"{'compile + channels_last' if fast else 'plain'}"
               + (f", DDP × {r.get('devices', plan.gpus)}" if name == "train-ddp" else ""))
    if "rate" not in r:
        return _row("train", setting, plan, goal=r.get("status", "not run"))
    flop_rate = r["rate"] * r["flops_per_image"] / r.get("devices", 1)  # per GPU
    mfus = [flop_rate / (peak * 1e12) for peak in plan.peaks]
    ratio = None  # against the peer trained the same way, on one GPU
    if "rate" in peer and network == "ddpm" and name != "train-ddp" \
            and fast == peer["compile_channels_last"]:
        ratio = flop_rate / (peer["rate"] * peer["flops_per_image"])
    goal = "—"
    if not plan.smoke and network == "ddpm":
        goal = _goal(mfus[0] >= GOAL_MFU, f"MFU ≥ {GOAL_MFU:.0%} at {plan.peaks[0]:g}")
        if ratio is not None:
            goal += "; " + _goal(ratio >= GOAL_PEER, f"≥ {GOAL_PEER}× peer")
    return _row("train", setting, plan, rate=r["rate"], peak=r.get("peak_gib"),
                gflop=f"{r['flops_per_image'] / 1e9:.2f}", mfus=[f"{m:.1%}" for m in mfus],
                ratio="—" if ratio is None else
                f"{ratio:.2f}× (img/s {r['rate'] / peer['rate']:.2f}×)", goal=goal)


def _generate_row(plan: Plan, name: str, r: dict) -> list[str]:
    setting = (f"generate stage: {plan.sample_n:,} DDIM-{plan.ddim_steps}, "
               f"{plan.model['img_size']} px, bf16-mixed, compile {plan.sample_compile}, "
               f"batch {plan.sample_batch}"
               + (f", {r.get('devices', plan.gpus)} GPUs" if name == "generate-ddp" else ""))
    goal = r.get("status") or ("—" if plan.smoke or "wall_s" not in r else
                               _goal(r["wall_s"] <= GOAL_GENERATE_S,
                                     f"≤ {GOAL_GENERATE_S / 60:g} min"))
    return _row("generate", setting, plan, rate=r.get("rate"), wall=r.get("wall_s"),
                peak=r.get("peak_gib"), goal=goal)


def _fid_rows(plan: Plan, results: dict[str, dict]) -> list[list[str]]:
    ref, r = results.get("fid_ref", {}), results.get("fid", {})
    weights = "official" if ref.get("official") else "STAND-IN"
    value = f"FID {r['fid']:,.2f}" if "fid" in r else "FID —"
    goal = r.get("status") or ("—" if plan.smoke or "wall_s" not in r else
                               _goal(r["wall_s"] <= GOAL_FID_S, f"≤ {GOAL_FID_S:g} s"))
    return [
        _row("fid_ref", f"fid_ref stage: {ref.get('images', '?')} real images, Inception on "
             f"the device, batch {plan.fid_batch}, {weights} weights", plan,
             rate=ref.get("rate"), wall=ref.get("wall_s"), goal=ref.get("status", "—")),
        _row("fid", f"FID of {r.get('n', plan.sample_n):,} samples ({value}, {weights} "
             "weights), Inception + Fréchet distance", plan, rate=r.get("rate"),
             wall=r.get("wall_s"), goal=goal),
        _row("fid", "the fid stage's other metrics on them (KID, precision/recall, "
             "memorisation)", plan, wall=r.get("rest_s"),
             goal=r.get("status") or r.get("stopped", "—")),
    ]


def table_rows(plan: Plan, results: dict[str, dict]) -> list[list[str]]:
    """One row per measured thing: [part, setting, img/s, wall s, peak GiB,
    train GFLOP/img, MFU at each peak, × peer, goal]."""
    several = plan.gpus > 1
    peer = results.get("train-peer", {})
    train = [_train_row(plan, name, results.get(name, {}), peer)
             for name in ("train-plain", "train-compile", "train-peer", "train-ddp")
             if several or name != "train-ddp"]
    generate = [_generate_row(plan, name, results.get(name, {}))
                for name in ("generate", "generate-ddp") if several or name != "generate-ddp"]
    return _data_rows(plan, results) + train + generate + _fid_rows(plan, results)


def print_table(plan: Plan, results: dict[str, dict]) -> None:
    device = results.get("device", {})
    print(f"\ndevice: {device.get('name', '?')} × {plan.gpus}, torch {device.get('torch', '?')}, "
          f"lightning {device.get('lightning', '?')}; {device.get('matmul', 'matmul')} measured "
          f"at {_num(device.get('matmul_tflops'), 1)} TFLOP/s")
    print(f"MFU = measured train FLOPs per image × img/s ÷ assumed dense bf16 peak: "
          f"{plan.peaks[0]:g} TFLOP/s (bf16 matmul measured on an H200 here; the issue's "
          f"H100 figure) and {plan.peaks[1]:g} (H100/H200 SXM datasheet)"
          if len(plan.peaks) == 2 else f"MFU at assumed peaks {plan.peaks} TFLOP/s")
    if not results.get("fid_ref", {}).get("official", False):
        print(f"FID: {STANDIN_NOTE}")
    if plan.smoke:
        print("SMOKE RUN: tiny sizes on the CPU; it proves the check runs, not how fast")
    headers = ["part", "setting", "img/s", "wall s", "peak GiB", "train GFLOP/img",
               *[f"MFU @ {p:g}" for p in plan.peaks], "× diffusers (FLOP/s)", "goal"]
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join(["---", "---"] + ["---:"] * (len(headers) - 3) + ["---"]) + " |")
    for row in table_rows(plan, results):
        print("| " + " | ".join(row) + " |")


def read_results(work: Path) -> dict[str, dict]:
    folder = work_paths(work)["results"]
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


# ------------------------------------------------------------------ running parts


def record_stop(work: Path, name: str, why: str) -> None:
    """Record why part `name` stopped: as its status, or beside what it had already saved."""
    path = work_paths(work)["results"] / f"{name}.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    save_result(work, name, {**saved, "stopped": why} if saved else {"status": why})


def run_part(name: str, work: Path) -> None:
    """Run part `name` here; its result, or why it failed, goes to WORK/results/."""
    plan = read_plan(work)
    try:
        result = PARTS[name][0](plan, work)
    except BaseException as err:  # noqa: BLE001 - one failed part must not stop the check
        if isinstance(err, KeyboardInterrupt):
            raise
        traceback.print_exc()
        line = " ".join(f"{type(err).__name__}: {err}".split())[:160]
        record_stop(work, name, f"failed ({line})")
        return
    if result:
        save_result(work, name, result)


def run_capped(name: str, work: Path, cap: float) -> None:
    """Run part `name` in a child process (its own session: workers and DDP ranks too),
    killed after `cap` seconds."""
    child = subprocess.Popen([sys.executable, __file__, "part", name, str(work)],
                             start_new_session=True)
    try:
        child.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        record_stop(work, name, f"timed out after {cap:.0f} s")
        return
    if child.returncode and not (work_paths(work)["results"] / f"{name}.json").is_file():
        record_stop(work, name, f"failed (exit code {child.returncode})")


@app.command()
def part(name: str, work: Path) -> None:
    """Run one part (check starts these; see the module docstring)."""
    run_part(name, work)


@app.command()
def check(faces: str = typer.Argument(..., help="Folder of face images, or 'demo'."),
          work: Path = typer.Argument(..., help="Empty folder for data, models, samples."),
          smoke: bool = typer.Option(False, help="Tiny sizes on the CPU."),
          inline: bool = typer.Option(False, help="Run the parts in this process, uncapped."),
          train_steps: int = typer.Option(0, help="0: the plan's (150; smoke 4)."),
          batch: int = typer.Option(0, help="0: the plan's (128; smoke 4)."),
          sample_n: int = typer.Option(0, help="0: the plan's (50,000; smoke 8)."),
          sample_compile: str = typer.Option("", help="none | default | reduce-overhead."),
          peer: str = typer.Option("", help="plain | compile: how the diffusers peer trains."),
          fid_weights: str = typer.Option("", help="Inception weights file; empty: stand-in "
                                                   "weights made on this machine."),
          budget_s: float = typer.Option(BUDGET_S, help="Seconds for all parts together.")):
    """Run every part (each capped in time) and print the table."""
    plan = Plan.smoke_sizes(faces) if smoke else Plan(faces=faces)
    overrides = dict(train_steps=train_steps, batch=batch, sample_n=sample_n,
                     sample_compile=sample_compile, peer=peer, fid_weights=fid_weights)
    # The parts run in fresh processes, so asking CUDA here costs them nothing.
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v},
                               gpus=1 if smoke else max(1, torch.cuda.device_count()))
    work.mkdir(parents=True, exist_ok=True)
    work_paths(work)["plan"].write_text(json.dumps(dataclasses.asdict(plan), indent=1))
    deadline = time.monotonic() + budget_s
    for name, (_, cap) in PARTS.items():
        if name in MULTI_GPU_PARTS and plan.gpus < 2:
            continue
        left = deadline - time.monotonic()
        print(f"\n== {name} (cap {min(cap, left):.0f} s)", flush=True)
        start = time.monotonic()
        if inline:
            run_part(name, work)
        elif left < 15:
            save_result(work, name, {"status": f"skipped: the {budget_s:.0f}-s budget was spent"})
        else:
            run_capped(name, work, min(cap, left))
        print(f"== {name}: {time.monotonic() - start:.1f} s", flush=True)
    print_table(plan, read_results(work))


if __name__ == "__main__":
    app()
