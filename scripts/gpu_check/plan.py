"""What one check runs: its sizes, its parts in the order of their value, and their caps.

Light on purpose (no torch): the runner, the table and the tests read it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ddpm.models.log_layouts import LOG9_LISTS, LOG_RES_BLOCKS, WIDE_CHANNELS

# The device tool gives one command at most 600 s and returns only what it left in
# $OUT; the default leaves 80 s of that for the pip install's spread, the final table
# and a part's kill. Measured from the script's start, pip included (issue 22).
BUDGET_S = 520
PEAKS = (790.0, 989.0)        # TFLOP/s dense bf16: measured on an H200 here / H100-H200 SXM spec
# The issues' goals (full sizes only; a smoke run judges nothing).
GOAL_MFU, GOAL_PEER, GOAL_GENERATE_S, GOAL_FID_S = 0.40, 1.3, 300.0, 60.0

# Research log #5 at 64 px: its channels; attention and index lists as written in #9.
LOG5 = dict(img_size=64, channels=WIDE_CHANNELS, num_res_blocks=LOG_RES_BLOCKS, **LOG9_LISTS)
# The smoke run's UNet: attention at a down, the mid and an up layer, so the peer's
# mapping of attention levels runs too.
SMOKE_MODEL = dict(img_size=16, channels=[16, 32], num_res_blocks=1, num_heads=2,
                   norm_groups=4, down_attn=[False, True],
                   down_channel_indices=[[0, 0], [0, 1]], mid_attn=[True],
                   mid_channel_indices=[[1, 1]], up_attn=[True], up_channel_indices=[[1, 0]])


@dataclass(frozen=True)
class Part:
    name: str
    cap_s: float          # the longest it may run, when the budget has that much left
    keep_s: float = 0.0   # seconds it leaves to the parts after it (see part_cap)
    min_gpus: int = 1     # DDP parts run only with several GPUs


# The FID of the samples needs about a minute (the goal is 60 s for 50K); the
# generate part leaves it that much, so a slow generation still gets scored.
FID_KEEP_S = 75
# In the order of their value (issue 22): the card, the data, the FID reference, the
# training MFU, the 50K samples and their FID; then the peer, the loader alone, and
# last the cold torch.compile training, the most variable in time. Expected on an
# H200 (not yet measured), each with its process start: about 15 + 20 + 40 + 45 +
# 190 + 60 + 60 + 20 + 120 s, so the run ends near the 520-s budget and the
# budget, not the caps, cuts whatever runs long at the end.
PARTS = (
    Part("device", 45),
    Part("prepare", 60),
    Part("fid_ref", 90),
    Part("train-plain", 90),
    Part("generate", 300, keep_s=FID_KEEP_S),
    Part("fid", 120),
    Part("train-peer", 120),
    Part("loader", 60),
    Part("train-compile", 150),
    Part("train-ddp", 180, min_gpus=2),
    Part("generate-ddp", 300, min_gpus=2),
)
# Under this a part cannot even import torch and Lightning and measure anything.
MIN_PART_S = 15


def part_cap(part: Part, left: float) -> float:
    """Seconds `part` may run when `left` seconds of the budget remain; 0: skip it.

    It leaves `keep_s` to the parts after it, unless that would leave it too little to
    start: then it takes what is left (generation's rate is worth more than nothing).
    """
    for room in (left - part.keep_s, left):
        cap = min(part.cap_s, room)
        if cap >= MIN_PART_S:
            return cap
    return 0.0


def parts_for(gpus: int) -> list[Part]:
    return [part for part in PARTS if gpus >= part.min_gpus]


def part_named(name: str) -> Part:
    return next(part for part in PARTS if part.name == name)


@dataclass
class Plan:
    """One check: its sizes, where it reports, and its clock. Written to WORK/plan.json
    by `check`; every part reads it."""
    faces: str
    results: str = ""            # the results folder ($OUT on the device); "" → WORK/results
    started: float = 0.0         # time.time() at the script's start: the budget counts from it
    budget_s: float = BUDGET_S
    commit: str = "unknown"
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
    fid_weights: str = ""        # empty: stand-in weights made in the run
    standin_images: int = 256    # images the stand-in weights are calibrated on
    peaks: list[float] = field(default_factory=lambda: list(PEAKS))
    gpus: int = 1                # set by `check` from torch.cuda.device_count()

    @classmethod
    def smoke_sizes(cls, faces: str) -> "Plan":
        # 40 % held out: the memorisation check needs a few holdout images among 16.
        # 32 calibration images: one batch, enough for a feature spread far above the
        # stand-in's floor, and a few seconds on one CPU thread instead of a minute.
        return cls(faces=faces, smoke=True, holdout=0.4, model=dict(SMOKE_MODEL), batch=4,
                   train_steps=4, warmup=2, workers=0, loader_workers=[0], sample_n=8,
                   sample_batch=4, shard_size=4, ddim_steps=2, fid_batch=8,
                   standin_images=32)


def work_paths(work: Path) -> dict[str, Path]:
    return {"plan": work / "plan.json", "logs": work / "logs",
            "prepared": work / "prepared", "models": work / "models",
            "params": work / "params.yaml", "samples": work / "samples",
            "samples_ddp": work / "samples-ddp", "ref": work / "fid_ref" / "stats.npz",
            "figures": work / "memorisation", "standin": work / "standin-inception.pth"}


def results_folder(plan: Plan, work: Path) -> Path:
    return Path(plan.results) if plan.results else work / "results"


def write_plan(plan: Plan, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    work_paths(work)["plan"].write_text(json.dumps(dataclasses.asdict(plan), indent=1))


def read_plan(work: Path) -> Plan:
    return Plan(**json.loads(work_paths(work)["plan"].read_text()))
