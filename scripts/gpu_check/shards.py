"""The generate part's finished shards: all of them, or what a cut run kept (numpy only).

ddpm.sampling.generate writes each shard's SHA-256 (shard-NNNNN.sha256), then the shard
under a temporary name renamed into place, and manifest.json only after the last
one. A part cut by its cap leaves no manifest, but every shard file there is whole;
one whose bytes do not match its recorded hash is damaged and is not scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddpm.sampling.generate import file_sha256


def _intact(shard: Path) -> bool:
    recorded = shard.with_suffix(".sha256")
    return recorded.is_file() and recorded.read_text().strip() == file_sha256(shard)


def finished_shards(folder: Path) -> tuple[list[Path], bool]:
    """(the shard files to score, whether generate finished): the manifest's list when
    it wrote one, else every intact shard-*.npy, in index order."""
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return [folder / name for name in json.loads(manifest.read_text())["shards"]], True
    return [p for p in sorted(folder.glob("shard-*.npy")) if _intact(p)], False


def image_count(shards: list[Path]) -> int:
    return sum(np.load(path, mmap_mode="r").shape[0] for path in shards)


def kept_by_cut_run(folder: Path, planned: int, shard_size: int) -> dict:
    """What a generate part stopped by its cap kept, for its row."""
    shards, _ = finished_shards(folder)
    planned_shards = -(-planned // shard_size)
    return {"n": image_count(shards), "shards": len(shards), "planned_shards": planned_shards}
