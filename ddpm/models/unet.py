"""The DDPM UNet (Ho et al. 2020, Appendix B), laid out by index lists.

The layout uses the research log's names (`params.yaml`, section `model`):
`channels` is a list of channel counts, and each down, mid and up layer names
its input and output channel count by an `[in, out]` pair of indices into it,
with a flag saying whether it ends in self-attention. Log entry #9 reads

    channels:             [64, 128, 256, 512, 1024]
    down_attn:            [False, False, False, True]
    down_channel_indices: [[0,0], [0,1], [1,2], [2,3]]
    mid_attn:             [False, True, False]
    mid_channel_indices:  [[3,4], [4,4], [4,3]]
    up_attn:              [True, False, False]
    up_channel_indices:   [[3,2], [2,1], [1,0]]

With D = len(down_attn), M = len(mid_attn), U = len(up_attn) and r = img_size:

- Stem: conv3×3 from RGB to channels[down_channel_indices[0][0]].
- Down layer i = 0..D−1 works at r/2^i: `num_res_blocks` ResidualBlocks
  (the first changes channels[in] → channels[out]), then attention if
  down_attn[i]. Its output is kept as skip i; then a stride-2 conv halves the
  size. So there are D halvings and the mid layers work at r/2^D.
- Mid layer k: one ResidualBlock channels[in] → channels[out], then attention
  if mid_attn[k].
- Up layer j = 0..U−1 (U ≤ D): upsample ×2 (to r/2^(D−1−j)), concatenate skip
  D−1−j, `num_res_blocks` ResidualBlocks (the first takes channels[in] + the
  skip's channels to channels[out]), then attention if up_attn[j].
- Head: the D−U levels the up layers did not reach (skips D−1−U … 0) are
  closed by plain up steps — upsample, concatenate that skip, one
  ResidualBlock back to the current channel count (channels of the last up
  layer's out, or of the last mid layer's out when U = 0) — then GroupNorm →
  SiLU → conv3×3 to RGB.

For entry #9 at 256×256 this puts down attention at 32×32, mid attention at
16×16 and up attention at 32×32, as the log's comments say; its one head step
goes 128 → 256 with skip 0. Every ResidualBlock gets the time embedding
(sinusoidal → MLP, 4·channels[stem] wide); `dropout` (of kind `dropout_kind`)
acts in the ResidualBlocks and `attn_dropout` in the AttentionBlocks.

The layout is checked when the model is built: each mistake raises a one-line
`ConfigError` naming the `model.*` key and the fix.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.config import ModelConfig
from ddpm.models.layers import (BlockOptions, Downsample, ResidualStack, TimeEmbedding,
                                Upsample)



# ------------------------------------------------------------ layout checks


def _check_lengths(down_attn: Sequence[bool], down_idx: Sequence, mid_attn: Sequence[bool],
                   mid_idx: Sequence, up_attn: Sequence[bool], up_idx: Sequence) -> None:
    if not down_attn and not down_idx:
        raise ConfigError("model.down_attn and model.down_channel_indices are empty: "
                          "give at least one down layer")
    for part, attn, idx in (("down", down_attn, down_idx), ("mid", mid_attn, mid_idx),
                            ("up", up_attn, up_idx)):
        if len(idx) != len(attn):
            raise ConfigError(
                f"model.{part}_channel_indices has {len(idx)} entries but model.{part}_attn "
                f"has {len(attn)}: give one [in, out] pair per {part} layer")


def _check_indices(channels: Sequence[int], layers: list[tuple[str, int, Sequence[int]]]) -> None:
    for i, ch in enumerate(channels):
        if ch < 1:
            raise ConfigError(f"model.channels[{i}] = {ch}: channel counts must be >= 1")
    for key, i, pair in layers:
        if len(pair) != 2:
            raise ConfigError(f"{key}[{i}] = {list(pair)}: must be an [in, out] pair of "
                              "indices into model.channels")
        for index in pair:
            if not 0 <= index < len(channels):
                raise ConfigError(
                    f"{key}[{i}] = {list(pair)}: index {index} is out of range for "
                    f"model.channels ({len(channels)} entries): use 0..{len(channels) - 1}")


def _check_chain(layers: list[tuple[str, int, Sequence[int]]]) -> None:
    """Each layer must start at the channel count where the one before it ended."""
    for (prev_key, j, prev), (key, i, pair) in zip(layers, layers[1:]):
        if pair[0] != prev[1]:
            raise ConfigError(
                f"{key}[{i}] = {list(pair)} starts at channels index {pair[0]} but "
                f"{prev_key}[{j}] = {list(prev)} ends at index {prev[1]}: make each "
                "layer's in index equal the previous layer's out index")


def _check_resolution(img_size: int, num_down: int, num_up: int,
                      key: str = "model.img_size") -> None:
    if num_up > num_down:
        raise ConfigError(
            f"model.up_attn has {num_up} up layers but model.down_attn has only {num_down} "
            "down layers: use at most one up layer per down layer (each consumes one skip)")
    factor = 2 ** num_down
    if img_size % factor:
        lower = img_size // factor * factor
        sizes = " or ".join(str(s) for s in (lower, lower + factor) if s >= max(8, factor))
        max_down = (img_size & -img_size).bit_length() - 1  # halvings img_size allows
        raise ConfigError(
            f"{key} = {img_size} is not divisible by 2^{num_down} = {factor} "
            f"({num_down} down layers each halve it): use a multiple of {factor} such as "
            f"{sizes}, or at most {max_down} down layers")


def _check_divisors(channels: Sequence[int], layers: list[tuple[str, int, Sequence[int]]],
                    attn: list[bool], norm_groups: int, num_heads: int) -> None:
    used = sorted({index for _, _, pair in layers for index in pair})
    gcd = math.gcd(*(channels[i] for i in used))
    for i in used:
        if channels[i] % norm_groups:
            raise ConfigError(
                f"model.channels[{i}] = {channels[i]} is not divisible by model.norm_groups = "
                f"{norm_groups}: make every channel count a multiple of {norm_groups}, or set "
                f"model.norm_groups to a divisor of them all (e.g. {gcd})")
    for (key, i, pair), has_attn in zip(layers, attn):
        ch = channels[pair[1]]
        if has_attn and ch % num_heads:
            raise ConfigError(
                f"model.num_heads = {num_heads} does not divide the {ch} channels of the "
                f"attention at {key.replace('_channel_indices', '_attn')}[{i}]: use a "
                f"num_heads that divides {ch}, or move the attention")


def check_layout(config: ModelConfig, *, up_layers: bool = True) -> None:
    """Raise a one-line ConfigError for the first mistake in a UNet layout (`model.*`);
    without `up_layers` (UNet++) the up_* keys are not read."""
    img_size, channels = config.data_shape[-1], config.channels
    down_attn, down_channel_indices = config.down_attn, config.down_channel_indices
    mid_attn, mid_channel_indices = config.mid_attn, config.mid_channel_indices
    up_attn, up_channel_indices = ((config.up_attn, config.up_channel_indices) if up_layers
                                   else ([], []))
    norm_groups, num_heads = config.norm_groups, config.num_heads
    _check_lengths(down_attn, down_channel_indices, mid_attn, mid_channel_indices,
                   up_attn, up_channel_indices)
    layers = [(f"model.{part}_channel_indices", i, pair)
              for part, pairs in (("down", down_channel_indices), ("mid", mid_channel_indices),
                                  ("up", up_channel_indices))
              for i, pair in enumerate(pairs)]
    _check_indices(channels, layers)
    _check_chain(layers)
    side = ("the latent side model.img_size / model.latent_factor"
            if config.space == "latent" else "model.img_size")
    _check_resolution(img_size, len(down_attn), len(up_attn), side)
    _check_divisors(channels, layers, [*down_attn, *mid_attn, *up_attn], norm_groups, num_heads)


# ------------------------------------------------------------------ network


def embedding_blocks_and_stem(config: ModelConfig
                              ) -> tuple[TimeEmbedding, BlockOptions, nn.Conv2d]:
    """What UNet and UNet++ begin with: the time embedding, the options every block shares
    and the stem conv to the first down layer's width, built in this order (the order
    their weights are drawn in)."""
    base_ch = config.channels[config.down_channel_indices[0][0]]
    time_embedding = TimeEmbedding(base_ch)
    blocks = BlockOptions(time_embedding.dim, config.num_heads, config.norm_groups,
                          config.dropout, config.dropout_kind, config.attn_dropout,
                          config.time_injection, config.zero_init)
    return time_embedding, blocks, nn.Conv2d(config.data_shape[0], base_ch, 3, padding=1)


class DownLevel(nn.Module):
    """A ResidualStack whose output is a skip, then a stride-2 halving."""

    def __init__(self, stack: ResidualStack, out_ch: int):
        super().__init__()
        self.stack = stack
        self.downsample = Downsample(out_ch)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, in, H, W] -> (skip [B, out, H, W], next input [B, out, H/2, W/2])."""
        skip = self.stack(x, temb)
        return skip, self.downsample(skip)


