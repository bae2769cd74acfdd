"""Benchmark: pixel space against latent space (f = 8) at 256 px (issue 27).

For the research log's #9 UNet and for DiT-S, in pixel space (the network denoises
x [B, 3, 256, 256]) and in latent space (z [B, 4, 32, 32], the autoencoder's latents
at f = 8), prints the parameters, the network FLOPs per training image and the
measured training images/s, with the ratios pixel / latent from the same run.

FLOPs per training image: FlopCounterMode on one image, on the meta device (nothing
is computed, and scaled_dot_product_attention is counted, which its fused CPU kernel
is not), times 3 for forward + backward (backward ≈ 2 × forward, the usual
convention; AdamW's update is not counted).

img/s: one real training step (forward, MSE against a random target, backward,
AdamW), float32 on the CPU. After a warm-up step each, the timed cases take turns,
round after round, so a noisy machine slows them alike; each keeps its best round.

DiT patch sizes (p counts latent pixels in latent space): latent DiT-S/2 has
(32/2)² = 256 tokens; pixel DiT-S/16 has the same 256 tokens (each a 16×16×3 patch);
pixel DiT-S/8 (1,024 tokens) is timed too; pixel DiT-S/2 (16,384 tokens, the same
model as the latent one) takes minutes per step here, so it is timed apart, after the
rounds: one step of one image, without a warm-up (which only flatters it), unless
--no-slow.

Not in the latent figures: the autoencoder's encode, paid once per image in the
encode stage, and its decode, once per sample after sampling. The encoder's cost per
image is printed as an aside.

    python scripts/bench_latent.py --rounds 3 --steps 2 --threads 2
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
import typer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddpm.autoencoder.network import Autoencoder
from ddpm.models.config import ModelConfig
from ddpm.models.log_layouts import LOG9, LOG_RES_BLOCKS
from ddpm.models.registry import build_model

TRAIN_PER_FORWARD = 3  # forward + backward ≈ 3 × forward
ENCODER = {"factor": 8, "latent_channels": 4, "channels": [32, 64, 64],
           "num_res_blocks": 1, "norm_groups": 8}


@dataclass(frozen=True)
class Case:
    model: str
    label: str
    config: ModelConfig
    batch: int  # 0: counted, not timed

    @property
    def slow(self) -> bool:
        """Minutes per step here: timed once, apart from the interleaved rounds."""
        return self.config.arch == "dit" and tokens(self.config) > 4096


def unet9(img_size: int, space: str) -> ModelConfig:
    return ModelConfig(img_size=img_size, space=space, num_res_blocks=LOG_RES_BLOCKS, **LOG9)


def dit_s(img_size: int, space: str, p: int) -> ModelConfig:
    return ModelConfig(arch="dit", dit_size="S", patch_size=p, img_size=img_size, space=space)


def cases(img_size: int, quick: bool) -> list[Case]:
    def batch(n: int) -> int:
        return min(n, 1) if quick else n

    dits = [("pixel", 16, 4), ("pixel", 8, 2), ("pixel", 2, 1), ("latent", 2, 4)]
    return [Case("#9 UNet", "pixel", unet9(img_size, "pixel"), batch(2)),
            Case("#9 UNet", "latent", unet9(img_size, "latent"), batch(16))] + [
        Case("DiT-S", f"{space}, /{p} ({tokens(dit_s(img_size, space, p))} tokens)",
             dit_s(img_size, space, p), batch(b)) for space, p, b in dits]


def tokens(config: ModelConfig) -> int:
    return (config.data_shape[-1] // config.patch_size) ** 2


def forward_flops(net: nn.Module, *inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(*inputs)
    return counter.get_total_flops()


def count(config: ModelConfig) -> tuple[int, int]:
    """(parameters, forward FLOPs of one image), on the meta device: nothing is computed."""
    with torch.device("meta"):
        net = build_model(config)
        x_t, t = torch.empty(1, *config.data_shape), torch.zeros(1, dtype=torch.long)
    return sum(p.numel() for p in net.parameters()), forward_flops(net, x_t, t)


class Trainer:
    """One case's network, optimizer and fixed batch (x_t, t, target)."""

    def __init__(self, config: ModelConfig, batch: int):
        torch.manual_seed(0)
        self.net = build_model(config)
        self.opt = torch.optim.AdamW(self.net.parameters(), 1e-4)
        self.x_t = torch.randn(batch, *config.data_shape)          # [B, C, H, W]
        self.t = torch.randint(0, 1000, (batch,))
        self.target = torch.randn_like(self.x_t)
        self.rates: list[float] = []

    def step(self) -> None:
        loss = nn.functional.mse_loss(self.net(self.x_t, self.t), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def time(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.rates.append(steps * len(self.x_t) / (time.perf_counter() - start))


def train_rates(timed: list[Case], rounds: int, steps: int) -> dict[str, float]:
    trainers = {}
    for case in timed:
        trainers[case.model + case.label] = trainer = Trainer(case.config, case.batch)
        trainer.step()  # warm-up: allocator, oneDNN primitive cache
    for _ in range(rounds):
        for trainer in trainers.values():
            trainer.time(steps)
    return {key: max(trainer.rates) for key, trainer in trainers.items()}


def slow_rates(slow: list[Case]) -> dict[str, float]:
    rates = {}
    for case in slow:
        print(f"timing {case.model} {case.label}: one step of {case.batch} image(s)...",
              flush=True)
        trainer = Trainer(case.config, case.batch)
        trainer.time(1)
        rates[case.model + case.label] = trainer.rates[0]
    return rates


def encoder_aside(img_size: int, batch: int, rounds: int) -> str:
    """The one-off cost: encode (mean only, as the encode stage) per image, no grad."""
    with torch.device("meta"):
        meta = Autoencoder(**ENCODER)
        flops_enc = forward_flops(meta.encoder, torch.empty(1, 3, img_size, img_size))
        side = img_size // ENCODER["factor"]
        flops_dec = forward_flops(meta.decoder, torch.empty(1, ENCODER["latent_channels"],
                                                            side, side))
    ae = Autoencoder(**ENCODER).eval()
    x = torch.randn(batch, 3, img_size, img_size)
    rates = []
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first warms up
            start = time.perf_counter()
            ae.encode(x)
            rates.append(batch / (time.perf_counter() - start))
    return (f"autoencoder {ENCODER}: encode {flops_enc / 1e9:.2f} GFLOP/image, "
            f"{max(rates[1:]):.1f} img/s (once per image, in the encode stage); "
            f"decode {flops_dec / 1e9:.2f} GFLOP/image (once per sample)")


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines
                if line.startswith("model name")), "unknown CPU")
    cores = sum(line.startswith("processor") for line in lines)
    return (f"{cpu} ({cores} cores), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {date.today()}")


