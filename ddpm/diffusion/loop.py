"""The one sampling loop: every sampler is a stepper driven by `sample_loop`.

A stepper, in the style of diffusers' schedulers, holds `timesteps`, the t's at
which the network is evaluated, in order, and `step(i, x, x0_hat, eps_hat)`, the
update from x at `timesteps[i]` to the next x (after the last t: the sample). The
loop does the rest, the same for every sampler: the denoiser's (x̂_0, ε̂), the
trajectory frames, the step, the progress call.

Legend (0-indexed t; index t is the paper's step t+1):
    x               x_t, the current sample [B, C, H, W]
    x0_hat, eps_hat x̂_0 and ε̂, the denoiser's estimates at (x_t, t)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from ddpm.diffusion.denoiser import Denoiser

Frame = tuple[int, torch.Tensor, torch.Tensor]  # (t, x_t, x0_hat), CPU tensors


@dataclass
class SampleResult:
    """`images`: x_0 [B, C, H, W] on the noise's device.

    `trajectory`: (t, x_t, x̂_0) CPU tensors at evenly spaced steps, where x_t is
    the step's input and x̂_0 the model's estimate from it; the last frame is the
    last step, whose x̂_0 is exactly `images`. Empty unless frames were asked for.
    """

    images: torch.Tensor
    trajectory: list[Frame] = field(default_factory=list)


class Stepper(Protocol):
    """A sampler's update rule: where it evaluates the network and what it does with x̂_0, ε̂."""

    timesteps: Sequence[int]

    def step(self, i: int, x: torch.Tensor, x0_hat: torch.Tensor,
             eps_hat: torch.Tensor) -> torch.Tensor: ...


def frame_steps(n_steps: int, frames: int) -> set[int]:
    """Indices of `frames` evenly spaced steps out of n_steps, first and last included.

    One frame means the last step (the finished sample); more than n_steps gives all.
    """
    if frames <= 0:
        return set()
    if frames == 1:
        return {n_steps - 1}
    return set(np.round(np.linspace(0, n_steps - 1, frames)).astype(int).tolist())


def frame(t: int, x: torch.Tensor, x0_hat: torch.Tensor) -> Frame:
    """Copies on the CPU: a frame must not change when the caller edits x or the result."""
    return t, x.detach().to("cpu", copy=True), x0_hat.detach().to("cpu", copy=True)


@torch.no_grad()
def sample_loop(stepper: Stepper, denoiser: Denoiser, noise: torch.Tensor, *,
                trajectory_frames: int = 0,
                progress: Callable[[], object] | None = None) -> SampleResult:
    """Run `stepper` from x_T = `noise` [B, C, H, W], one network evaluation per timestep.

    `trajectory_frames` > 0 keeps that many (t, x_t, x̂_0) frames (`frame_steps`);
    `progress`, when given, is called with no arguments after every step.
    """
    timesteps = stepper.timesteps
    keep = frame_steps(len(timesteps), trajectory_frames)
    trajectory: list[Frame] = []
    x = noise
    for i, t in enumerate(timesteps):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)  # [B]
        x0_hat, eps_hat = denoiser(x, t_batch)
        if i in keep:
            trajectory.append(frame(t, x, x0_hat))
        x = stepper.step(i, x, x0_hat, eps_hat)
        if progress is not None:
            progress()
    return SampleResult(images=x, trajectory=trajectory)
