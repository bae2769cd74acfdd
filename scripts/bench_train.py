"""Benchmark: training and sampling throughput of the research log's layouts on this machine.

Prints images/s of one optimizer step (forward + backward + AdamW, float32) and of
one no-grad forward (one sampling step) for each layout, plus the forward FLOPs
per image, so the time estimates in docs/research-log.md can be grounded in a
measured rate.

    python scripts/bench_train.py --batch 8 --repeats 3
"""

from __future__ import annotations

import time

import torch
import typer
from torch.utils.flop_counter import FlopCounterMode

from bench_formats import train_step  # scripts/ is on the path when run as a script
from ddpm.models.config import ModelConfig
from ddpm.models.log_layouts import LOG9_LISTS, LOG_RES_BLOCKS, SMALL_CHANNELS, WIDE_CHANNELS
from ddpm.models.registry import build_model

LOG9 = dict(LOG9_LISTS, num_res_blocks=LOG_RES_BLOCKS)
LAYOUTS = {
    "default (demo, 32 px)": ModelConfig(),
    "#1-#3 (assumed channels, 64 px)": ModelConfig(img_size=64, channels=SMALL_CHANNELS,
                                                  **LOG9),
    "#5 (64 px)": ModelConfig(img_size=64, channels=WIDE_CHANNELS, **LOG9),
    "#5 (96 px)": ModelConfig(img_size=96, channels=WIDE_CHANNELS, **LOG9),
    "#7/#10 (128 px)": ModelConfig(img_size=128, channels=WIDE_CHANNELS, **LOG9),
}


def forward_flops(config: ModelConfig) -> float:
    net = build_model(config)
    x = torch.randn(1, 3, config.img_size, config.img_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.zeros(1, dtype=torch.long))
    return counter.get_total_flops()


def rates(config: ModelConfig, batch: int, repeats: int) -> tuple[float, float]:
    net = build_model(config)
    opt = torch.optim.AdamW(net.parameters())
    x = torch.randn(batch, 3, config.img_size, config.img_size)
    t = torch.randint(0, 1000, (batch,))
    train, infer = [], []
    for _ in range(repeats + 1):  # the first round warms up allocator and kernels
        start = time.perf_counter()
        train_step(net, opt, x, t, bf16=False)
        train.append(batch / (time.perf_counter() - start))
        with torch.no_grad():
            start = time.perf_counter()
            net(x, t)
            infer.append(batch / (time.perf_counter() - start))
    return max(train[1:]), max(infer[1:])


def main(batch: int = 8, repeats: int = 3, only: str = "") -> None:
    print(f"threads: {torch.get_num_threads()}, batch {batch}, best of {repeats}")
    print("| layout | params | forward GFLOP/image | train img/s | sampling-step img/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, config in LAYOUTS.items():
        if only and only not in name:
            continue
        params = sum(p.numel() for p in build_model(config).parameters())
        train, infer = rates(config, batch, repeats)
        print(f"| {name} | {params / 1e6:.1f} M | {forward_flops(config) / 1e9:.2f} | "
              f"{train:.2f} | {infer:.1f} |", flush=True)


if __name__ == "__main__":
    typer.run(main)
