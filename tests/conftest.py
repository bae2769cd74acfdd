"""Shared pytest fixtures. One fixture per section; keep each self-contained."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

# ------------------------------------------------------------------ subprocesses

# Stages, scripts and DDP workers that tests start in subprocesses import this
# checkout's ddpm, not whichever copy pip installed in editable mode (another
# worktree's, say): the tests then check the code beside them.
REPO = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))

# ------------------------------------------------------------------ stand-in Inception

STANDIN_IMAGES = 256
STANDIN_SEED = 0


def _standin_cache_path() -> Path:
    """Where calibrated stand-in weights are kept between local test sessions.

    Keyed by the pytorch-fid version (the architecture) and a digest of the code,
    torch version (its default init) and settings that make the weights, so an edit
    to the calibration never reuses a stale file. CI starts without this folder and builds them fresh (about a minute).
    """
    import pytorch_fid
    import torch

    import ddpm.inception_standin as standin

    settings = f"{torch.__version__}/{STANDIN_IMAGES}/{STANDIN_SEED}"
    recipe = Path(standin.__file__).read_bytes() + settings.encode()
    digest = hashlib.sha256(recipe).hexdigest()[:12]
    return (Path.home() / ".cache" / "ddpm-tests" / pytorch_fid.__version__
            / f"standin-inception-{digest}.pth")


@pytest.fixture(scope="session")
def standin_inception(tmp_path_factory):
    """Calibrated stand-in Inception weights, installed where torch hub looks for the real ones.

    Sets TORCH_HOME for the whole session (subprocesses such as `python -m pytorch_fid`
    or `dvc repro` inherit it) and restores it afterwards. Yields the weights path.
    FIDs from these weights compare runs with each other only.
    """
    from ddpm.fid import WEIGHTS_FILENAME
    from ddpm.inception_standin import make_standin_weights

    cached = _standin_cache_path()
    if not cached.is_file():
        make_standin_weights(cached, n_images=STANDIN_IMAGES, seed=STANDIN_SEED)
    torch_home = tmp_path_factory.mktemp("torch_home")
    weights = torch_home / "hub" / "checkpoints" / WEIGHTS_FILENAME
    weights.parent.mkdir(parents=True)
    shutil.copyfile(cached, weights)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        yield weights


# ------------------------------------------------------------------ threads


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one torch thread, restoring the count afterwards.

    Tiny models gain nothing from threads, and on a busy shared CPU two threads that
    wait for each other ran an overfit test 100× slower (87 s instead of 0.4 s).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
