"""Contract tests for UNet++: shapes, the nested node grid, layout errors, overfitting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tiny
from torch import nn

from ddpm.models.config import ModelConfig
from ddpm.models.log_layouts import LOG9 as LOG9_EXACT
from ddpm.models.registry import ARCHITECTURES, build_model
from ddpm.models.unetpp import UNetPP

# Research log entry #9's index lists (as in tests/test_unet.py).
LOG9 = dict(LOG9_EXACT)
# Channels divided by 8 (indices and flags unchanged) so CPU shape tests stay fast.
LOG9_SMALL = {**LOG9, "channels": [c // 8 for c in LOG9["channels"]]}
# The default layout with narrower channels.
DEFAULT_SMALL = dict(channels=[16, 32, 64], num_heads=2)


# Tiny models: one torch thread (tests/conftest.py says why).
pytestmark = pytest.mark.usefixtures("one_thread")


def config(img_size: int = 32, **overrides) -> ModelConfig:
    """The shipped config at `img_size`; zero_init off unless asked (the shipped zeroed
    output convs make an untrained network return 0 for every input)."""
    return dataclasses.replace(ModelConfig(arch="unetpp"), img_size=img_size, **{"zero_init": False, **overrides})


def forward(model: nn.Module, batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return model(x, t)


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("layout", [DEFAULT_SMALL, LOG9_SMALL], ids=["default-small", "log9/8"])
@pytest.mark.parametrize("size", [32, 64, 128])
def test_output_shape_equals_input_shape(layout, size):
    torch.manual_seed(0)
    model = build_model(config(size, **layout))
    batch = 2 if size <= 64 else 1
    with torch.no_grad():
        y = forward(model, batch, size)
    assert y.shape == (batch, 3, size, size)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert y.std() > 0.01  # the network computes something from its input


def test_default_config_builds_as_shipped():
    """`model.arch=unetpp` with every other key at its default must build and run."""
    model = build_model(ModelConfig(arch="unetpp"))
    assert isinstance(model, UNetPP)
    with torch.no_grad():
        y = forward(model, 1, 32)
    # As shipped, zero_init starts every branch and the head at 0 (tests/test_recipe.py).
    assert y.shape == (1, 3, 32, 32) and torch.count_nonzero(y) == 0


# ------------------------------------------------------------- node grid


def test_nested_nodes_fuse_all_earlier_nodes_of_their_level():
    """X^{i,j} takes j·c_i + c_{i+1} channels (Eq. 1) and gives c_i; one node per i + j ≤ D."""
    model = build_model(config(64, **LOG9_SMALL))
    widths = [8, 16, 32, 64, 64]  # down layers' out channels, then the last mid layer's
    depth = 4
    assert [len(column) for column in model.nested] == [4, 3, 2, 1]
    for j, column in enumerate(model.nested, start=1):
        for i, node in enumerate(column):
            first = node.stack.blocks[0]
            assert first.conv1.in_channels == j * widths[i] + widths[i + 1], (i, j)
            assert first.conv2.out_channels == widths[i]
            assert node.upsample.conv.in_channels == widths[i + 1]
    assert len(model.backbone) == depth and model.head[-1].in_channels == widths[0]


def test_top_pathway_is_dense_and_gives_the_prediction():
    """X^{0,2} receives [X^{0,0}, X^{0,1}] and U(X^{1,1}); the head reads X^{0,2} = X^{0,L}."""
    torch.manual_seed(0)
    model = build_model(config(32, **DEFAULT_SMALL))      # D = 2 levels below the top
    seen = {}

    def keep(name):
        return lambda m, args, out: seen.update({name: out})

    model.backbone[0].register_forward_hook(keep("X00"))  # out = (X^{0,0}, halved)
    model.nested[0][0].register_forward_hook(keep("X01"))
    model.nested[0][1].register_forward_hook(keep("X11"))
    model.nested[1][0].register_forward_hook(keep("X02"))
    model.nested[1][0].register_forward_pre_hook(lambda m, args: seen.update(X02_in=args))
    with torch.no_grad():
        y = forward(model, 1, 32)
    below, same_level, _ = seen["X02_in"]
    assert torch.equal(below, seen["X11"])
    assert torch.equal(same_level, torch.cat([seen["X00"][0], seen["X01"]], dim=1))
    assert torch.equal(model.head(seen["X02"]), y)


def test_attention_sits_at_every_node_of_a_level_that_asks_for_it():
    """Log #9 at 64: down_attn[3] puts attention in X^{3,0} and X^{3,1} (8×8); mid at 4×4."""
    model = build_model(config(64, **LOG9_SMALL))
    assert tiny.attention_sites(model, 64) == [("backbone", 8), ("mid", 4), ("nested", 8)]


def test_up_keys_are_unused():
    """The nested decoder is fixed by the levels: any up_* lists give the same network."""
    torch.manual_seed(0)
    a = build_model(config(32, **DEFAULT_SMALL))
    torch.manual_seed(0)
    b = build_model(config(32, **DEFAULT_SMALL, up_attn=[False] * 5,
                           up_channel_indices=[[9, 9]]))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


# -------------------------------------------------------- layout errors


@pytest.mark.parametrize("overrides, key", [*tiny.BAD_LAYOUTS_OF_BOTH_UNETS,
    (dict(mid_channel_indices=[[3, 4], [4, 9], [4, 3]]), "model.mid_channel_indices[1]"),
    (dict(down_channel_indices=[[0, 0], [0, 1], [2, 2], [2, 3]]),
     "model.down_channel_indices[2]"),
])
def test_bad_layout_raises_one_line_config_error_naming_the_key(overrides, key):
    tiny.assert_one_line_config_error(
        lambda: build_model(config(**{**LOG9, "img_size": 256, **overrides})), key)


# ------------------------------------------------------------- training


def test_tiny_unetpp_overfits_one_batch():
    """Fixed x_t, t and a fixed random target: the loss must fall > 10× within 300 steps."""
    torch.manual_seed(0)
    losses = tiny.overfit_losses(build_model(config(16, channels=[16, 32, 32], num_res_blocks=1, num_heads=2)), lr=2e-3)
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


# ------------------------------------------------------------- registry


def test_registry_builds_unetpp_from_a_real_callable():
    assert ARCHITECTURES["unetpp"] == UNetPP.from_config
    assert isinstance(build_model(config(32, **DEFAULT_SMALL)), UNetPP)
