"""UNet++ for diffusion: nested, dense skip pathways between encoder and decoder.

Zhou et al. 2018, "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation" (DLMIA), §2, Eq. 1. Node X^{i,j} sits at level i (resolution
img_size / 2^i) and column j. Column 0 is the encoder backbone; every later node
fuses all earlier nodes of its own level with the up-sampled node one level
below and one column to the left:

    X^{i,0} = H(D(X^{i-1,0}))
    X^{i,j} = H([X^{i,0}, …, X^{i,j-1}, U(X^{i+1,j-1})])      for j ≥ 1

with D a stride-2 down-sampling, U a ×2 up-sampling and [·] channel
concatenation. The prediction is read from X^{0,L}, the end of the longest
(top) pathway. Deep supervision (the paper's heads on X^{0,1..L}) is not used.

Adapted to diffusion as in DDPM (Ho et al. 2020, Appendix B): every node H is a
`ResidualStack` of time-conditioned ResidualBlocks (optionally ending in
self-attention), the image enters through a conv3×3 stem and leaves through
GroupNorm → SiLU → conv3×3, and the timestep enters every block through one
shared TimeEmbedding (sinusoidal → MLP, 4·channels[stem] wide).

Which `model.*` keys apply, with D = len(down_attn) and L = D levels below the
top (so levels 0..D, and (D+1)(D+2)/2 nodes):

- `channels`, `down_channel_indices`, `down_attn`: level i < D is down layer i.
  Its width is channels[down_channel_indices[i][1]] — every node of the level,
  X^{i,0..D-i}, has that many output channels — and every node of the level
  ends in self-attention if down_attn[i]. The backbone node X^{i,0} maps
  channels[in] → channels[out] exactly like the UNet's down layer i, and the
  stem produces channels[down_channel_indices[0][0]].
- `mid_channel_indices`, `mid_attn`: the bottom level D (img_size / 2^D) is the
  UNet's middle: X^{D,0} is the chain of mid layers (one ResidualBlock each,
  attention if mid_attn[k]) applied to the down-sampled X^{D-1,0}, and its
  width is channels[mid_channel_indices[-1][1]] (that of the last down layer
  when there are no mid layers). Level D has only the backbone node.
- `up_attn`, `up_channel_indices`: unused, and not checked. The nested decoder
  is fixed by the levels: node X^{i,j} (j ≥ 1) maps j·c_i + c_{i+1} channels to
  c_i, where c_i is level i's width.
- `img_size` must be divisible by 2^D; `num_heads` must divide the width of
  every level with attention; `norm_groups` must divide every width used;
  `num_res_blocks`, `dropout`, `attn_dropout`, `dropout_kind` as in the UNet.

Depth of the nodes (the parameter-count choice): the backbone X^{i,0} has
`num_res_blocks` ResidualBlocks, as the UNet's down layers; every nested node
X^{i,j≥1} has ONE ResidualBlock. There are D(D+1)/2 nested nodes against the
UNet's D up layers, so giving each of them `num_res_blocks` blocks would make
the decoder roughly (D+1)/2 times the UNet's; with one block each, the default
layout and log #9's have 1.2–1.3× the UNet's parameters (num_res_blocks 2 or 1;
see scripts/arch_table.py). The FLOPs grow faster (4× for log #9 at 64×64):
the nested nodes at level 0 run at full resolution. The wide concatenated input is absorbed by the
block's first conv and its 1×1 skip projection.

The layout is checked by `ddpm.models.unet.check_layout` on the down and mid
keys; each mistake raises a one-line `ConfigError` naming the key and the fix.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ddpm.models.config import ModelConfig
from ddpm.models.unet import (DownLevel, UpLevel, check_layout,
                             embedding_blocks_and_stem)

NESTED_NODE_BLOCKS = 1  # ResidualBlocks in each nested node X^{i,j≥1} (see module docstring)


def level_widths(channels: Sequence[int], down_channel_indices: Sequence[Sequence[int]],
                 mid_channel_indices: Sequence[Sequence[int]]) -> list[int]:
    """Output channels c_0..c_D of the nodes at each level (down layers, then the middle)."""
    widths = [channels[o] for _, o in down_channel_indices]
    return widths + [channels[(mid_channel_indices or down_channel_indices)[-1][1]]]


class UNetPP(nn.Module):
    """UNet++ (Zhou et al. 2018) of time-conditioned residual nodes.

    See the module docstring for the node grid and how the `model.*` keys map
    to levels. `forward(x [B,3,H,W], t int64 [B]) -> [B,3,H,W]` for any H, W
    divisible by 2^len(down_attn).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_layout(config, up_layers=False)   # the UNet's checks of the keys UNet++ reads
        self.img_size = config.data_shape[-1]
        channels, down_attn = config.channels, config.down_attn
        self.depth = len(down_attn)                          # L: levels 0..L
        widths = level_widths(channels, config.down_channel_indices, config.mid_channel_indices)
        self.time_embedding, blocks, self.stem = embedding_blocks_and_stem(config)
        stack = blocks.stack
        # Column 0: X^{i,0}, i < L, each followed by the halving that feeds X^{i+1,0}.
        self.backbone = nn.ModuleList(
            DownLevel(stack(channels[i], channels[o], config.num_res_blocks, attn), channels[o])
            for (i, o), attn in zip(config.down_channel_indices, down_attn))
        # X^{L,0}: the middle layers at the bottom level.
        self.mid = nn.ModuleList(stack(channels[i], channels[o], 1, attn)
                                 for (i, o), attn in zip(config.mid_channel_indices,
                                                         config.mid_attn))
        # nested[j-1][i] is X^{i,j}: up-sample X^{i+1,j-1}, concatenate X^{i,0..j-1} (Eq. 1).
        self.nested = nn.ModuleList(
            nn.ModuleList(
                UpLevel(widths[i + 1], stack(j * widths[i] + widths[i + 1], widths[i],
                                             NESTED_NODE_BLOCKS, down_attn[i]))
                for i in range(self.depth + 1 - j))
            for j in range(1, self.depth + 1))
        self.head = blocks.head(widths[0], config.data_shape[0])

    @classmethod
    def from_config(cls, config: ModelConfig) -> "UNetPP":
        """Build from the `model` section of `params.yaml` (the up_* keys are unused)."""
        return cls(config)

    def encode(self, x: torch.Tensor, temb: torch.Tensor) -> list[list[torch.Tensor]]:
        """Column 0 of the grid: nodes[i] = [X^{i,0}] for levels i = 0..L."""
        h = self.stem(x)                                     # [B, base, H, W]
        nodes = []
        for level in self.backbone:
            node, h = level(h, temb)                         # h halves each level
            nodes.append([node])
        for stack in self.mid:
            h = stack(h, temb)                               # [B, c_L, H/2^L, W/2^L]
        nodes.append([h])
        return nodes

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] noisy images, t: int64 [B] timesteps -> [B, 3, H, W]."""
        temb = self.time_embedding(t)                        # [B, 4·base]
        nodes = self.encode(x, temb)                         # nodes[i][j] is X^{i,j}
        for j, column in enumerate(self.nested, start=1):
            for i, node in enumerate(column):
                same_level = torch.cat(nodes[i], dim=1)      # [B, j·c_i, H/2^i, W/2^i]
                nodes[i].append(node(nodes[i + 1][j - 1], same_level, temb))  # [B, c_i, ·, ·]
        return self.head(nodes[0][-1])                       # X^{0,L} -> [B, 3, H, W]
