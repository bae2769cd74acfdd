"""The real side of KID, precision/recall and the memorisation check, cached by `fid_ref`.

`features.npz` beside the FID statistics holds float32 Inception features of up to
`fid.max_real` images of each split (train, holdout) and their indices in the
prepared split, so the `fid` stage can read the same images' pixels for the pixel
distances. When a split has more images, the kept ones are spread evenly over it
(deterministic); FID's μ, Σ use the kept images of the reference split, unflipped.

For the memorisation check it also holds the features of the training images that
check searches (`fid.memorisation_train` of them, spread evenly; 0 = all) and of the
same images mirrored left-right, as float16 (half the bytes: 1.3 GB for all of
CelebA's 162,770 training images and their mirror images; a cosine distance moves
by ~1e-7), with their indices in the split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ddpm.errors import DdpmError
from ddpm.io.atomic import write_atomically
from ddpm.metrics.fid import resolve_weights, weights_info

SPLITS = ("train", "holdout")
MEMORISATION_KEYS = ("memorisation_train", "memorisation_train_flipped",
                     "memorisation_train_index")


def features_path(stats_npz: str | Path) -> Path:
    return Path(stats_npz).with_name("features.npz")


def kept_indices(n: int, cap: int) -> np.ndarray:
    """min(n, cap) distinct indices spread evenly over 0..n−1 (all of them when n <= cap)."""
    return np.unique(np.linspace(0, n - 1, min(n, cap)).round().astype(np.int64))


def memorisation_indices(n: int, memorisation_train: int) -> np.ndarray:
    """The training images the memorisation check searches: `memorisation_train` of the
    split's n spread evenly, or all of them when it is 0."""
    return kept_indices(n, memorisation_train or n)


def _float16(x: np.ndarray) -> np.ndarray:
    """x as float16 when every value fits (Inception pool features are 0…~20); else float32."""
    half = x.astype(np.float16)
    return half if np.isfinite(half).all() else x.astype(np.float32)


def save_real_features(path: Path, features: dict[str, np.ndarray],
                       indices: dict[str, np.ndarray], memorisation: dict[str, np.ndarray]
                       ) -> None:
    """`memorisation` holds 'features', 'features_flipped' and 'index' of the training
    images the memorisation check searches."""
    arrays = {name: features[name].astype(np.float32) for name in SPLITS}
    arrays.update({f"{name}_index": indices[name] for name in SPLITS})
    arrays.update({"memorisation_train": _float16(memorisation["features"]),
                   "memorisation_train_flipped": _float16(memorisation["features_flipped"]),
                   "memorisation_train_index": memorisation["index"]})

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    write_atomically(path, save)


def load_real_features(path: str | Path) -> dict[str, np.ndarray]:
    """{train, holdout, train_index, holdout_index, memorisation_train,
    memorisation_train_flipped, memorisation_train_index} as saved by `fid_ref`."""
    path = Path(path)
    expected = {*SPLITS, *(f"{name}_index" for name in SPLITS)}
    if not path.is_file():
        raise DdpmError(f"{path}: real-image features not found; rerun the fid_ref stage "
                        "(dvc repro fid_ref)")
    with np.load(path) as f:
        if not expected <= set(f.files):
            raise DdpmError(f"{path}: not fid_ref features (keys {sorted(f.files)}); rerun "
                            "the fid_ref stage (dvc repro -f fid_ref)")
        if not set(MEMORISATION_KEYS) <= set(f.files):
            raise DdpmError(f"{path}: made before the memorisation check searched flipped "
                            "training images; rerun the fid_ref stage (dvc repro -f fid_ref)")
        return {key: f[key][:] for key in (*expected, *MEMORISATION_KEYS)}


def load_reference_features(stats_npz: str | Path) -> np.ndarray:
    """The features behind the FID reference μ, Σ of `stats_npz`: fid_ref's cached features
    of its reference split, the same (at most `fid.max_real`) images, checked to be as many.
    Reads that one array, not the memorisation check's (1.3 GB for all of CelebA)."""
    stats_npz = Path(stats_npz)
    meta_path, path = stats_npz.with_suffix(".json"), features_path(stats_npz)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if "split" not in meta or not path.is_file():
        raise DdpmError(f"{path}: reference features not found beside {stats_npz}; rerun the "
                        "fid_ref stage (dvc repro fid_ref)")
    with np.load(path) as f:
        if meta["split"] not in f.files:
            raise DdpmError(f"{path}: no {meta['split']!r} features; rerun the fid_ref stage "
                            "(dvc repro -f fid_ref)")
        features = f[meta["split"]][:]
    if len(features) != meta["n"]:   # a features.npz from another fid_ref run
        raise DdpmError(f"{path}: {len(features)} reference features but {meta_path.name} "
                        f"says μ, Σ are of {meta['n']}; rerun the fid_ref stage "
                        "(dvc repro -f fid_ref)")
    return features


def check_reference_weights(stats_npz: str | Path, weights: str) -> None:
    """One DdpmError when fid_ref's statistics came from other Inception weights than
    `weights` (fid.weights) resolves to now.

    DVC hashes fid.weights, a path, not the file it names: replacing the stand-in by
    the ported weights under torch hub's one name would otherwise score new samples
    against a reference from another network, and the FID would mean nothing.
    """
    meta_path = Path(stats_npz).with_suffix(".json")
    made = json.loads(meta_path.read_text()).get("inception")
    if not made:  # a reference from before weights were recorded: nothing to compare
        return
    now = weights_info(resolve_weights(weights))
    if made["sha256"] != now["sha256"]:
        before = made.get("kind", "official" if made.get("official") else "stand-in")
        raise DdpmError(f"{meta_path}: the reference was made with Inception weights "
                        f"{made['sha256'][:12]}… ({before}), this run's are "
                        f"{now['sha256'][:12]}… ({now['kind']}); rerun the fid_ref stage "
                        "(dvc repro -f fid_ref)")
