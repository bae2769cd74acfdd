"""Exponential moving average (EMA) of model weights.

DDPM (Ho et al. 2020, Appendix B) samples from an EMA of the weights with
decay 0.9999; averaging over the last ~1/(1−decay) optimizer steps smooths
out the noise of single SGD steps and gives visibly better samples.

After every optimizer step (n = number of updates so far):

    θ_ema ← d·θ_ema + (1 − d)·θ,   d = decay
                                     or min(decay, (1 + n)/(10 + n)) with warmup

Buffers (e.g. normalisation statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """An EMA copy (`shadow`) of a model's parameters.

    `shadow` is a deep copy of the model in eval mode with `requires_grad`
    off: call it directly to sample. It lives on the device the model was on
    when the EMA was made; move it with `ema.shadow.to(device)`.

    warmup: if True, use decay min(decay, (1 + n)/(10 + n)) at update n
        (as in TensorFlow's `ExponentialMovingAverage` with `num_updates`), so
        early updates follow the model closely instead of dragging along the
        random initialisation for ~1/(1−decay) steps. Off by default: plain
        DDPM-style EMA with a constant decay.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay = {decay}: must be >= 0 and < 1")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards `model`; call once per optimizer step."""
        d = self.current_decay()
        shadow = list(self.shadow.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(shadow) != len(params):
            raise ValueError(f"EMA: the model has {len(params)} parameter tensors, the shadow "
                             f"{len(shadow)}")
        # Two kernels for all tensors, not two per tensor: with hundreds of tensors
        # the per-tensor launches cost a GPU a large share of a training step. The
        # arithmetic (ema·d, then + (1 − d)·p) is the per-tensor one, to the bit.
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, params, alpha=1.0 - d)
        for ema_b, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s parameters and buffers with the EMA ones."""
        for p, ema_p in zip(model.parameters(), self.shadow.parameters(), strict=True):
            p.copy_(ema_p)
        for b, ema_b in zip(model.buffers(), self.shadow.buffers(), strict=True):
            b.copy_(ema_b)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: shadow weights and the update count."""
        return {"shadow": self.shadow.state_dict(), "num_updates": self.num_updates,
                "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore shadow weights and update count; `decay` and `warmup` stay as
        constructed, since the run's config, not the checkpoint, sets them."""
        self.shadow.load_state_dict(state["shadow"])
        self.num_updates = int(state["num_updates"])
