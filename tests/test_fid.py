"""FID: parity with pytorch-fid, separation of distributions, weights handling, statistics files.

All FIDs here come from calibrated stand-in Inception weights (fixture
`standin_inception`): they compare the sets below with each other and nothing else.
Inception at 299 px costs ~0.1-0.3 s per image on two CPU cores and each FID a
2048² `sqrtm` (30-80 s with scipy 1.17), so sets are small, every feature matrix
and FID is computed once, and pytorch-fid's own run overlaps ours.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid.fid_score import compute_statistics_of_path
from scipy.ndimage import gaussian_filter

from ddpm.errors import DdpmError
from ddpm.metrics import fid
from ddpm.metrics.fid_spread import frechet_to_reference, psd_sqrt

N_IMAGES = 40  # per set; one pytorch-fid batch (its batch size 50 is cut to the set size)
SIZE = 64
# An FID that any two clearly different sets exceed once features have unit scale;
# uncalibrated (vanishing) features give ~1e-11 for every pair, far below it.
TRIVIAL_FID = 1.0


# ------------------------------------------------------------------ image sets


def face_like_images(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    """uint8 [n, size, size, 3] cartoon faces: skin ellipse, eyes, mouth, gradient background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        img = top + (bottom - top) * yy[..., None]
        cy, cx = 0.5 + rng.normal(0, 0.04, 2)
        ry, rx = rng.uniform(0.30, 0.40), rng.uniform(0.22, 0.30)
        img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = (
            np.array([0.85, 0.65, 0.5]) * rng.uniform(0.6, 1.1))
        for side in (-1, 1):
            eye = ((yy - cy + 0.08) / 0.04) ** 2 + ((xx - cx - side * 0.1) / 0.05) ** 2 < 1
            img[eye] = rng.uniform(0, 0.3, 3)
        mouth_width = rng.uniform(0.06, 0.12)
        img[((yy - cy - 0.15) / 0.03) ** 2 + ((xx - cx) / mouth_width) ** 2 < 1] = [0.6, 0.15, 0.15]
        out[i] = (np.clip(img, 0, 1) * 255).round()
    return out