class UpLevel(nn.Module):
    """Upsample ×2, concatenate the matching skip, then a ResidualStack."""

    def __init__(self, in_ch: int, stack: ResidualStack):
        super().__init__()
        self.upsample = Upsample(in_ch)
        self.stack = stack

    def forward(self, x: torch.Tensor, skip: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: [B, in, H, W], skip: [B, s, 2H, 2W] -> [B, out, 2H, 2W]."""
        x = torch.cat([self.upsample(x), skip], dim=1)       # [B, in + s, 2H, 2W]
        return self.stack(x, temb)


class UNet(nn.Module):
    """Noise-prediction UNet of DDPM (Ho et al. 2020) with a configurable layout.

    See the module docstring for how the index lists map to levels.
    `forward(x [B,3,H,W], t int64 [B]) -> [B,3,H,W]`, for any H, W divisible
    by 2^len(down_attn); `img_size` is checked against that when building.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_layout(config)
        self.img_size = config.data_shape[-1]
        self.time_embedding, blocks, self.stem = embedding_blocks_and_stem(config)
        channels, num_res_blocks = config.channels, config.num_res_blocks
        stack = blocks.stack
        self.down = nn.ModuleList()
        skip_chs = []
        for (i, o), attn in zip(config.down_channel_indices, config.down_attn):
            self.down.append(DownLevel(stack(channels[i], channels[o], num_res_blocks, attn),
                                       channels[o]))
            skip_chs.append(channels[o])
        self.mid = nn.ModuleList(stack(channels[i], channels[o], 1, attn)
                                 for (i, o), attn in zip(config.mid_channel_indices,
                                                         config.mid_attn))
        ch = channels[(config.mid_channel_indices or config.down_channel_indices)[-1][1]]
        self.up = nn.ModuleList()
        for (i, o), attn in zip(config.up_channel_indices, config.up_attn):
            self.up.append(UpLevel(ch, stack(channels[i] + skip_chs.pop(), channels[o],
                                             num_res_blocks, attn)))
            ch = channels[o]
        # Levels the up layers did not reach: one plain up step each, back to `ch`.
        self.head_up = nn.ModuleList(UpLevel(ch, stack(ch + skip_ch, ch, 1, False))
                                     for skip_ch in reversed(skip_chs))
        self.head = blocks.head(ch, config.data_shape[0])

    @classmethod
    def from_config(cls, config: ModelConfig) -> "UNet":
        """Build from the `model` section of `params.yaml`."""
        return cls(config)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] noisy images, t: int64 [B] timesteps -> [B, 3, H, W]."""
        temb = self.time_embedding(t)                        # [B, 4·base]
        h = self.stem(x)                                     # [B, base, H, W]
        skips = []
        for level in self.down:
            skip, h = level(h, temb)                         # h halves each level
            skips.append(skip)
        for stack in self.mid:
            h = stack(h, temb)                               # [B, ·, H/2^D, W/2^D]
        for level in [*self.up, *self.head_up]:
            h = level(h, skips.pop(), temb)                  # h doubles each level
        return self.head(h)                                  # [B, 3, H, W]
