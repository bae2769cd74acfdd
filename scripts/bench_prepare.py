"""Benchmark: `prepare` throughput per core next to a bare decode–crop–resize–encode loop.

The bare loop is the practical ceiling: one process doing only the per-image
work (read, decode, RGB, crop, resize, PNG encode), no split, no Parquet, no
hashing, no inter-process traffic. Both run in the same invocation on the same
files, so the ratio is meaningful on a noisy machine.

    python scripts/bench_prepare.py ../shared/data/faces-a --crop celeba --img-size 64
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import typer

from ddpm.data.config import DataConfig
from ddpm.data.images import prepare_image
from ddpm.data.prepare import prepare_dataset
from ddpm.data.sources import folder_source


def bare_loop(folder: Path, crop: str, img_size: int, min_size: int, limit: int) -> float:
    """Images/s of a single-process loop over the folder's images."""
    items = list(folder_source(folder).items())[:limit]
    start = time.perf_counter()
    for item in items:
        prepare_image(item.payload(), crop, img_size, min_size)
    return len(items) / (time.perf_counter() - start)


def main(folder: Path, crop: str = "celeba", img_size: int = 64, workers: int = 0,
         repeats: int = 2) -> None:
    workers = workers or os.cpu_count() or 1
    data = DataConfig(source=str(folder), crop=crop, workers=workers)
    n = folder_source(folder).count
    for attempt in range(repeats):
        bare = bare_loop(folder, crop, img_size, data.min_size, n)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            manifest = prepare_dataset(data, img_size, Path(tmp) / "out", progress=False)
            elapsed = time.perf_counter() - start
        done = sum(manifest["counts"].values()) + len(manifest["skipped"])
        per_core = done / elapsed / workers
        print(f"run {attempt + 1}: {n} images, {workers} workers | prepare {done / elapsed:7.1f} img/s "
              f"= {per_core:6.1f} img/s per core | bare loop {bare:6.1f} img/s (1 core) | "
              f"ratio {per_core / bare:.2f}")


if __name__ == "__main__":
    typer.run(main)
