"""Forward process, target conversions and losses (Ho et al. 2020; Salimans & Ho 2022)."""

from __future__ import annotations

import pytest
import torch

from ddpm.diffusion.forward import (loss_per_timestep, predict_x0_and_eps, prediction_target,
                                    q_sample, training_loss)
from ddpm.diffusion.schedules import NoiseSchedule, extract
from ddpm.errors import ConfigError

SCHEDULE = {name: NoiseSchedule.from_name(name, 1000) for name in ["linear", "cosine"]}
PREDICTIONS = ["eps", "v", "x0"]


@pytest.mark.parametrize("name", sorted(SCHEDULE))
@pytest.mark.parametrize("step", [0, 250, 999])
def test_q_sample_moments(name, step):
    """x_t | x_0 ~ N(√ᾱ_t x_0, (1 − ᾱ_t) I) (eq. 4), checked on 2000 draws of a 4-vector.

    Tolerances are 4 standard errors: SE(mean) = √(1 − ᾱ)/√N and, for Gaussian
    data, SE(variance) = (1 − ᾱ)·√(2/(N − 1)).
    """
    sched, n = SCHEDULE[name], 2000
    gen = torch.Generator().manual_seed(step)
    x0 = torch.tensor([-0.9, -0.2, 0.4, 1.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    noise = torch.randn((n, 4, 1, 1), generator=gen, dtype=torch.float64)
    t = torch.full((n,), step)
    x_t = q_sample(sched, x0.expand(n, -1, -1, -1), t, noise)  # [N,4,1,1]
    ab = sched.alphas_cumprod[step].item()
    se_mean = (1 - ab) ** 0.5 / n**0.5
    se_var = (1 - ab) * (2 / (n - 1)) ** 0.5
    assert torch.allclose(x_t.mean(0), ab**0.5 * x0[0], atol=4 * se_mean, rtol=0)
    assert torch.allclose(x_t.var(0), torch.full_like(x0[0], 1 - ab), atol=4 * se_var, rtol=0)


def test_q_sample_is_the_closed_form_per_element():
    sched = SCHEDULE["linear"]
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn((2, 8, 3, 2, 2), generator=gen)
    t = torch.tensor([3, 900, 0, 999, 1, 2, 500, 500])
    a = sched.sqrt_alphas_cumprod[t].float().reshape(8, 1, 1, 1)
    s = sched.sqrt_one_minus_alphas_cumprod[t].float().reshape(8, 1, 1, 1)
    assert torch.allclose(q_sample(sched, x0, t, noise), a * x0 + s * noise)


@pytest.mark.parametrize("name", sorted(SCHEDULE))
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_target_round_trip(name, prediction, dtype, tol):
    """predict_x0_and_eps(prediction_target(x_0, ε)) = (x_0, ε) at every kind of t.

    The tolerance scales with the conditioning of the inversion: the eps
    target recovers x_0 by dividing by √ᾱ_t (5e-5 at the cosine schedule's last
    step) and the x0 target recovers ε by dividing by √(1 − ᾱ_t) (0.01 at t = 0),
    so float32 rounding is amplified that much. v never divides.
    """
    sched = SCHEDULE[name]
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn((2, 16, 3, 4, 4), generator=gen, dtype=dtype)
    x0 = x0.clamp(-1, 1)
    t = torch.cat([torch.tensor([0, 1, 999]), torch.randint(0, 1000, (13,), generator=gen)])
    x_t = q_sample(sched, x0, t, noise)
    target = prediction_target(sched, x0, noise, t, prediction)
    x0_hat, eps_hat = predict_x0_and_eps(sched, x_t, t, target, prediction)
    assert x0_hat.dtype == dtype and eps_hat.dtype == dtype
    a = extract(sched.sqrt_alphas_cumprod, t, x0.shape, dtype)
    s = extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.shape, dtype)
    conditioning = {"eps": 1 / a, "x0": 1 / s, "v": torch.ones_like(a)}[prediction]
    atol = tol * 10 * conditioning  # [B,1,1,1]; |x|, |ε| < 10 here
    assert bool(((x0_hat - x0).abs() <= atol).all())
    assert bool(((eps_hat - noise).abs() <= atol).all())


def test_v_target_definition():
    sched = SCHEDULE["cosine"]
    x0, noise = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
    t = torch.tensor([400])
    a, s = sched.sqrt_alphas_cumprod[400].item(), sched.sqrt_one_minus_alphas_cumprod[400].item()
    v = prediction_target(sched, x0, noise, t, "v")
    assert v.item() == pytest.approx(a * 2 - s * 1, rel=1e-6)


def test_unknown_prediction_names_the_key():
    with pytest.raises(ConfigError, match=r"^diffusion\.prediction = 'score'"):
        zero = torch.zeros(1)
        prediction_target(SCHEDULE["linear"], zero, zero, zero.long(), "score")


def _oracle(sched, x0, prediction):
    """A model that knows x_0, hence ε = (x_t − √ᾱ x_0)/√(1 − ᾱ): its loss must be 0."""
    def model(x_t, t):
        a = extract(sched.sqrt_alphas_cumprod, t, x_t.shape, x_t.dtype)
        s = extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape, x_t.dtype)
        return prediction_target(sched, x0, (x_t - a * x0) / s, t, prediction)
    return model


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_loss_replays_its_generator(prediction):
    """t is drawn first, then ε, both from `generator`: replaying it rebuilds the loss."""
    sched = SCHEDULE["linear"]
    x0 = torch.rand((6, 3, 4, 4), generator=torch.Generator().manual_seed(2)) * 2 - 1
    loss = training_loss(lambda x, t: torch.zeros_like(x), sched, x0, prediction,
                         generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (6,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    expected = prediction_target(sched, x0, noise, t, prediction).pow(2).mean()
    assert loss.shape == () and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # The oracle model's loss is 0 up to the float32 round trip through x_t.
    oracle_loss = training_loss(_oracle(sched, x0, prediction), sched, x0, prediction,
                                generator=torch.Generator().manual_seed(7))
    assert oracle_loss.item() < 1e-6


def test_training_loss_backpropagates():
    net = torch.nn.Conv2d(3, 3, 1)
    x0 = torch.zeros(4, 3, 2, 2)
    loss = training_loss(lambda x, t: net(x), SCHEDULE["cosine"], x0, "eps")
    loss.backward()
    assert net.weight.grad is not None and torch.isfinite(loss)


def test_loss_per_timestep():
    sched = SCHEDULE["cosine"]
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn((2, 10, 3, 4, 4), generator=gen)
    steps = [0, 10, 500, 999]

    def model(x, t):
        assert not torch.is_grad_enabled() and t.dtype == torch.int64
        return 0.5 * x

    losses = loss_per_timestep(model, sched, x0, steps, noise, "v", batch_size=3)
    assert losses.shape == (4, 10) and losses.dtype == torch.float32
    for row, step in enumerate(steps):
        t = torch.full((10,), step)
        with torch.no_grad():
            x_t = q_sample(sched, x0, t, noise)
            err = model(x_t, t) - prediction_target(sched, x0, noise, t, "v")
        torch.testing.assert_close(losses[row], err.pow(2).mean((1, 2, 3)))
    # Batching is bookkeeping only.
    one_batch = loss_per_timestep(model, sched, x0, steps, noise, "v", batch_size=64)
    assert torch.equal(losses, one_batch)


# ------------------------------------------------------------------ defaults and dtypes


def _replayed_loss(x0, prediction, weighting, gamma, seed=3):
    """The loss recomputed by hand from the draws a seeded generator makes (t, then ε)."""
    from ddpm.diffusion.forward import q_sample

    schedule = NoiseSchedule.from_name("cosine", 100)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 100, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    net = lambda x, tt: 0.5 * x  # noqa: E731
    err = (net(q_sample(schedule, x0, t, eps), t).float()
           - prediction_target(schedule, x0, eps, t, prediction).float()).pow(2).flatten(1).mean(1)
    if weighting == "min_snr":
        snr = schedule.log_snr(t).exp()
        clipped = snr.clamp(max=gamma)
        err = err * {"x0": clipped, "eps": clipped / snr, "v": clipped / (snr + 1)}[prediction]
    return schedule, net, err.mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_losses_defaults_are_unweighted_and_gamma_5(dtype):
    from ddpm.diffusion.forward import training_loss, training_losses

    x0 = torch.rand(6, 3, 4, 4, dtype=dtype) * 2 - 1
    schedule, net, plain = _replayed_loss(x0, "v", "none", None)
    got = training_losses(net, schedule, x0, "v", torch.Generator().manual_seed(3))
    assert got.loss.item() == pytest.approx(plain.item(), rel=1e-6) == got.mse.item()
    _, _, weighted = _replayed_loss(x0, "v", "min_snr", 5.0)
    got = training_loss(net, schedule, x0, "v", torch.Generator().manual_seed(3), "min_snr")
    assert got.item() == pytest.approx(weighted.item(), rel=1e-6)


def test_min_snr_gamma_defaults_to_5_and_is_passed_through():
    # 64 draws of t in 0..99 under cosine: several have SNR > 6, where γ = 5 and 6 differ.
    from ddpm.diffusion.forward import training_loss, training_losses

    x0 = torch.rand(64, 3, 4, 4) * 2 - 1
    schedule, net, gamma_5 = _replayed_loss(x0, "v", "min_snr", 5.0)
    assert (schedule.log_snr(torch.randint(0, 100, (64,), generator=torch.Generator()
                                           .manual_seed(3))).exp() > 6).sum() >= 5
    got = training_losses(net, schedule, x0, "v", torch.Generator().manual_seed(3), "min_snr")
    assert got.loss.item() == pytest.approx(gamma_5.item(), rel=1e-6)
    for gamma in (1.0, 6.0):
        _, _, expected = _replayed_loss(x0, "v", "min_snr", gamma)
        assert expected.item() != pytest.approx(gamma_5.item(), rel=1e-3)
        got = training_loss(net, schedule, x0, "v", torch.Generator().manual_seed(3), "min_snr",
                            min_snr_gamma=gamma)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got = training_loss(net, schedule, x0, "v", torch.Generator().manual_seed(3), "min_snr")
    assert got.item() == pytest.approx(gamma_5.item(), rel=1e-6)


def test_min_snr_weight_is_float32_on_ts_device():
    from ddpm.diffusion.forward import min_snr_weight

    w = min_snr_weight(NoiseSchedule.from_name("cosine", 100), torch.tensor([1, 50, 99]), "v", 5.0)
    assert w.dtype == torch.float32 and w.device == torch.device("cpu")


def test_unknown_loss_weighting_lists_the_choices():
    from ddpm.diffusion.forward import training_losses

    with pytest.raises(ConfigError, match=r"^diffusion.loss_weighting = 'snr': must be one of "
                                          r"'none', 'min_snr'$"):
        training_losses(lambda x, t: x, NoiseSchedule.from_name("cosine", 100),
                        torch.zeros(1, 3, 2, 2), "eps", loss_weighting="snr")


def test_check_prediction_lists_the_choices():
    from ddpm.diffusion.forward import check_prediction

    with pytest.raises(ConfigError, match=r"^diffusion.prediction = 'score': must be one of "
                                          r"'eps', 'v', 'x0'$"):
        check_prediction("score")