def table(all_cases: list[Case], rates: dict[str, float]) -> None:
    counts = {c.model + c.label: count(c.config) for c in all_cases}
    latent = {c.model: c.model + c.label for c in all_cases if c.config.space == "latent"}
    print("| model | space | input [C, H, W] | params | GFLOP / training image | batch "
          "| train img/s | FLOPs pixel / latent | img/s latent / pixel |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case in all_cases:
        key, ref = case.model + case.label, latent[case.model]
        params, flops = counts[key]
        rate = rates.get(key)
        speedup = f"{rates[ref] / rate:.1f}" if rate and ref in rates else "–"
        print(f"| {case.model} | {case.label} | {list(case.config.data_shape)} | "
              f"{params / 1e6:.1f} M | {TRAIN_PER_FORWARD * flops / 1e9:.1f} | "
              f"{case.batch or '–'} | {f'{rate:.3g}' if rate else 'not timed'} | "
              f"{flops / counts[ref][1]:.1f} | {speedup} |", flush=True)


def main(rounds: int = 3, steps: int = 2, threads: int = 2,
         quick: bool = typer.Option(False, help="128 px, batch 1, 1 round of 1 step"),
         slow: bool = typer.Option(True, help="time pixel DiT-S/2 (minutes) too")) -> None:
    torch.set_num_threads(threads)
    img_size = 128 if quick else 256
    rounds, steps = (1, 1) if quick else (rounds, steps)
    all_cases = cases(img_size, quick)
    print(f"{machine()}; {img_size} px, f = {ENCODER['factor']}, float32, best of "
          f"{rounds} interleaved rounds of {steps} steps; GFLOP = {TRAIN_PER_FORWARD} × "
          "forward (FlopCounterMode, meta device)", flush=True)
    start = time.perf_counter()
    rates = train_rates([c for c in all_cases if c.batch and not c.slow], rounds, steps)
    if slow:
        rates |= slow_rates([c for c in all_cases if c.batch and c.slow])
    table(all_cases, rates)
    print(encoder_aside(img_size, 1 if quick else 4, rounds))
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    typer.run(main)
