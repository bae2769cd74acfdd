"""The GPU check's peer: diffusers' `UNet2DModel` laid out like a ddpm UNet config.

Benchmark-only (scripts/gpu_bench.py); the library never imports it. Level for
level it takes our channels, residual blocks per level and attention
resolutions:

- diffusers level i < D (D = our down layers) is our down layer i: same
  resolution r/2^i, its out channels, AttnDownBlock2D where down_attn[i];
- diffusers needs one more level for its middle (its last down block does not
  halve): level D at r/2^D with our mid layers' channels, a plain DownBlock2D,
  then UNetMidBlock2D, with attention when any of our mid layers has it;
- up blocks mirror the levels; the block at our up layer j's resolution
  (r/2^(D−1−j)) is an AttnUpBlock2D where up_attn[j].

Differences that remain (so the FLOPs per image differ and are measured per
row): diffusers' attention blocks put attention after every residual block of a
level (ours once, at its end); its up blocks have layers_per_block + 1 residual
blocks (one per skip); its middle has two residual blocks around the attention
plus the extra level-D blocks, where ours has len(mid_attn) blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from ddpm.models.config import ModelConfig


def peer_layout(config: ModelConfig) -> dict:
    """`UNet2DModel` keyword arguments for a ddpm UNet `config` (see the module docstring)."""
    if config.arch != "unet" or not config.mid_channel_indices:
        raise ValueError("the diffusers peer mirrors a UNet with mid layers "
                         f"(model.arch = {config.arch!r}, "
                         f"{len(config.mid_channel_indices)} mid layers)")
    channels, depth = config.channels, len(config.down_attn)
    levels = [channels[o] for _, o in config.down_channel_indices]
    levels.append(channels[config.mid_channel_indices[0][1]])      # level D: the middle
    up_attn = {depth - 1 - j: attn for j, attn in enumerate(config.up_attn)}  # level → attn
    attended = [c for c, a in zip(levels, [*config.down_attn, False]) if a] or levels[-1:]
    return dict(
        sample_size=config.img_size, in_channels=3, out_channels=3,
        block_out_channels=tuple(levels), layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D"
                               for a in [*config.down_attn, False]),
        up_block_types=tuple("AttnUpBlock2D" if up_attn.get(level) else "UpBlock2D"
                             for level in range(depth, -1, -1)),
        add_attention=any(config.mid_attn),
        attention_head_dim=attended[0] // config.num_heads,  # our heads at the first attention
        norm_num_groups=config.norm_groups,
        resnet_time_scale_shift=("scale_shift" if config.time_injection == "scale_shift"
                                 else "default"),
        dropout=config.dropout)


class DiffusersUNet(nn.Module):
    """`UNet2DModel` with this project's call: `net(x [B,3,H,W], t int64 [B]) -> [B,3,H,W]`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(**peer_layout(config))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample
