"""Print a markdown table of UNet parameter counts for the research log's layouts.

Usage: python scripts/param_counts.py

The log gives the full layout only for entry #9; entries #4 and #5 are taken to
use the same index lists (96 = 3·32 is divisible by 2^4, so they fit), #4 with
assumed channels, since the log does not list them. Models are built on the
meta device: no memory is allocated and no weights are initialised.
"""

from __future__ import annotations

import torch

from ddpm.models.config import ModelConfig
from ddpm.models.log_layouts import (LOG9_LISTS as LOG9_LISTS_EXACT, LOG_RES_BLOCKS,
                                     SMALL_CHANNELS, WIDE_CHANNELS)
from ddpm.models.registry import build_model

LOG9_LISTS = dict(LOG9_LISTS_EXACT, num_res_blocks=LOG_RES_BLOCKS)

LAYOUTS: list[tuple[str, ModelConfig]] = [
    ("#4 (channels assumed)", ModelConfig(img_size=96, channels=SMALL_CHANNELS,
                                          **LOG9_LISTS)),
    ("#5", ModelConfig(img_size=96, channels=WIDE_CHANNELS, **LOG9_LISTS)),
    ("#9", ModelConfig(img_size=256, channels=WIDE_CHANNELS, **LOG9_LISTS)),
    ("default (ModelConfig())", ModelConfig()),
]


def attention_sizes(config: ModelConfig) -> str:
    """Side lengths at which the down / mid / up layers attend."""
    r, d = config.img_size, len(config.down_attn)
    down = [r >> i for i, a in enumerate(config.down_attn) if a]
    mid = [r >> d for a in config.mid_attn if a]
    up = [r >> (d - 1 - j) for j, a in enumerate(config.up_attn) if a]
    return " / ".join(",".join(map(str, s)) or "–" for s in (down, mid, up))


def count_parameters(config: ModelConfig) -> int:
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    print("| layout | img_size | channels | res blocks per layer | attention at "
          "(down / mid / up) | parameters |")
    print("|---|---:|---|---:|---|---:|")
    for name, config in LAYOUTS:
        n = count_parameters(config)
        print(f"| {name} | {config.img_size} | {config.channels} | {config.num_res_blocks} | "
              f"{attention_sizes(config)} | {n:,} ({n / 1e6:.1f} M) |")
    defaults = ModelConfig()
    print(f"\nAll rows: num_heads = {defaults.num_heads}, norm_groups = {defaults.norm_groups}.")


if __name__ == "__main__":
    main()
