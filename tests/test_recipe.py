"""Training-recipe options (issue 10), each against its closed form or defining invariant:
scale-shift time injection, zero-initialised branches, min-SNR-γ weighting, the sigmoid
schedule, the cosine learning-rate schedule, and training grids drawn with `train.preview_*`."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ddpm.diffusion.forward import (min_snr_weight, predict_x0_and_eps, prediction_target,
                                    q_sample, training_loss)
from ddpm.diffusion.samplers import ddim_sample, ddpm_sample, initial_noise, sample_generators
from ddpm.diffusion.schedules import NoiseSchedule, sigmoid_betas
from ddpm.models.config import ModelConfig
from ddpm.models.layers import ResidualBlock
from ddpm.models.registry import build_model
from ddpm.training.callbacks import SampleGrid
from ddpm.training.system import lr_factor
from tests.tiny import MODEL

PREDICTIONS = ["eps", "v", "x0"]


# ------------------------------------------------------------ time injection


def test_scale_shift_block_matches_its_formula():
    """Residual branch = conv2(SiLU(GN(conv1(SiLU(GN(x))))·(1 + s) + b)), (s, b) = Linear(temb)."""
    torch.manual_seed(0)
    block = ResidualBlock(8, 8, time_dim=6, groups=2, time_injection="scale_shift").eval()
    x, temb = torch.randn(3, 8, 5, 5), torch.randn(3, 6)
    scale, shift = block.time_proj(temb).chunk(2, dim=1)
    h = block.norm2(block.conv1(torch.nn.functional.silu(block.norm1(x))))
    h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    expected = x + block.conv2(torch.nn.functional.silu(h))
    assert torch.allclose(block(x, temb), expected, atol=1e-6)


def test_scale_shift_can_switch_a_channel_off_where_add_cannot():
    """With scale −1 and shift 0 the normalised features are zeroed: the branch is conv2's
    bias alone, whatever x is. An additive time embedding can only move the features."""
    torch.manual_seed(0)
    block = ResidualBlock(4, 4, time_dim=3, groups=2, time_injection="scale_shift").eval()
    linear = block.time_proj[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.cat([-torch.ones(4), torch.zeros(4)]))
    x = torch.randn(2, 4, 6, 6)
    branch = block(x, torch.randn(2, 3)) - x
    assert torch.allclose(branch, block.conv2.bias[None, :, None, None].expand_as(branch),
                          atol=1e-6)


def test_unknown_time_injection_is_refused():
    with pytest.raises(ValueError, match="time_injection"):
        ResidualBlock(4, 4, time_dim=3, groups=2, time_injection="film")


# ------------------------------------------------------------ zero initialisation


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
@pytest.mark.parametrize("time_injection", ["add", "scale_shift"])
def test_zero_init_network_predicts_zero_and_still_learns(arch, time_injection):
    """Every residual and attention branch and the head start at 0, so the first
    prediction is exactly 0 for any input; gradients still reach the zeroed head."""
    config = ModelConfig(**{**MODEL, "arch": arch, "zero_init": True,
                            "time_injection": time_injection})
    torch.manual_seed(0)
    net = build_model(config)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    assert torch.count_nonzero(net(x, t)) == 0
    torch.nn.functional.mse_loss(net(x, t), torch.randn_like(x)).backward()
    assert net.head[2].weight.grad.abs().sum() > 0


def test_zero_init_changes_no_shapes_and_default_init_is_not_zero():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**{**MODEL, "zero_init": False}))
    zeroed = build_model(ModelConfig(**{**MODEL, "zero_init": True}))
    assert [p.shape for p in plain.parameters()] == [p.shape for p in zeroed.parameters()]
    assert plain(torch.randn(1, 3, 16, 16), torch.tensor([5])).abs().max() > 1e-3


# ------------------------------------------------------------ min-SNR-γ


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weight_gives_min_snr_times_x0_error(prediction, gamma):
    """Hang et al. 2023: whatever the target, weight · ‖out − target‖² = min(SNR, γ)·‖x̂0 − x0‖²
    per image, with x̂0 the network's implied clean image."""
    sched = NoiseSchedule.from_name("cosine", 1000)
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 50, 300, 600, 900, 999])
    x0, noise = torch.randn(6, 3, 4, 4, generator=gen), torch.randn(6, 3, 4, 4, generator=gen)
    x_t = q_sample(sched, x0.double(), t, noise.double()).float()
    out = torch.randn(6, 3, 4, 4, generator=gen)
    target = prediction_target(sched, x0, noise, t, prediction)
    weighted = min_snr_weight(sched, t, prediction, gamma).double() * (
        (out - target).double().pow(2).flatten(1).mean(1))
    x0_hat, _ = predict_x0_and_eps(sched, x_t.double(), t, out.double(), prediction)
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    expected = snr.clamp(max=gamma) * (x0_hat - x0.double()).pow(2).flatten(1).mean(1)
    assert torch.allclose(weighted, expected, rtol=1e-4, atol=1e-9)


def test_min_snr_eps_weight_is_one_at_high_noise_and_small_at_low_noise():
    sched = NoiseSchedule.from_name("linear", 1000)
    w = min_snr_weight(sched, torch.tensor([0, 999]), "eps", 5.0)
    assert w[1] == pytest.approx(1.0) and w[0] < 0.01


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_loss_min_snr_is_the_weighted_mean_of_per_image_losses(prediction):
    sched = NoiseSchedule.from_name("linear", 1000)
    conv = torch.nn.Conv2d(3, 3, 1)
    net = lambda x, t: conv(x)  # noqa: E731
    x0 = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    plain = training_loss(net, sched, x0, prediction, torch.Generator().manual_seed(3))
    weighted = training_loss(net, sched, x0, prediction, torch.Generator().manual_seed(3),
                             loss_weighting="min_snr", min_snr_gamma=5.0)
    # Redraw the same t and ε, and weight by hand.
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = q_sample(sched, x0, t, noise)
    err = conv(x_t) - prediction_target(sched, x0, noise, t, prediction)
    per_image = err.pow(2).flatten(1).mean(1)
    assert plain.item() == pytest.approx(per_image.mean().item(), rel=1e-5)
    expected = (per_image * min_snr_weight(sched, t, prediction, 5.0)).mean()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)


def test_unknown_loss_weighting_is_one_line_config_error():
    from ddpm.errors import ConfigError
    with pytest.raises(ConfigError, match="diffusion.loss_weighting"):
        training_loss(lambda x, t: x, NoiseSchedule.from_name("linear", 100),
                      torch.zeros(1, 3, 2, 2), "eps", loss_weighting="p2")


# ------------------------------------------------------------ sigmoid schedule


@pytest.mark.parametrize("T", [1000, 64])
def test_sigmoid_alpha_bar_is_the_rescaled_logistic(T):
    """ᾱ(t) = (σ(3) − σ(6t/T − 3)) / (σ(3) − σ(−3)) (Jabri et al. 2022, start −3, end 3, τ 1),
    wherever the β clip at 0.999 is not active (it only touches the last step)."""
    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    alpha_bar = NoiseSchedule.from_betas(sigmoid_betas(T)).alphas_cumprod
    for t in range(1, T):  # index t−1 holds ᾱ at the paper's step t
        closed = (sig(3) - sig(6 * t / T - 3)) / (sig(3) - sig(-3))
        assert alpha_bar[t - 1].item() == pytest.approx(closed, rel=1e-9)


def test_sigmoid_is_symmetric_about_the_middle_step():
    """The logistic slice [−3, 3] is point-symmetric: ᾱ(t) + ᾱ(T − t) = 1."""
    alpha_bar = NoiseSchedule.from_betas(sigmoid_betas(1000)).alphas_cumprod
    for t in (100, 250, 400):
        assert (alpha_bar[t - 1] + alpha_bar[1000 - t - 1]).item() == pytest.approx(1.0, 1e-9)


# ------------------------------------------------------------ learning-rate schedule


def test_lr_factor_warmup_then_cosine_to_zero():
    f = lambda step, s: lr_factor(step, warmup_steps=10, max_steps=110, schedule=s)  # noqa: E731
    assert [f(i, "cosine") for i in (0, 4)] == [0.1, 0.5]
    assert f(9, "cosine") == pytest.approx(1.0)
    assert f(59, "cosine") == pytest.approx(0.5)        # half way through the decay
    assert f(109, "cosine") == pytest.approx(0.0, abs=1e-12)
    steps = [f(i, "cosine") for i in range(9, 110)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    assert [f(i, "constant") for i in (9, 59, 109, 500)] == [1.0] * 4


# ------------------------------------------------------------ training sample grids


def _grid_module(timesteps: int, schedule: str = "cosine"):
    torch.manual_seed(0)
    net = build_model(ModelConfig(**MODEL)).eval()
    return SimpleNamespace(ema_net=net, schedule=NoiseSchedule.from_name(schedule, timesteps),
                           diffusion=SimpleNamespace(prediction="eps"))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_training_grid_uses_the_configured_preview_sampler(sampler):
    """train.preview_sampler at train.preview_steps, with the preview's fixed settings."""
    module = _grid_module(30)
    gens = lambda: sample_generators(0, range(4))  # noqa: E731
    noise = initial_noise(gens(), (3, 16, 16), "cpu")
    grid = SampleGrid(1, sampler, steps=10)._draw(module, noise, gens())
    if sampler == "ddpm":
        expected = ddpm_sample(module.ema_net, module.schedule, noise, gens()).images
    else:
        expected = ddim_sample(module.ema_net, module.schedule, noise, gens(), steps=10,
                               eta=0.0, spacing="trailing").images
    assert torch.equal(grid, expected)

