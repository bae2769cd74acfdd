"""Exact-arithmetic tests for the EMA of model weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm.training.ema import EMA


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_one_update_is_the_convex_combination():
    model, d = tiny_model(0), 0.9
    ema = EMA(model, d)
    old = params(ema.shadow)
    model.load_state_dict(tiny_model(1).state_dict())      # new weights θ
    model.train()(torch.randn(16, 4))                      # changes BatchNorm buffers
    ema.update(model)
    for ema_p, o, new in zip(ema.shadow.parameters(), old, model.parameters()):
        torch.testing.assert_close(ema_p, d * o + (1 - d) * new, rtol=0, atol=1e-7)
    for ema_b, b in zip(ema.shadow.buffers(), model.buffers()):
        assert torch.equal(ema_b, b)                       # buffers copied, not averaged


def test_update_is_the_per_tensor_arithmetic_to_the_bit():
    """The fused (foreach) update computes ema·d + (1 − d)·θ exactly as the per-tensor
    mul_/add_ it replaced: a training run's EMA weights do not change by a bit."""
    model, d = tiny_model(0), 0.9993
    ema = EMA(model, d)
    expected = params(ema.shadow)
    model.load_state_dict(tiny_model(1).state_dict())
    for e, p in zip(expected, model.parameters()):
        e.mul_(d).add_(p.detach(), alpha=1.0 - d)
    ema.update(model)
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow.parameters(), expected))


def test_decay_zero_copies_the_model():
    model = tiny_model(0)
    ema = EMA(model, 0.0)
    model.load_state_dict(tiny_model(1).state_dict())
    ema.update(model)
    for ema_p, p in zip(ema.shadow.parameters(), model.parameters()):
        assert torch.equal(ema_p, p)


def test_warmup_decay_is_explicit_and_follows_the_schedule():
    model = tiny_model(0)
    assert EMA(model, 0.999).current_decay() == 0.999
    ema = EMA(model, 0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    ema.update(model)
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999


def test_shadow_is_frozen_eval_copy():
    model = tiny_model(0).train()
    ema = EMA(model, 0.99)
    assert not ema.shadow.training
    assert all(not p.requires_grad for p in ema.shadow.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(a is not b for a, b in zip(ema.shadow.parameters(), model.parameters()))
    assert ema.shadow(torch.randn(3, 4)).grad_fn is None    # usable directly for sampling


def test_state_dict_round_trip_and_copy_to():
    model = tiny_model(0)
    ema = EMA(model, 0.5)
    model.load_state_dict(tiny_model(1).state_dict())
    ema.update(model)
    ema.update(model)

    resumed = EMA(tiny_model(2), 0.5)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.num_updates == 2
    for a, b in zip(resumed.shadow.state_dict().values(), ema.shadow.state_dict().values()):
        assert torch.equal(a, b)

    target = tiny_model(3)
    resumed.copy_to(target)
    for a, b in zip(target.state_dict().values(), ema.shadow.state_dict().values()):
        assert torch.equal(a, b)
