"""Print a markdown table of parameter counts and forward FLOPs of the architectures at 64×64.

Usage: python scripts/arch_table.py

Rows: the DiT presets S, B, L (Peebles & Xie 2022, Table 1) with patch_size 2
and 4, the DiT's default custom size, and the UNet and UNet++ at the repository
defaults (`ModelConfig()`'s layout) and with research log #9's layout (with
num_res_blocks 2), all at img_size 64. FLOPs are for one forward pass of one
64×64 image, counted by `torch.utils.flop_counter.FlopCounterMode`, which counts
convolutions and matrix products (linear layers, attention scores and weighted
sums) with one multiply-add = 2 FLOPs; normalisation, activations and other
elementwise work are not counted. Models are built and run on the meta device:
only shapes are computed, so even DiT-L costs no memory or time. (There,
scaled-dot-product attention takes its math path, whose two batched matrix
products are counted; a fused CPU kernel, when picked, is not counted at all.)

Cross-check: DiT-S/4, B/4 and L/4 at 64×64 have the 256 tokens of the paper's
DiT-S/2, B/2 and L/2 on 32×32 latents, and their FLOPs here are exactly twice
the paper's Table 4 "Gflops" (6.06, 23.01, 80.71): the paper counts multiply-adds.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm.models.config import ModelConfig
from ddpm.models.dit import DIT_PRESETS
from ddpm.models.log_layouts import LOG9 as LOG9_EXACT, LOG_RES_BLOCKS
from ddpm.models.registry import build_model

IMG = 64
LOG9 = dict(LOG9_EXACT, num_res_blocks=LOG_RES_BLOCKS)


def rows() -> list[tuple[str, str, ModelConfig]]:
    """(model, layout, config) for every row of the table."""
    out = []
    for size, (depth, hidden, heads) in DIT_PRESETS.items():
        for p in (2, 4):
            out.append((f"DiT-{size}/{p}", f"depth {depth}, width {hidden}, {heads} heads, "
                        f"{(IMG // p) ** 2} tokens",
                        ModelConfig(arch="dit", img_size=IMG, dit_size=size, patch_size=p)))
    custom = ModelConfig(arch="dit", img_size=IMG)
    out.append((f"DiT custom/{custom.patch_size}",
                f"depth {custom.depth}, width {custom.hidden_size}, {custom.num_heads} heads, "
                f"{(IMG // custom.patch_size) ** 2} tokens (repo default)", custom))
    for arch, name in (("unet", "UNet"), ("unetpp", "UNet++")):
        default = ModelConfig(arch=arch, img_size=IMG)
        log9 = ModelConfig(arch=arch, img_size=IMG, **LOG9)
        for label, config in (("repo default", default), ("log #9", log9)):
            out.append((name, f"{label}, channels {config.channels}, "
                        f"num_res_blocks {config.num_res_blocks}", config))
    return out


def measure(config: ModelConfig) -> tuple[int, int]:
    """(parameters, forward FLOPs for one image) of the model `config` builds."""
    with torch.device("meta"):
        model = build_model(config)
        x = torch.empty(1, 3, config.img_size, config.img_size)
        t = torch.zeros(1, dtype=torch.int64)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


def main() -> None:
    print(f"| model | layout | parameters | GFLOPs / {IMG}×{IMG} image |")
    print("|---|---|---:|---:|")
    for name, layout, config in rows():
        params, flops = measure(config)
        print(f"| {name} | {layout} | {params / 1e6:.1f} M | {flops / 1e9:.2f} |")
    print(f"\nForward pass, batch 1, at {IMG}×{IMG}; one multiply-add = 2 FLOPs; convolutions "
          "and matrix products only (torch.utils.flop_counter.FlopCounterMode, meta device).")


if __name__ == "__main__":
    main()
