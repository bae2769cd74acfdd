"""Contract tests for the DiT: shapes, patch order, adaLN-Zero, fixed positions, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tiny
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.config import ModelConfig
from ddpm.models.dit import DIT_PRESETS, DiT, sincos_2d
from ddpm.models.registry import ARCHITECTURES, build_model

TINY = dict(depth=2, hidden_size=32, num_heads=2)


# Tiny models: one torch thread (tests/conftest.py says why).
pytestmark = pytest.mark.usefixtures("one_thread")


def config(img_size: int = 32, **overrides) -> ModelConfig:
    return dataclasses.replace(ModelConfig(arch="dit"), img_size=img_size, **overrides)


def inputs(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 1000, (batch,),
                                                                         generator=g)


def randomise_zero_inits(model: DiT) -> DiT:
    """Move off adaLN-Zero's zeros so the output depends on the input."""
    torch.manual_seed(1)
    modulations = [b.adaLN_modulation[-1] for b in model.blocks]
    for layer in modulations + [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]:
        nn.init.normal_(layer.weight, std=0.05)
        nn.init.normal_(layer.bias, std=0.05)
    return model


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("patch_size", [2, 4])
def test_output_shape_equals_input_shape(size, patch_size):
    torch.manual_seed(0)
    model = randomise_zero_inits(build_model(config(size, patch_size=patch_size, **TINY)))
    batch = 2 if size <= 64 else 1
    with torch.no_grad():
        y = model(*inputs(batch, size))
    assert y.shape == (batch, 3, size, size)
    assert y.dtype == torch.float32 and torch.isfinite(y).all() and y.abs().sum() > 0


def test_default_config_builds_as_shipped():
    """`model.arch=dit model.patch_size=4` with the default custom size (6, 192, 4) at 32."""
    model = build_model(ModelConfig(arch="dit", patch_size=4))
    assert isinstance(model, DiT)
    assert len(model.blocks) == 6 and model.hidden_size == 192
    assert model.blocks[0].attn.num_heads == 4
    with torch.no_grad():
        y = model(*inputs(1, 32))
    # As shipped, adaLN-Zero starts every block and the final layer at 0 (DiT §3.2).
    assert y.shape == (1, 3, 32, 32) and torch.count_nonzero(y) == 0


def test_unpatchify_puts_each_token_back_where_patchify_took_it():
    """Without blocks, output patch (r, c) depends on input patch (r, c) only. A non-square
    8×16 input (grid 2×4) catches rows and columns swapped."""
    torch.manual_seed(0)
    model = randomise_zero_inits(DiT(img_size=16, patch_size=4, depth=0, hidden_size=32,
                                     num_heads=2))
    x, t = inputs(1, 16)
    x = x[:, :, :8]                                          # [1, 3, 8, 16]
    x2 = x.clone()
    x2[:, :, 4:8, 8:12] += 1.0                               # patch at row 1, column 2
    with torch.no_grad():
        changed = (model(x2, t[:1]) - model(x, t[:1])).abs().sum(dim=1)[0] > 0  # [8, 16]
    expected = torch.zeros(8, 16, dtype=torch.bool)
    expected[4:8, 8:12] = True
    assert torch.equal(changed, expected)


# ------------------------------------------------------------- adaLN-Zero


def test_every_block_starts_as_the_identity():
    torch.manual_seed(0)
    model = build_model(config(16, patch_size=4, depth=3, hidden_size=32, num_heads=2))
    h = torch.randn(2, 16, 32)                               # [B, T, d] tokens
    c = model.t_embedder(torch.tensor([3, 900]))             # [B, d]
    assert c.abs().sum() > 0
    for block in model.blocks:
        assert torch.equal(block(h, c), h)                   # exactly: the gates are 0
    # and the zero-initialised final layer predicts 0 everywhere (DiT §3.2)
    assert torch.equal(model(*inputs(2, 16)), torch.zeros(2, 3, 16, 16))


def test_gates_learn_away_from_zero():
    """Zero gates must still receive gradients, or the blocks would stay identities."""
    torch.manual_seed(0)
    model = build_model(config(16, patch_size=4, **TINY))
    # At initialisation only the final Linear gets gradients (everything feeds through its
    # zero weight); once it has moved, as after one optimiser step, the gates get them too.
    nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    model(*inputs(2, 16)).square().mean().backward()
    for block in model.blocks:
        assert block.adaLN_modulation[-1].weight.grad.abs().sum() > 0


# ------------------------------------------------------------- positions


