"""torch.compile of the training and sampling networks, in one place.

Inductor, torch.compile's default backend, generates C++ (CPU) or Triton (GPU)
code: about a minute per graph on this project's CPU, longer than a test should
take. `DDPM_COMPILE_BACKEND=aot_eager` (set by the tests and the CPU smoke run
of scripts/gpu_check.sh) traces the same graphs through Dynamo and AOTAutograd
and runs them with the ordinary kernels, so those runs check the wiring
(tracing, guards, recompiles, CUDA-graph bookkeeping), not inductor's kernels.
"""

from __future__ import annotations

import os

import torch

BACKEND_ENV = "DDPM_COMPILE_BACKEND"
MODES = ("default", "reduce-overhead")


def compile_module(module: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """`torch.compile(module, mode=mode)`, on the backend $DDPM_COMPILE_BACKEND if set."""
    backend = os.environ.get(BACKEND_ENV, "inductor")
    if backend != "inductor":
        return torch.compile(module, backend=backend)  # modes are inductor options
    return torch.compile(module, mode=mode)


class CompiledNet(torch.nn.Module):
    """A sampling network under torch.compile; `mode` reduce-overhead adds CUDA graphs.

    A CUDA graph replays into the same output buffers, so each call marks a new
    step and returns a copy: samplers keep earlier outputs (DPM-Solver++'s
    previous x̂0, trajectory frames) that the next replay would overwrite.
    """

    def __init__(self, net: torch.nn.Module, mode: str):
        super().__init__()
        self.graphs = mode == "reduce-overhead"
        self.compiled = compile_module(net, mode)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.graphs:
            return self.compiled(x, t)
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x, t).clone()
