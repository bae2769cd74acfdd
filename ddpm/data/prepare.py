"""The prepare step: any source → Parquet shards of square PNGs, a train/holdout split, a manifest.

Output layout (`out_dir`):
    train-00000.parquet, ...     columns: key (string), image (PNG bytes)
    holdout-00000.parquet, ...
    manifest.json                counts, settings, content hash, every skipped file + reason

Guarantees:
- Same input and settings → byte-identical output (fixed order, deterministic
  PNG and Parquet encoding, no timestamps).
- Split membership depends only on an image's key (or its person, or an official
  list: ddpm/data/splits.py), so adding images never moves existing ones between
  train and holdout.
- Identical files (same bytes) are kept once, before the split, so no copy of a
  training image can sit in the holdout; the others are listed as duplicates.
- Bounded memory: items stream through a worker pool with a fixed number in flight.
- All or nothing: everything is written to a temporary sibling folder that
  replaces `out_dir` only when the run succeeds.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ddpm.data.config import DataConfig
from ddpm.data.images import UnusableImage, prepare_image
from ddpm.data.sources import Refused, SourceItem, open_source
from ddpm.data.splits import Splitter
from ddpm.errors import DataError
from ddpm.io.progress import progress_bar

SPLITS = ("train", "holdout")
SCHEMA = pa.schema([("key", pa.string()), ("image", pa.binary())])
# Items in flight per worker: enough to keep workers busy, few enough that a
# source of large in-memory payloads (zip, Parquet) stays bounded.
IN_FLIGHT_PER_WORKER = 64


# ------------------------------------------------------------------ workers

_SETTINGS: dict = {}


def _init_worker(crop: str, img_size: int, min_size: int) -> None:
    _SETTINGS.update(crop=crop, img_size=img_size, min_size=min_size)


def content_digest(data) -> str:
    """sha256 of an item's bytes (a drawn image: of its mode, size and pixels)."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    header = f"{data.mode} {data.size}".encode()
    return hashlib.sha256(header + data.tobytes()).hexdigest()


def _process(item: SourceItem) -> tuple[str, bytes | None, str | None, str | None]:
    """(key, png, None, digest) for a usable image, (key, None, reason, None) otherwise."""
    if isinstance(item, Refused):
        return item.key, None, item.reason, None
    try:
        data = item.payload() if callable(item.payload) else item.payload
        return item.key, prepare_image(data, **_SETTINGS), None, content_digest(data)
    except UnusableImage as err:
        return item.key, None, str(err), None
    except OSError as err:
        return item.key, None, f"unreadable ({err.strerror or err})", None


def _bounded(items: Iterable, slots: threading.Semaphore) -> Iterator:
    # Pool.imap pulls its input as fast as it can; this keeps it at most
    # `slots` items ahead of the consumer, which releases one per result.
    for item in items:
        slots.acquire()
        yield item


def _processed(items: Iterable[SourceItem], workers: int, settings: tuple) -> Iterator[tuple]:
    if workers <= 1:
        _init_worker(*settings)
        yield from map(_process, items)
        return
    slots = threading.Semaphore(workers * IN_FLIGHT_PER_WORKER)
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=settings) as pool:
        for result in pool.imap(_process, _bounded(items, slots), chunksize=32):
            slots.release()
            yield result


# ------------------------------------------------------------------ output

