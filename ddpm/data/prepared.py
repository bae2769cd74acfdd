"""Reading the prepare stage's output: its manifest and the PNG images in its Parquet shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset

from ddpm.errors import DataError


def read_manifest(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: prepared data set not found; run the prepare stage first "
                        "(dvc repro prepare)")
    return json.loads(path.read_text())


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes → uint8 tensor [3, H, W]."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))  # [H, W, 3]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


class PreparedImages(Dataset):
    """One split of a prepared data set, held as PNG bytes and decoded on access."""

    def __init__(self, prepared_dir: str | Path, split: str, limit: int | None = None):
        manifest = read_manifest(prepared_dir)
        self.keys: list[str] = []
        self.pngs: list[bytes] = []
        for shard in manifest["shards"][split]:
            table = pq.read_table(Path(prepared_dir) / shard)
            self.keys += table["key"].to_pylist()
            self.pngs += table["image"].to_pylist()
            if limit is not None and len(self.keys) >= limit:
                break
        if limit is not None:
            self.keys, self.pngs = self.keys[:limit], self.pngs[:limit]
        self.img_size = manifest["img_size"]

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, index: int) -> torch.Tensor:
        return decode_png(self.pngs[index])