def noise_images(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def blurred(images: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gaussian blur over height and width only."""
    smooth = gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0))
    return smooth.round().astype(np.uint8)


def write_pngs(images: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


# ------------------------------------------------------------------ computed once


@pytest.fixture(scope="module")
def image_sets() -> dict[str, np.ndarray]:
    faces = face_like_images(N_IMAGES, seed=1)
    return {"faces": faces, "blurred": blurred(faces), "noise": noise_images(N_IMAGES, seed=2)}


@pytest.fixture(scope="module")
def pytorch_fid_cli(image_sets, standin_inception, tmp_path_factory):
    """`python -m pytorch_fid faces/ blurred/` on PNGs of the same images, started at once.

    It runs in its own process while this one computes `fids`: scipy's sqrtm, most of
    an FID's cost, keeps about one core busy, so the two overlap well.
    TORCH_HOME (the stand-in weights) is inherited. Its output (a few progress bars
    and the FID line) stays far below a pipe's buffer, so PIPE cannot stall it.
    """
    root = tmp_path_factory.mktemp("pngs")
    dirs = [str(write_pngs(image_sets[name], root / name)) for name in ("faces", "blurred")]
    process = subprocess.Popen(
        [sys.executable, "-m", "pytorch_fid", *dirs,
         "--device", "cpu", "--batch-size", "50", "--num-workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def inception(standin_inception):
    return fid.load_inception()  # no path: torch hub's copy, found through TORCH_HOME


@pytest.fixture(scope="module")
def features(image_sets, inception) -> dict[str, np.ndarray]:
    return {name: fid.inception_features([images], inception) for name, images in image_sets.items()}


@pytest.fixture(scope="module")
def statistics(features):
    return {name: fid.feature_statistics(f) for name, f in features.items()}


@pytest.fixture(scope="module")
def fids(features, statistics) -> dict[str, float]:
    """FID of the faces against themselves, their blurred copies and noise.

    Only "blurred" goes through `fid.frechet_distance` (pytorch-fid's scipy sqrtm of
    a 2048² matrix, 15-50 s here), to compare with pytorch-fid's command line; the
    other two use the eigenvalue form that tests/test_metrics.py checks against it.
    """
    mu, sigma = statistics["faces"]
    root, trace = psd_sqrt(sigma), float(np.trace(sigma))
    return {"self": frechet_to_reference(features["faces"], mu, root, trace),
            "blurred": fid.frechet_distance(mu, sigma, *statistics["blurred"]),
            "noise": frechet_to_reference(features["noise"], mu, root, trace)}


# ------------------------------------------------------------------ FID values


def test_fid_equals_pytorch_fid_command_line(pytorch_fid_cli, fids):
    # pytorch_fid_cli first: its process starts before this one computes `fids`.
    stdout, stderr = pytorch_fid_cli.communicate(timeout=900)
    assert pytorch_fid_cli.returncode == 0, stderr[-2000:]
    reference = float(re.search(r"FID:\s+(\S+)", stdout).group(1))
    # Relative 1e-6, not bit-equal: ddpm runs Inception channels-last (1.5x on a CPU),
    # pytorch-fid contiguous, and the convolutions round differently (measured: 1.4e-7).
    assert fids["blurred"] == pytest.approx(reference, rel=1e-6)


def test_features_have_unit_scale_and_vary_across_images(features):
    # Guards the other FID tests: with vanishing features all FIDs would be ~0
    # and parity would hold whatever the code did.
    for name, f in features.items():
        assert f.shape == (N_IMAGES, 2048) and f.dtype == np.float64, name
        assert f.std(axis=0).mean() > 0.1, name
        assert np.abs(f).max() > 0.5, name


def test_self_fid_is_zero_and_different_sets_are_far_apart(fids):
    assert abs(fids["self"]) < 1e-3 * min(fids["blurred"], fids["noise"])
    assert fids["blurred"] > 100 * TRIVIAL_FID
    assert fids["noise"] > 100 * TRIVIAL_FID


def test_inception_features_reports_progress_per_batch(inception):
    images = noise_images(3, seed=3, size=16)
    done = []
    f = fid.inception_features([images[:2], images[2:]], inception, progress=done.append)
    assert f.shape == (3, 2048) and done == [2, 1]
    with pytest.raises(ValueError, match="uint8"):
        fid.inception_features([images.astype(np.float32)], inception)


def test_uint8_moved_then_divided_equals_pytorch_fid_to_tensor(image_sets, inception):
    """images_to_tensor moves uint8 pixels and divides by 255 where they land: the same
    floats, bit for bit and in the same NCHW layout, as pytorch-fid's per-image
    ToTensor, so the features equal those of the host path it replaced."""
    import torchvision.transforms.functional as TF

    images = image_sets["faces"][:6]
    to_tensor = torch.stack([TF.to_tensor(image) for image in images])  # pytorch-fid's way
    moved = fid.images_to_tensor(images, "cpu")
    assert moved.dtype == torch.float32 and moved.is_contiguous()
    assert torch.equal(moved, to_tensor)
    with torch.no_grad():
        expected = inception(to_tensor)[0].flatten(1).double().numpy()
    np.testing.assert_allclose(fid.inception_features([images], inception), expected,
                               rtol=0, atol=1e-6)


# ------------------------------------------------------------------ weights


def test_missing_hub_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # An address that refuses at once: the download must fail, with or without network.
    monkeypatch.setattr(fid, "WEIGHTS_URL", "http://127.0.0.1:9/pt_inception.pth")
    monkeypatch.setattr(fid, "DOWNLOAD_TIMEOUT_S", 5.0)
    with pytest.raises(DdpmError) as err:
        fid.load_inception()
    message = str(err.value)
    assert "\n" not in message
    assert fid.WEIGHTS_FILENAME in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "fid.weights" in message


def test_missing_explicit_weights_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(DdpmError, match=re.escape(str(missing))) as err:
        fid.load_inception(weights=str(missing))
    assert "\n" not in str(err.value)


def test_wrong_weights_file_is_refused(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(DdpmError, match="not pytorch-fid Inception weights"):
        fid.load_inception(weights=str(wrong))


def test_explicit_weights_path_loads_that_file_not_the_hub_copy(standin_inception, inception,
                                                                 tmp_path):
    """A weights file that differs from the hub's in one tensor: the explicit path gives
    a network holding exactly the file's tensors, and the hub copy's network does not."""
    state = torch.load(standin_inception, weights_only=True)
    key = "Mixed_7c.branch_pool.bn.running_mean"
    state[key] = state[key] + 1.0
    other = tmp_path / "other.pth"
    torch.save(state, other)
    explicit = fid.load_inception(weights=str(other))
    assert not explicit.training
    network = explicit.blocks[-1][-2].branch_pool.bn  # pytorch-fid's FIDInceptionE_2
    assert torch.equal(network.running_mean, state[key])
    hub = inception.blocks[-1][-2].branch_pool.bn
    assert torch.equal(hub.running_mean + 1.0, state[key])


def test_standin_weights_are_not_official(standin_inception):
    info = fid.weights_info(standin_inception)
    assert info["official"] is False
    assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"])


# ------------------------------------------------------------------ statistics files


def test_statistics_round_trip_in_pytorch_fid_format(statistics, tmp_path):
    mu, sigma = statistics["faces"]
    path = tmp_path / "stats" / "faces.npz"
    fid.save_statistics(path, mu, sigma, {"n": N_IMAGES, "official": False})

    loaded_mu, loaded_sigma = fid.load_statistics(path)
    assert np.array_equal(loaded_mu, mu) and np.array_equal(loaded_sigma, sigma)
    with np.load(path) as f:
        assert sorted(f.files) == ["mu", "sigma"]
    assert path.with_suffix(".json").read_text().startswith("{")
    assert sorted(p.name for p in path.parent.iterdir()) == ["faces.json", "faces.npz"]
    # pytorch-fid's own reader (what `python -m pytorch_fid stats.npz DIR` uses)
    their_mu, their_sigma = compute_statistics_of_path(str(path), None, 50, 2048, "cpu")
    assert np.array_equal(their_mu, mu) and np.array_equal(their_sigma, sigma)


def test_load_statistics_refuses_missing_or_foreign_files(tmp_path):
    with pytest.raises(DdpmError, match="not found"):
        fid.load_statistics(tmp_path / "absent.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, mean=np.zeros(3))
    with pytest.raises(DdpmError, match="expected mu and sigma"):
        fid.load_statistics(foreign)


def test_a_reference_from_other_weights_is_refused(tmp_path):
    """fid.weights is a path, so DVC cannot see the file behind it change: the fid and
    fid_sweep stages compare the reference's recorded weights with the current ones."""
    from ddpm.metrics.real_features import check_reference_weights

    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"some weights")
    stats = tmp_path / "stats.npz"
    info = fid.weights_info(weights)
    stats.with_suffix(".json").write_text(json.dumps({"inception": info}))
    check_reference_weights(stats, str(weights))  # the same file: no complaint
    stats.with_suffix(".json").write_text(json.dumps(
        {"inception": {"sha256": "ab" * 32, "official": False, "kind": "stand-in"}}))
    with pytest.raises(DdpmError, match=r"abababababab… \(stand-in\), this run's are "
                                        rf"{info['sha256'][:12]}… \(stand-in\); rerun the "
                                        r"fid_ref stage \(dvc repro -f fid_ref\)"):
        check_reference_weights(stats, str(weights))
    stats.with_suffix(".json").write_text(json.dumps({"n": 3}))  # made before weights were recorded
    check_reference_weights(stats, str(weights))



def test_the_fid_and_sweep_stages_check_the_reference_weights(tmp_path):
    """Both stages refuse a reference from other weights before any sampling or Inception."""
    from ddpm.evaluation.config import FidConfig
    from ddpm.evaluation.sweep import fid_sweep
    from ddpm.metrics.real_features import features_path
    from ddpm.metrics.sample_scores import check_inputs
    from ddpm.sampling.config import SampleConfig

    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"some weights")
    stats = tmp_path / "stats.npz"
    stats.with_suffix(".json").write_text(json.dumps(
        {"split": "train", "n": 3, "splits": {},
         "inception": {"sha256": "ab" * 32, "official": False, "kind": "stand-in"}}))
    np.savez(features_path(stats), train=np.zeros((3, 2048), np.float32))
    with pytest.raises(DdpmError, match="made with Inception weights abababababab"):
        check_inputs(stats, 8, FidConfig(weights=str(weights)))
    with pytest.raises(DdpmError, match="made with Inception weights abababababab"):
        fid_sweep(tmp_path / "no-models", stats, tmp_path / "sweep", SampleConfig(), ["ddim"],
                  [5], 4, weights=str(weights), batch_size=4, bootstrap=0)
