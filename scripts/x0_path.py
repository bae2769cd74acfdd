"""Diagnose saturated samples: the range of the model's x̂0 along the sampling path.

A sample made of flat ±1 blocks means the clean-image estimate x̂0 left [−1, 1]
and was clipped at many steps. This wraps a trained model so every network call
also records its implied x̂0 (before any clipping), then samples the same seeds
with DDIM η = 0, DDIM η = 1 and DDPM-1000 and prints, per sampler and per tenth
of the path, the RMS of x̂0 and the share of its pixels outside [−1, 1], and the
share of saturated pixels (0 or 255) in the finished images.

    python scripts/x0_path.py MODELS_DIR [MODELS_DIR ...] --n 16
"""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from ddpm.diffusion.forward import predict_x0_and_eps
from ddpm.diffusion.samplers import ddim_sample, ddpm_sample, initial_noise, sample_generators
from ddpm.io.images import to_uint8
from ddpm.models.checkpoint import load_model


class X0Recorder(torch.nn.Module):
    """The network, unchanged, plus a log of (t, RMS of x̂0, share of |x̂0| > 1) per call."""

    def __init__(self, net, schedule, prediction: str):
        super().__init__()
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.log: list[tuple[int, float, float]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.net(x, t)
        x0_hat, _ = predict_x0_and_eps(self.schedule, x, t, out, self.prediction)
        self.log.append((int(t[0]), x0_hat.pow(2).mean().sqrt().item(),
                         (x0_hat.abs() > 1).float().mean().item()))
        return out


def summarise(log: list[tuple[int, float, float]], parts: int = 10) -> str:
    """'t: rms/out%' at `parts` evenly spaced calls along the path (first = noisiest)."""
    picks = sorted({round(i * (len(log) - 1) / (parts - 1)) for i in range(parts)})
    return "  ".join(f"t{log[i][0]}: {log[i][1]:.2g}/{100 * log[i][2]:.0f}%" for i in picks)


def main(models: list[Path], n: int = 16, seed: int = 0) -> None:
    for model_dir in models:
        net, schedule, config = load_model(model_dir)
        prediction = config["diffusion"]["prediction"]
        img_size = config["model"]["img_size"]
        print(f"\n## {model_dir} ({config['model']['arch']}, {prediction}, "
              f"{config['diffusion']['schedule']}, {config.get('steps')} steps)")
        print("x̂0 along the path, 't: RMS/share outside [-1, 1]'; then saturated pixels")
        samplers = {
            "DDIM-50 eta 0": lambda m, x, g: ddim_sample(m, schedule, x, g, steps=50, eta=0.0,
                                                         prediction=prediction),
            "DDIM-50 eta 1": lambda m, x, g: ddim_sample(m, schedule, x, g, steps=50, eta=1.0,
                                                         prediction=prediction),
            "DDPM-1000": lambda m, x, g: ddpm_sample(m, schedule, x, g, prediction=prediction),
        }
        for name, sampler in samplers.items():
            recorder = X0Recorder(net, schedule, prediction)
            generators = sample_generators(seed, range(n))
            noise = initial_noise(generators, (3, img_size, img_size), "cpu")
            images = to_uint8(sampler(recorder, noise, generators).images)
            saturated = ((images == 0) | (images == 255)).float().mean().item()
            print(f"- {name}: {summarise(recorder.log)}; saturated pixels {100 * saturated:.1f}%")


if __name__ == "__main__":
    typer.run(main)
