"""The fid_ref stage: Inception statistics and features of the real images.

The network, preprocessing and Fréchet distance are pytorch-fid's (`ddpm.metrics.fid`);
this module only feeds them, with real images straight from the prepared PNG shards.
The same features feed the other metrics (`ddpm.metrics`): KID, the FID spread
over blocks, precision/recall and the memorisation check. `rebatch` and `_features`
also serve the fid stage (`score`) and the fid_sweep stage (`sweep`). Nothing here
imports the sampler or model code, so editing it never recomputes the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ddpm.data.prepared import PreparedImages, read_manifest
from ddpm.io.progress import progress_bar
from ddpm.metrics.fid import (feature_statistics, inception_features, load_inception,
                              resolve_weights, save_statistics, weights_info)
from ddpm.metrics.real_features import (SPLITS, features_path, kept_indices,
                                        memorisation_indices, save_real_features)


def rebatch(arrays: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Regroup a stream of image arrays [k, H, W, 3] into batches of `batch_size`."""
    pending: list[np.ndarray] = []
    count = 0
    for array in arrays:
        pending.append(array)
        count += len(array)
        while count >= batch_size:
            joined = np.concatenate(pending)
            yield joined[:batch_size]
            pending, count = [joined[batch_size:]], count - batch_size
    if count:
        yield np.concatenate(pending)


def prepared_arrays(prepared_dir: Path, split: str,
                    indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """The images of `split` (or those at `indices`), one at a time as uint8 [1, H, W, 3]."""
    images = PreparedImages(prepared_dir, split)
    for i in (range(len(images)) if indices is None else indices):
        yield images[int(i)].permute(1, 2, 0).numpy()[None]


def _features(arrays, count: int, weights: str, batch_size: int, device, desc: str):
    model = load_inception(weights, device)
    with progress_bar(count, desc) as bar:
        return inception_features(rebatch(arrays, batch_size), model, device, bar.update)


def reference_statistics(prepared_dir: str | Path, out_npz: str | Path, *, split: str,
                         weights: str, batch_size: int, max_real: int = 10000,
                         memorisation_train: int, device="cpu") -> dict:
    """μ, Σ of up to `max_real` real images of `split` (evenly spaced; all when fewer) →
    `out_npz` (+ `.json` with counts, data hash), and the features of up to `max_real`
    images of each split → `features.npz` beside it. One cap for every real image that
    Inception sees: a demo keeps it small, a real run raises it to the split's size.

    `features.npz` also holds the features of the `memorisation_train` training images
    (evenly spaced; 0 = all) the memorisation check searches and of their mirror images
    (training flips images): Inception sees the mirrored ones, and those of the
    memorisation images that `max_real` did not keep, once more. μ, Σ stay those of
    the unflipped kept images.
    """
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    kept, indices, splits = {}, {}, {}
    memorised = memorisation_indices(manifest["counts"]["train"], memorisation_train)
    for name in SPLITS:
        count = manifest["counts"][name]
        indices[name] = kept_indices(count, max_real)
        # train: the kept images and the memorisation check's, each once
        wanted = np.union1d(indices[name], memorised) if name == "train" else indices[name]
        found = _features(prepared_arrays(prepared_dir, name, wanted), len(wanted), weights,
                          batch_size, device, f"real features ({name})")
        kept[name] = found[np.searchsorted(wanted, indices[name])]
        if name == "train":
            memorised_features = found[np.searchsorted(wanted, memorised)]
        splits[name] = {"n": count, "kept": len(indices[name]),
                        "data_sha256": manifest["split_sha256"][name]}
    mirrored = (a[:, :, ::-1] for a in prepared_arrays(prepared_dir, "train", memorised))
    flipped = _features(mirrored, len(memorised), weights, batch_size, device,
                        "real features (train, flipped)")
    mu, sigma = feature_statistics(kept[split])
    meta = {"n": len(indices[split]), "split": split, "split_size": manifest["counts"][split],
            "data_sha256": manifest["split_sha256"][split], "img_size": manifest["img_size"],
            "max_real": max_real, "splits": splits,
            "memorisation": {"memorisation_train": memorisation_train,
                             "train": len(memorised), "train_flipped": len(memorised)},
            "inception_images": len(np.union1d(indices["train"], memorised))
                                + len(indices["holdout"]) + len(memorised),
            "inception": weights_info(resolve_weights(weights))}
    save_real_features(features_path(out_npz), kept, indices,
                       {"features": memorised_features, "features_flipped": flipped,
                        "index": memorised})
    save_statistics(out_npz, mu, sigma, meta)  # last: its .json marks a complete reference
    return meta
