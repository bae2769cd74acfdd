"""Building blocks of the denoising networks (UNet now, UNet++ later).

Each block follows the PixelCNN++/Wide-ResNet style network of Ho et al. 2020,
"Denoising Diffusion Probabilistic Models" (DDPM), Appendix B: GroupNorm,
SiLU (swish) activations, the timestep injected into every residual block
through a sinusoidal embedding, and self-attention at low resolutions
(Vaswani et al. 2017, "Attention Is All You Need").

Shapes: B batch, C channels, H×W spatial size, T = 4·base channels (time
embedding width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT_KINDS: dict[str, type[nn.Module]] = {
    "element": nn.Dropout,    # zeroes single activations
    "channel": nn.Dropout2d,  # zeroes whole feature maps (the log's entry #3)
}
TIME_INJECTIONS = ("add", "scale_shift")


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias, so the residual branch it ends starts as 0.

    DDPM (Ho et al. 2020, its `nn.conv2d(..., init_scale=0.)`) and improved-diffusion
    (`zero_module`) do this for the last conv of every residual and attention branch
    and for the output conv: each block starts as the identity and the network's
    first prediction is 0 instead of large random values.
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sin/cos features of the timestep, as in DDPM's `get_timestep_embedding`.

    The transformer position encoding of Vaswani et al. 2017 §3.5 applied to the
    diffusion step: `dim/2` geometrically spaced frequencies from 1 down to
    1/max_period; the first half of the features are sines, the second cosines
    (DDPM's order). An odd `dim` gets one zero feature at the end.

    t: [B] (any numeric dtype) -> [B, dim] float32.
    """
    half = dim // 2
    # DDPM divides by (half - 1) so the last frequency is exactly 1/max_period.
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)          # [half]
    angles = t.to(torch.float32)[:, None] * freqs[None, :]       # [B, half]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # [B, 2·half]
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Timestep → sinusoidal features → Linear → SiLU → Linear (DDPM, `temb`).

    The embedding is `4·base_ch` wide, as in DDPM where base 128 gives 512.
    """

    def __init__(self, base_ch: int):
        super().__init__()
        self.base_ch = base_ch
        self.dim = 4 * base_ch
        self.mlp = nn.Sequential(
            nn.Linear(base_ch, self.dim),
            nn.SiLU(),
            nn.Linear(self.dim, self.dim),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: int64 [B] -> [B, 4·base_ch]."""
        return self.mlp(sinusoidal_embedding(t, self.base_ch))


class ResidualBlock(nn.Module):
    """DDPM residual block conditioned on the time embedding.

    GroupNorm → SiLU → conv3×3 → time injection → SiLU → dropout → conv3×3, added
    to the input (through a 1×1 conv when the channel count changes).

    `time_injection`: "add" is DDPM's, h + Linear(temb) before the second
    GroupNorm; "scale_shift" is improved-diffusion's scale-shift norm (Nichol &
    Dhariwal 2021, §B; Dhariwal & Nichol 2021 "AdaGN"), GroupNorm(h)·(1 + s) + b
    with (s, b) = Linear(temb), so the timestep also rescales every channel.
    `zero_init` zeroes conv2 so the block starts as its skip path.
    `dropout_kind` "element" drops single activations (DDPM's choice); "channel"
    drops whole feature maps (`nn.Dropout2d`), which the log's entry #3 found harmful.
    """

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, groups: int,
                 dropout: float = 0.0, dropout_kind: str = "element",
                 time_injection: str = "add", zero_init: bool = False):
        super().__init__()
        if dropout_kind not in DROPOUT_KINDS:
            raise ValueError(f"dropout_kind = {dropout_kind!r}: must be one of "
                             + ", ".join(repr(k) for k in DROPOUT_KINDS))
        if time_injection not in TIME_INJECTIONS:
            raise ValueError(f"time_injection = {time_injection!r}: must be one of "
                             + ", ".join(repr(k) for k in TIME_INJECTIONS))
        self.scale_shift = time_injection == "scale_shift"
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Sequential(
            nn.SiLU(), nn.Linear(time_dim, 2 * out_ch if self.scale_shift else out_ch))
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = DROPOUT_KINDS[dropout_kind](dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if zero_init:
            zero_module(self.conv2)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: [B, in_ch, H, W], temb: [B, time_dim] -> [B, out_ch, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))                 # [B, out_ch, H, W]
        t = self.time_proj(temb)[:, :, None, None]           # same for every pixel
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)                 # each [B, out_ch, 1, 1]
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W pixels, with a residual connection.

    Scaled dot-product attention of Vaswani et al. 2017 (Eq. 1, §3.2.2), used by
    DDPM at the 16×16 resolution. Queries, keys and values come from one 1×1
    conv of the group-normalised input; `dropout` acts on the attention weights
    in training mode only.
    """

    def __init__(self, ch: int, num_heads: int, groups: int, dropout: float = 0.0,
                 zero_init: bool = False):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"{ch} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        if zero_init:  # the block starts as the identity
            zero_module(self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).unbind(0)       # each [B, heads, H·W, C/heads]
        a = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0)
        a = a.transpose(-1, -2).reshape(b, c, h, w)          # heads back into channels
        return x + self.proj(a)


class ResidualStack(nn.Module):
    """`num_blocks` ResidualBlocks (first in_ch→out_ch, rest out_ch→out_ch), then
    an AttentionBlock if `attn`: one resolution level of a DDPM UNet."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, time_dim: int, *,
                 attn: bool, num_heads: int, groups: int, dropout: float = 0.0,
                 dropout_kind: str = "element", attn_dropout: float = 0.0,
                 time_injection: str = "add", zero_init: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualBlock(in_ch if i == 0 else out_ch, out_ch, time_dim, groups,
                          dropout, dropout_kind, time_injection, zero_init)
            for i in range(num_blocks))
        self.attn = (AttentionBlock(out_ch, num_heads, groups, attn_dropout, zero_init)
                     if attn else None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: [B, in_ch, H, W] -> [B, out_ch, H, W]."""
        for block in self.blocks:
            x = block(x, temb)
        return self.attn(x) if self.attn is not None else x


@dataclass(frozen=True)
class BlockOptions:
    """What every ResidualStack and the output head of one network share (`model.*`)."""

    time_dim: int
    num_heads: int
    groups: int
    dropout: float = 0.0
    dropout_kind: str = "element"
    attn_dropout: float = 0.0
    time_injection: str = "add"
    zero_init: bool = False

    def stack(self, in_ch: int, out_ch: int, num_blocks: int, attn: bool) -> ResidualStack:
        return ResidualStack(in_ch, out_ch, num_blocks, self.time_dim, attn=attn,
                             num_heads=self.num_heads, groups=self.groups, dropout=self.dropout,
                             dropout_kind=self.dropout_kind, attn_dropout=self.attn_dropout,
                             time_injection=self.time_injection, zero_init=self.zero_init)

    def head(self, ch: int, out_ch: int) -> nn.Sequential:
        """GroupNorm → SiLU → conv3×3 to the output; the conv zeroed with `zero_init`
        so the first prediction is 0 (the mean of ε, and of v and x0 on centred data)."""
        conv = nn.Conv2d(ch, out_ch, 3, padding=1)
        return nn.Sequential(nn.GroupNorm(self.groups, ch), nn.SiLU(),
                             zero_module(conv) if self.zero_init else conv)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 conv3×3 (DDPM's `downsample` with conv)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, H/2, W/2]."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour ×2, then conv3×3 (DDPM's `upsample`);
    the conv smooths the blocky copy instead of a transposed conv's checkerboard."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, C, 2H, 2W]."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
