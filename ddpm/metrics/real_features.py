"""The real side of KID, precision/recall and the memorisation check, cached by `fid_ref`.

`features.npz` beside the FID statistics holds float32 Inception features of up to
`fid.max_real` images of each split (train, holdout) and their indices in the
prepared split, so the `fid` stage can read the same images' pixels for the pixel
distances. When a split has more images, the kept ones are spread evenly over it
(deterministic); FID's μ, Σ still use every image of the reference split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpm.atomic import write_atomically
from ddpm.errors import DdpmError

SPLITS = ("train", "holdout")


def features_path(stats_npz: str | Path) -> Path:
    return Path(stats_npz).with_name("features.npz")


def kept_indices(n: int, cap: int) -> np.ndarray:
    """min(n, cap) distinct indices spread evenly over 0..n−1 (all of them when n <= cap)."""
    return np.unique(np.linspace(0, n - 1, min(n, cap)).round().astype(np.int64))


def save_real_features(path: Path, features: dict[str, np.ndarray],
                       indices: dict[str, np.ndarray]) -> None:
    arrays = {name: features[name].astype(np.float32) for name in SPLITS}
    arrays.update({f"{name}_index": indices[name] for name in SPLITS})

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    write_atomically(path, save)


def load_real_features(path: str | Path) -> dict[str, np.ndarray]:
    """{train, holdout, train_index, holdout_index} as saved by `fid_ref`."""
    path = Path(path)
    expected = {*SPLITS, *(f"{name}_index" for name in SPLITS)}
    if not path.is_file():
        raise DdpmError(f"{path}: real-image features not found; rerun the fid_ref stage "
                        "(dvc repro fid_ref)")
    with np.load(path) as f:
        if not expected <= set(f.files):
            raise DdpmError(f"{path}: not fid_ref features (keys {sorted(f.files)}); rerun "
                            "the fid_ref stage (dvc repro -f fid_ref)")
        return {key: f[key][:] for key in expected}
