"""Benchmark: one training step of the default model in float32, channels-last, bf16 and both.

The four variants take turns, round after round, on the same batch, so a noisy
machine slows them alike; the table gives each one's best round and its ratio to
float32 in the same run. This is what chose `train.precision: bf16-mixed` and
`train.channels_last: true` for the demo on the 2-core Xeon (AMX-BF16).

It also times, in the same rounds, what each batch's randomness costs: the per-image
draws training uses (`ddpm.training.draws`: t, flip and ε from (seed, epoch, position))
against one batch-wide draw from the global generator (the scheme before issue 26),
as a share of the fastest step.

    python scripts/bench_formats.py --batch 32 --rounds 6
"""

from __future__ import annotations

import time

import torch
import typer

from ddpm.models.config import ModelConfig
from ddpm.models.registry import build_model
from ddpm.training.draws import draw

VARIANTS = {"float32": (False, False), "channels-last": (True, False),
            "bf16 autocast": (False, True), "bf16 + channels-last": (True, True)}


def train_step(net, opt, x, t, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = (net(x, t).float() - x).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def per_image_draws(batch: int, shape: tuple[int, ...], start: int) -> None:
    rows = [draw(0, 0, start + i, shape, 1000) for i in range(batch)]
    torch.tensor([r.t for r in rows]), torch.stack([r.noise for r in rows])


def global_draws(batch: int, shape: tuple[int, ...], start: int) -> None:
    torch.randint(0, 1000, (batch,)), torch.rand(batch) < 0.5, torch.randn(batch, *shape)


def main(batch: int = 32, rounds: int = 6, steps: int = 10) -> None:
    config = ModelConfig()
    x = torch.randn(batch, 3, config.img_size, config.img_size)
    t = torch.randint(0, 1000, (batch,))
    runs = {}
    for name, (channels_last, bf16) in VARIANTS.items():
        torch.manual_seed(0)
        net = build_model(config)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net, xs = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        for _ in range(3):  # warm-up: allocator, oneDNN primitive cache
            train_step(net, opt, xs, t, bf16)
        runs[name] = (net, opt, xs, bf16, [])
    shape = tuple(x.shape[1:])
    draw_seconds = {per_image_draws: [], global_draws: []}
    for round_ in range(rounds):
        for net, opt, xs, bf16, rates in runs.values():
            start = time.perf_counter()
            for _ in range(steps):
                train_step(net, opt, xs, t, bf16)
            rates.append(steps * batch / (time.perf_counter() - start))
        for drawer, seconds in draw_seconds.items():
            start = time.perf_counter()
            for step in range(steps):
                drawer(batch, shape, (round_ * steps + step) * batch)
            seconds.append((time.perf_counter() - start) / steps)
    print(f"default model, {config.img_size} px, batch {batch}, {torch.get_num_threads()} "
          f"threads, best of {rounds} interleaved rounds of {steps} steps")
    print("| variant | train img/s | × float32 |\n| --- | ---: | ---: |")
    base = max(runs["float32"][4])
    for name, run in runs.items():
        print(f"| {name} | {max(run[4]):.0f} | {max(run[4]) / base:.2f} |")
    fastest = batch / max(max(run[4]) for run in runs.values())  # seconds per step
    print(f"\nrandomness of one batch of {batch} (best round), against the fastest step "
          f"({fastest * 1e3:.0f} ms)")
    print("| draws | ms per batch | % of a step |\n| --- | ---: | ---: |")
    for drawer, label in ((per_image_draws, "per image, from (seed, epoch, position)"),
                          (global_draws, "batch-wide, global generator (before)")):
        best = min(draw_seconds[drawer])
        print(f"| {label} | {best * 1e3:.2f} | {100 * best / fastest:.2f} |")


if __name__ == "__main__":
    typer.run(main)
