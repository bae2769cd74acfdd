"""Diffusion Transformer (DiT) in pixel space, unconditional.

Peebles & Xie 2022, "Scalable Diffusion Models with Transformers" (ICCV 2023),
§3.2, Fig. 3, following their reference `models.py`:

- Patchify (§3.2): a conv with kernel = stride = p turns the image into
  T = (I/p)² tokens of width d; fixed (not learned) 2-D sine-cosine position
  embeddings (the ViT/MAE frequency encoding) are added.
- Timestep embedding: sinusoidal features → Linear → SiLU → Linear to d.
- N DiT blocks with adaLN-Zero (§3.2 "Transformer block design"): from the
  timestep embedding c, a zero-initialised Linear regresses a shift β, scale γ
  and gate α for the attention and for the MLP,

      x ← x + α₁ · Attn((1 + γ₁) · LN(x) + β₁)
      x ← x + α₂ · MLP((1 + γ₂) · LN(x) + β₂),

  so α = 0 at initialisation and every block starts as the identity.
- Final layer: adaLN-modulated LayerNorm, then a zero-initialised Linear to
  p·p·3 per token, rearranged back into the image ("un-patchify").

The original works in the latent space of a VAE with class labels and learned
Σ; here the tokens are RGB pixel patches, there is no class embedding and the
output has 3 channels (ε, v or x0 — the network does not care).

Sizes (`model.*` keys): `dit_size` S, B or L takes (depth, hidden_size,
num_heads) from `DIT_PRESETS` (Table 1 of the paper) and ignores those three
keys; `custom` reads `model.depth`, `model.hidden_size` and `model.num_heads`.
`patch_size` is p; `dropout` acts in the MLPs and `attn_dropout` on the
attention weights, in training mode only. Shapes: B batch, T tokens, d width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.config import ModelConfig
from ddpm.models.layers import sinusoidal_embedding

# (depth, hidden_size, num_heads) of Peebles & Xie 2022, Table 1.
DIT_PRESETS: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
}
FREQUENCY_DIM = 256  # sinusoidal timestep features fed to the MLP (DiT's default)
MLP_RATIO = 4


# ------------------------------------------------------------ config checks


def dit_dims(config: ModelConfig) -> tuple[int, int, int]:
    """(depth, hidden_size, num_heads) for `config`, checked; one-line ConfigError if unusable."""
    if config.dit_size != "custom":
        dims = DIT_PRESETS[config.dit_size]
        problem = _width_problem(dims[1], dims[2])
        if problem:  # a preset edited into an unusable one
            raise ConfigError(f"model.dit_size = {config.dit_size!r}: the preset's hidden_size "
                              f"{problem}: choose another model.dit_size, or model.dit_size: "
                              "custom with model.depth, model.hidden_size, model.num_heads")
        return dims
    depth, hidden, heads = config.depth, config.hidden_size, config.num_heads
    if hidden % heads:
        raise ConfigError(f"model.hidden_size = {hidden} is not divisible by model.num_heads = "
                          f"{heads}: use a hidden_size that is a multiple of {heads} (such as "
                          f"{_near(hidden, heads)}), or a num_heads that divides {hidden}")
    if hidden % 4:
        raise ConfigError(f"model.hidden_size = {hidden} is not divisible by 4 (the 2-D sin-cos "
                          "position embedding gives sine and cosine halves to rows and "
                          f"columns): use a multiple of 4 such as {_near(hidden, 4)}")
    return depth, hidden, heads


def _width_problem(hidden: int, heads: int) -> str | None:
    """Why a width cannot be used: it must split into heads, and into 4 sin/cos quarters."""
    if hidden % heads:
        return f"{hidden} is not divisible by its num_heads {heads}"
    if hidden % 4:
        return f"{hidden} is not divisible by 4 (2-D sin-cos position embedding)"
    return None


def _near(value: int, factor: int) -> str:
    """The multiples of `factor` either side of `value`, as text."""
    lower = value // factor * factor
    return " or ".join(str(s) for s in (lower, lower + factor) if s > 0)


def check_patching(img_size: int, patch_size: int, key: str = "model.img_size") -> None:
    if img_size % patch_size:
        raise ConfigError(
            f"{key} = {img_size} is not divisible by model.patch_size = {patch_size}: "
            f"use an img_size that is a multiple of {patch_size} (such as "
            f"{_near(img_size, patch_size)}), or a patch_size that divides {img_size}")


# ------------------------------------------------------------ embeddings


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Transformer frequency encoding of positions (Vaswani et al. 2017, §3.5).

    pos: [T] -> [T, dim], sines then cosines, frequencies 1 … 10000^(-(dim/2-1)/(dim/2)),
    as MAE/DiT's `get_1d_sincos_pos_embed_from_grid` (float64 there too).
    """
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.to(torch.float64)[:, None] * omega[None, :]   # [T, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D position embedding of a grid_h × grid_w token grid (DiT, §3.2).

    Half the features encode the column, half the row (DiT's `get_2d_sincos_pos_embed`
    puts the column first). Tokens are in row-major order, as the patchify conv
    flattens them. -> [grid_h·grid_w, dim] float32.
    """
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())],
                    dim=1)
    return emb.float()


class TimestepEmbedder(nn.Module):
    """t → sinusoidal features (FREQUENCY_DIM) → Linear → SiLU → Linear to d (DiT)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: int64 [B] -> c: [B, d]."""
        return self.mlp(sinusoidal_embedding(t, FREQUENCY_DIM))


# ------------------------------------------------------------ blocks


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive LayerNorm's affine step, (1 + γ)·x + β; 1 + γ so γ = 0 leaves x as is."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]   # [B, T, d] with [B, d] per sample


class Attention(nn.Module):
    """Multi-head self-attention over the tokens (Vaswani et al. 2017, Eq. 1)."""

    def __init__(self, hidden: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, d] -> [B, T, d]."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)       # each [B, heads, T, d/heads]
        a = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(a.transpose(1, 2).reshape(b, n, d))  # heads back into width


class Mlp(nn.Sequential):
    """Linear → GELU (tanh approximation, as DiT) → Linear, 4× wide in between."""

    def __init__(self, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(hidden, MLP_RATIO * hidden), nn.GELU(approximate="tanh"),
                         nn.Dropout(dropout), nn.Linear(MLP_RATIO * hidden, hidden),
                         nn.Dropout(dropout))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT §3.2, Fig. 3 right)."""

    def __init__(self, hidden: int, num_heads: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        # No affine parameters: the scale and shift come from the timestep instead.
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads, attn_dropout)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: [B, T, d] tokens, c: [B, d] conditioning -> [B, T, d]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then Linear to the p·p·3 values of each patch."""

    def __init__(self, hidden: int, patch_size: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch_size * patch_size * channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: [B, T, d], c: [B, d] -> [B, T, p·p·3]."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ------------------------------------------------------------ network


class DiT(nn.Module):
    """Unconditional pixel-space DiT (Peebles & Xie 2022).

    `forward(x [B,3,H,W], t int64 [B]) -> [B,3,H,W]` for H, W divisible by
    `patch_size`; the position embedding is precomputed for `img_size` and
    recomputed (it is a fixed function) for other sizes.
    """

    def __init__(self, *, img_size: int, patch_size: int, depth: int, hidden_size: int,
                 num_heads: int, dropout: float = 0.0, attn_dropout: float = 0.0,
                 channels: int = 3):
        super().__init__()
        check_patching(img_size, patch_size)
        self.img_size, self.channels = img_size, channels
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.patch_embed = nn.Conv2d(channels, hidden_size, patch_size, stride=patch_size)
        grid = img_size // patch_size
        # A buffer, not a parameter: fixed as in the paper; not saved (it is a function of
        # the config), so checkpoints stay independent of how it is computed.
        self.register_buffer("pos_embed", sincos_2d(hidden_size, grid, grid)[None],
                             persistent=False)               # [1, T, d]
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, dropout, attn_dropout)
                                    for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, channels)
        self.initialize_weights()

    @classmethod
    def from_config(cls, config: ModelConfig) -> "DiT":
        """Build from the `model` section of `params.yaml` (a preset or the custom keys)."""
        depth, hidden, heads = dit_dims(config)
        # In latent space the patches are of latents: patch_size counts latent pixels.
        channels, _, side = config.data_shape
        if config.space == "latent":  # the message names what is too small
            check_patching(side, config.patch_size,
                           "the latent side model.img_size / model.latent_factor")
        return cls(img_size=side, patch_size=config.patch_size, depth=depth,
                   hidden_size=hidden, num_heads=heads, dropout=config.dropout,
                   attn_dropout=config.attn_dropout, channels=channels)

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier everywhere, zeros where adaLN-Zero needs them."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch conv is a Linear on flattened patches; initialise it like one.
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: gates (and shifts, scales) start at 0, so each block is the identity
        # and the final layer outputs 0.
        for modulation in [b.adaLN_modulation for b in self.blocks] + [
                self.final_layer.adaLN_modulation]:
            nn.init.zeros_(modulation[-1].weight)
            nn.init.zeros_(modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """[1, grid_h·grid_w, d]: the stored table, or a fresh one for another image size."""
        if grid_h == grid_w == self.img_size // self.patch_size:
            return self.pos_embed
        return sincos_2d(self.hidden_size, grid_h, grid_w)[None].to(self.pos_embed)

    def unpatchify(self, x: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """x: [B, T, p·p·3] -> [B, 3, grid_h·p, grid_w·p] (DiT's channel-last patch order)."""
        p = self.patch_size
        x = x.reshape(x.shape[0], grid_h, grid_w, p, p, self.channels)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], self.channels, grid_h * p, grid_w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] noisy images, t: int64 [B] timesteps -> [B, 3, H, W]."""
        h = self.patch_embed(x)                              # [B, d, H/p, W/p]
        grid_h, grid_w = h.shape[-2:]
        h = h.flatten(2).transpose(1, 2)                     # [B, T, d], T = (H/p)·(W/p)
        h = h + self.position_embedding(grid_h, grid_w)
        c = self.t_embedder(t)                               # [B, d]
        for block in self.blocks:
            h = block(h, c)
        h = self.final_layer(h, c)                           # [B, T, p·p·3]
        return self.unpatchify(h, grid_h, grid_w)            # [B, 3, H, W]