@dataclass
class ShardWriter:
    """Buffers (key, png) rows of one split and writes them as numbered Parquet shards."""
    out_dir: Path
    split: str
    shard_size: int
    keys: list = field(default_factory=list)
    images: list = field(default_factory=list)
    shards: list = field(default_factory=list)
    count: int = 0
    sha256: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def add(self, key: str, png: bytes) -> None:
        self.keys.append(key)
        self.images.append(png)
        self.count += 1
        for part in (key.encode("utf-8"), png):
            self.sha256.update(len(part).to_bytes(8, "big"))
            self.sha256.update(part)
        if len(self.keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        name = f"{self.split}-{len(self.shards):05d}.parquet"
        table = pa.table({"key": self.keys, "image": self.images}, schema=SCHEMA)
        # PNG is already compressed; Parquet compression would only cost time.
        pq.write_table(table, self.out_dir / name, compression="none")
        self.shards.append(name)
        self.keys, self.images = [], []


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ the step

def prepare_dataset(data: DataConfig, img_size: int, out_dir: str | Path, *,
                    progress: bool = True) -> dict:
    """Prepare `data.source` into `out_dir`; returns the manifest.

    Raises DataError when the source does not exist or yields no usable image;
    then nothing is written.
    """
    opened = open_source(data.source, demo_size=data.demo_size, seed=data.seed,
                         image_column=data.image_column)
    workers = data.workers or os.cpu_count() or 1
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        manifest = _prepare_into(opened, staging, data, img_size, workers, progress)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _prepare_into(opened, staging: Path, data: DataConfig, img_size: int, workers: int,
                  progress: bool) -> dict:
    writers = {split: ShardWriter(staging, split, data.shard_size) for split in SPLITS}
    splitter = Splitter(data)
    skipped, duplicates, first_key = [], [], {}
    settings = (data.crop, img_size, data.min_size)
    bar = progress_bar(opened.count, f"prepare {opened.kind}", disable=not progress)
    with bar:
        for key, png, reason, digest in _processed(opened.items(), workers, settings):
            bar.update()
            if png is not None:
                if digest in first_key:  # source order: the first copy stays
                    duplicates.append({"key": key, "same_bytes_as": first_key[digest]})
                    continue
                first_key[digest] = key
                split, reason = splitter.split(key)
            if reason is not None:
                skipped.append({"key": key, "reason": reason})
                continue
            writers[split].add(key, png)
    for writer in writers.values():
        writer.flush()
    if writers["train"].count == 0:
        first = f"; first: {skipped[0]['key']}: {skipped[0]['reason']}" if skipped else ""
        raise DataError(f"data.source = {data.source!r}: no usable training images "
                        f"({len(skipped)} skipped{first}); point data.source at images")
    content = hashlib.sha256()
    for split in SPLITS:
        content.update(writers[split].sha256.digest())
    manifest = {
        "source": data.source,
        "source_kind": opened.kind,
        "crop": data.crop,
        "img_size": img_size,
        "holdout_fraction": data.holdout_fraction,
        "split_rule": splitter.rule,
        "split_files": splitter.file_sha256,
        "format": "Parquet shards; columns key (string), image (PNG bytes, RGB, img_size²)",
        "counts": {split: writers[split].count for split in SPLITS},
        "shards": {split: writers[split].shards for split in SPLITS},
        "split_sha256": {split: writers[split].sha256.hexdigest() for split in SPLITS},
        "content_sha256": content.hexdigest(),
        "skipped": skipped,
        "duplicates": duplicates,
    }
    _write_json(staging / "manifest.json", manifest)
    return manifest


def _listed(title: str, rows: list[str], out_dir: str | Path, max_listed: int) -> list[str]:
    """`title`, then at most `max_listed` rows, then where the rest are."""
    if not rows:
        return []
    lines = [title] + [f"  {row}" for row in rows[:max_listed]]
    if len(rows) > max_listed:
        lines.append(f"  ... and {len(rows) - max_listed} more, all listed in "
                     f"{Path(out_dir) / 'manifest.json'}")
    return lines


def summary(manifest: dict, out_dir: str | Path, max_listed: int = 50) -> str:
    """Human-readable result of a prepare run, listing duplicates and skipped files."""
    counts = manifest["counts"]
    duplicates, skipped = manifest.get("duplicates", []), manifest["skipped"]
    lines = [f"prepared {counts['train']} train + {counts['holdout']} holdout images "
             f"({manifest['img_size']}px, crop={manifest['crop']}) into {out_dir}"]
    lines += _listed(f"left out {len(duplicates)} duplicate file(s), the same bytes as a kept one:",
                     [f"{d['key']} = {d['same_bytes_as']}" for d in duplicates], out_dir,
                     max_listed)
    lines += _listed(f"skipped {len(skipped)} file(s):",
                     [f"{s['key']}: {s['reason']}" for s in skipped], out_dir, max_listed)
    return "\n".join(lines)
