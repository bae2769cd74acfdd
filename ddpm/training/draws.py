"""Each training image's randomness (t, flip, ε) as a function of (seed, epoch, position).

`position` is the image's place in epoch e's global permutation (`EpochOrder`), the
same on every rank whatever the device count. Drawing from a generator seeded by
(seed, epoch, position), rather than from a process-wide stream, means:

- every rank draws its own t and ε (the ranks hold different positions), where a
  shared seed gave N devices N images with one corruption pattern;
- N devices and one device accumulating N micro-batches see the same
  (x0, t, flip, ε) for every image;
- a resumed run draws exactly what the interrupted one would have, on any rank,
  with no RNG state saved in the checkpoint.

Dropout, which draws inside the network from torch's global generator, is made
resumable the same way: the global generator is re-seeded before each batch from
(seed, epoch, the batch's first position), which identifies the batch on its rank.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

# Distinguishes the dropout stream from the per-image streams of the same position.
DROPOUT_STREAM = 1


def stream_words(seed: int, epoch: int, position: int, stream: int = 0,
                 count: int = 1) -> list[int]:
    """`count` 64-bit words hashed from (seed, epoch, position, stream) by numpy's SeedSequence.

    SeedSequence mixes every word of its key, so neighbouring epochs and positions give
    unrelated words; its 4-word key never equals `sample_generators`' 2-word (seed, index).
    """
    if epoch < 0 or position < 0:
        raise ValueError(f"epoch {epoch} and position {position} must be >= 0")
    # SeedSequence wants non-negative entropy; fold negative seeds into 64 bits.
    key = [seed % 2**64, epoch, position, stream]
    return [int(w) for w in np.random.SeedSequence(key).generate_state(count, np.uint64)]


class ImageDraw(NamedTuple):
    t: int               # timestep, uniform on 0 … T−1
    flip: bool           # horizontal flip, probability ½
    noise: torch.Tensor  # ε ~ N(0, I), float32 `shape`


def draw(seed: int, epoch: int, position: int, shape: tuple[int, ...],
         timesteps: int) -> ImageDraw:
    """The draws of the image at `position` of epoch `epoch`.

    Three hashed words: one for t (its remainder mod T; the bias, below 2^-50, is far
    under any test's resolution), one for the flip (its lowest bit), one to seed the
    generator of ε. Each has its own word, so turning flips off leaves t and ε as they
    were. Taking t and the flip from the hash rather than from torch saves two tensor
    draws per image: the whole draw is ~45 µs, well under 1 % of a training step
    (scripts/bench_formats.py).
    """
    t_word, flip_word, noise_seed = stream_words(seed, epoch, position, count=3)
    generator = torch.Generator().manual_seed(noise_seed)
    return ImageDraw(t_word % timesteps, bool(flip_word & 1),
                     torch.randn(shape, generator=generator))


def seed_dropout(seed: int, epoch: int, first_position: int) -> None:
    """Re-seed torch's global generators (CPU and every CUDA device) for one batch's dropout."""
    torch.manual_seed(stream_words(seed, epoch, first_position, DROPOUT_STREAM)[0])
