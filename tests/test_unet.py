"""Contract tests for the UNet, its building blocks and the model registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tiny
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.config import ModelConfig
from ddpm.models.layers import AttentionBlock, ResidualBlock, sinusoidal_embedding
from ddpm.models.log_layouts import LOG9 as LOG9_EXACT
from ddpm.models.registry import ARCHITECTURES, build_model
from ddpm.models.unet import UNet

# Research log entry #9, exactly as written there.
LOG9 = dict(LOG9_EXACT)  # research log entry #9, exactly as written there
# The same layout with every channel count divided by 8 (indices and attention
# flags unchanged), so shape tests at 256×256 stay fast on CPU. Entries #4/#5
# used these lists too (with [32..512] and [64..1024] channels).
LOG9_SMALL = {**LOG9, "channels": [c // 8 for c in LOG9["channels"]]}
DEFAULT = {}  # ModelConfig() as shipped


def config(img_size: int = 32, **overrides) -> ModelConfig:
    """The shipped config at `img_size`; zero_init off unless asked (the shipped zeroed
    output convs make an untrained network return 0 for every input)."""
    return dataclasses.replace(ModelConfig(), img_size=img_size, **{"zero_init": False, **overrides})


def forward(model: nn.Module, batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return model(x, t)


# ------------------------------------------------------------------ shapes


# The default layout has only two halvings, so at 256 its up attention would span
# 128×128 = 16K tokens (18 s on CPU); it is tested up to 96, the log layout at all.
@pytest.mark.parametrize("layout, size",
                         [(DEFAULT, s) for s in (32, 64, 96)]
                         + [(LOG9_SMALL, s) for s in (32, 64, 96, 128, 256)],
                         ids=lambda v: "default" if v is DEFAULT else
                         "log9-channels/8" if v is LOG9_SMALL else str(v))
def test_output_shape_equals_input_shape(layout, size):
    torch.manual_seed(0)
    model = build_model(config(size, **layout))
    with torch.no_grad():
        y = forward(model, 2 if size <= 64 else 1, size)
    assert y.shape == (2 if size <= 64 else 1, 3, size, size)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert y.std() > 0.01  # the network computes something from its input


@pytest.mark.parametrize("size", [64, 256])
def test_log9_layout_with_real_channels_builds_and_runs(size):
    torch.manual_seed(0)
    model = build_model(config(size, **LOG9))
    with torch.no_grad():
        assert forward(model, 1, size).shape == (1, 3, size, size)


def test_log9_attention_sits_at_the_resolutions_the_log_names():
    """Log #9 at 256: down attention at 32×32, mid at 16×16, up at 32×32."""
    model = build_model(config(256, **LOG9_SMALL))
    assert tiny.attention_sites(model, 256) == [("down", 32), ("mid", 16), ("up", 32)]
    assert len(model.head_up) == 1  # one plain up step 128 → 256 with skip 0


# -------------------------------------------------------- layout errors


@pytest.mark.parametrize("overrides, key", [*tiny.BAD_LAYOUTS_OF_BOTH_UNETS,
    (dict(up_attn=[True, False]), "model.up_channel_indices"),
    (dict(up_channel_indices=[[3, 2], [2, 1], [1, 7]]), "model.up_channel_indices[2]"),
    (dict(mid_channel_indices=[[3, 4], [4, -1], [4, 3]]), "model.mid_channel_indices[1]"),
    (dict(down_channel_indices=[[0, 0], [0, 1], [1, 2], [2]]), "model.down_channel_indices[3]"),
    (dict(down_channel_indices=[[0, 0], [0, 1], [2, 2], [2, 3]]), "model.down_channel_indices[2]"),
    (dict(mid_channel_indices=[[3, 4], [3, 4], [4, 3]]), "model.mid_channel_indices[1]"),
    (dict(up_channel_indices=[[4, 2], [2, 1], [1, 0]]), "model.up_channel_indices[0]"),
    (dict(up_channel_indices=[[3, 2], [1, 1], [1, 0]]), "model.up_channel_indices[1]"),
    (dict(up_attn=[False] * 5, up_channel_indices=[[3, 3]] * 4 + [[3, 0]]), "model.up_attn"),
])
def test_bad_layout_raises_one_line_config_error_naming_the_key(overrides, key):
    tiny.assert_one_line_config_error(
        lambda: build_model(config(**{**LOG9, "img_size": 256, **overrides})), key)


def test_img_size_error_suggests_sizes_that_work():
    with pytest.raises(ConfigError, match=r"such as 96 or 112, or at most 2 down layers"):
        build_model(config(**{**LOG9, "img_size": 100}))


# ------------------------------------------------------------- blocks


def test_sinusoidal_embedding_matches_ddpm_layout():
    emb = sinusoidal_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin 0, cos 0
    # first frequency is 1, last 1/10000 (DDPM divides by half − 1)
    torch.testing.assert_close(emb[1, 0], torch.sin(torch.tensor(7.0)))
    torch.testing.assert_close(emb[1, 3], torch.sin(torch.tensor(7e-4)))
    assert sinusoidal_embedding(torch.tensor([3]), 7).shape == (1, 7)


@pytest.mark.parametrize("kind", ["element", "channel"])
def test_residual_block_dropout_kind(kind):
    torch.manual_seed(0)
    block = ResidualBlock(8, 16, time_dim=32, groups=4, dropout=0.5, dropout_kind=kind).train()
    dropped = []
    block.dropout.register_forward_hook(lambda m, args, out: dropped.append(out))
    block(torch.randn(4, 8, 8, 8), torch.randn(4, 32))
    zero = dropped[0] == 0                                   # [B, C, H, W]
    whole = zero.all(dim=(2, 3)) | (~zero).all(dim=(2, 3))  # map all-zero or all-kept
    if kind == "channel":
        assert whole.all() and zero.all(dim=(2, 3)).any()
    else:
        assert not whole.all()


def test_dropout_acts_in_training_mode_only():
    torch.manual_seed(0)
    # zero_init off: zeroed convs after the dropout would hide it at initialisation.
    model = build_model(config(16, channels=[8, 16, 16], num_heads=2,
                               dropout=0.3, attn_dropout=0.3, zero_init=False))
    with torch.no_grad():
        model.eval()
        assert torch.equal(forward(model, 2, 16), forward(model, 2, 16))
        model.train()
        assert not torch.equal(forward(model, 2, 16), forward(model, 2, 16))


def test_attention_dropout_acts_in_training_mode_only():
    torch.manual_seed(0)
    block = AttentionBlock(8, num_heads=2, groups=4, dropout=0.5)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(block.eval()(x), block(x))
    assert not torch.equal(block.train()(x), block(x))


# ------------------------------------------------------------- training


def test_tiny_unet_overfits_one_batch():
    """Fixed x_t, t and a fixed random target: the loss must fall > 10× within 300 steps."""
    torch.manual_seed(0)
    losses = tiny.overfit_losses(build_model(config(16, channels=[16, 32, 32], num_res_blocks=1, num_heads=2)), lr=2e-3)
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


# ------------------------------------------------------------- registry


def test_registry_builds_unet_from_real_callables():
    assert all(callable(builder) for builder in ARCHITECTURES.values())
    assert isinstance(build_model(ModelConfig()), UNet)


def test_unknown_arch_is_a_config_error():
    allowed = r"allowed values are 'unet', 'unetpp', 'dit'"
    with pytest.raises(ConfigError, match=r"model\.arch = 'vit'.*" + allowed):
        build_model(dataclasses.replace(ModelConfig(), arch="vit"))