def test_position_embedding_is_fixed_sincos_not_a_parameter():
    model = build_model(config(32, patch_size=4, **TINY))
    assert "pos_embed" not in dict(model.named_parameters())
    assert not model.pos_embed.requires_grad
    assert "pos_embed" not in model.state_dict()             # derived from the config
    torch.testing.assert_close(model.pos_embed[0], sincos_2d(32, 8, 8), rtol=0, atol=0)
    # token (0, 0): sines of 0 then cosines of 0, for the column and the row halves
    assert torch.equal(model.pos_embed[0, 0], torch.tensor(([0.0] * 8 + [1.0] * 8) * 2))
    assert len(set(map(tuple, model.pos_embed[0].tolist()))) == 64  # all positions distinct
    before = model.pos_embed.clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    randomise_zero_inits(model)(*inputs(2, 32)).square().mean().backward()
    opt.step()
    assert torch.equal(model.pos_embed, before)


# ------------------------------------------------------------- sizes and errors


def test_presets_set_depth_width_and_heads():
    assert DIT_PRESETS == {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16)}
    for name, (depth, hidden, heads) in DIT_PRESETS.items():
        with torch.device("meta"):
            model = build_model(config(64, patch_size=4, dit_size=name, **TINY))
        assert len(model.blocks) == depth and model.hidden_size == hidden
        assert model.blocks[0].attn.num_heads == heads


@pytest.mark.parametrize("overrides, keys", [
    (dict(img_size=30), ["model.img_size", "model.patch_size"]),
    (dict(img_size=32, patch_size=64), ["model.img_size", "model.patch_size"]),
    (dict(hidden_size=190), ["model.hidden_size", "model.num_heads"]),
    (dict(hidden_size=194, num_heads=2), ["model.hidden_size", "divisible by 4"]),
])
def test_bad_config_raises_one_line_config_error_naming_the_key(overrides, keys):
    with pytest.raises(ConfigError) as err:
        build_model(config(**overrides))
    message = str(err.value)
    assert all(key in message for key in keys), message
    assert "\n" not in message and ": " in message


def test_unusable_preset_names_the_preset(monkeypatch):
    monkeypatch.setitem(DIT_PRESETS, "S", (12, 384, 5))
    with pytest.raises(ConfigError, match=r"^model\.dit_size = 'S': the preset's hidden_size "
                                          r"384 is not divisible by its num_heads 5: "):
        build_model(config(dit_size="S"))


# ------------------------------------------------------------- training


def test_dropout_acts_in_training_mode_only():
    torch.manual_seed(0)
    model = randomise_zero_inits(build_model(config(16, patch_size=4, dropout=0.3,
                                                    attn_dropout=0.3, **TINY)))
    x, t = inputs(2, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t), model(x, t))
        assert not torch.equal(model.train()(x, t), model(x, t))


def test_tiny_dit_overfits_one_batch():
    """Fixed x_t, t and a fixed random target: the loss must fall > 10× within 300 steps."""
    torch.manual_seed(0)
    losses = tiny.overfit_losses(build_model(config(16, patch_size=4, depth=2, hidden_size=64, num_heads=4)), lr=1e-3)
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_dit_memorises_two_images_and_ddim_reproduces_them():
    """The whole DiT path (patchify, positions, adaLN, un-patchify, v-prediction, DDIM):
    trained on two 8×8 images, its samples must land on those images, both of them.

    A wrong patch order or a broken conditioning path cannot do this: the denoiser of a
    two-point data set has to put every pixel back where it was. Samples from noise that
    falls between the two modes may end between them, so the bound is on the median and
    on the best sample per image; MSE 0.01 is a PSNR of 26 dB on the [−1, 1] scale.
    """
    from ddpm.diffusion import (NoiseSchedule, ddim_sample, initial_noise, sample_generators,
                                training_loss)
    from ddpm.training.system import lr_factor

    torch.manual_seed(0)
    net = build_model(config(8, patch_size=2, depth=2, hidden_size=64, num_heads=4))
    schedule = NoiseSchedule.from_name("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1                 # [2, 3, 8, 8]
    steps = 600
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, warmup_steps=20, max_steps=steps, schedule="cosine"))
    for _ in range(steps):
        x0 = images[torch.randint(0, 2, (16,), generator=g)]
        loss = training_loss(net, schedule, x0, "v", g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    generators = sample_generators(0, range(8))
    noise = initial_noise(generators, (3, 8, 8), "cpu")
    samples = ddim_sample(net.eval(), schedule, noise, generators, steps=20,
                          prediction="v").images
    mse = (samples[:, None] - images[None]).pow(2).flatten(2).mean(2)  # [8 samples, 2 images]
    assert mse.min(1).values.median() < 0.01, mse
    assert (mse.min(0).values < 0.01).all(), mse                       # each image reproduced


# ------------------------------------------------------------- registry


def test_registry_builds_dit_from_a_real_callable():
    assert ARCHITECTURES["dit"] == DiT.from_config
    assert isinstance(build_model(config(16, patch_size=4, **TINY)), DiT)
