"""Shared pytest fixtures. One fixture per section; keep each self-contained."""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import shutil
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest

# ------------------------------------------------------------------ subprocesses

# Stages, scripts and DDP workers that tests start in subprocesses import this
# checkout's ddpm, not whichever copy pip installed in editable mode (another
# worktree's, say): the tests then check the code beside them.
REPO = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))

# ------------------------------------------------------------------ tiers

# A test is slow when it, a fixture it uses, or a helper either calls from its module
# names one of these: Inception (the stand-in), a subprocess (a stage, a script, DVC,
# pytorch-fid's command line, DDP workers) or a signal that kills one. Only names in
# the code count, not words in strings or comments. The fast tier is
# `python -m pytest -m "not slow"`.
SLOW_NAMES = {"standin_inception", "subprocess", "Popen", "SIGKILL"}


def _names(func, seen: set) -> set[str]:
    """Identifiers in `func`'s source and in the module-level functions it calls (one level)."""
    if not inspect.isfunction(func) or func in seen:
        return set()
    seen.add(func)
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return set()
    tokens = tokenize.generate_tokens(io.StringIO(textwrap.dedent(source)).readline)
    names = {tok.string for tok in tokens if tok.type == tokenize.NAME}
    for name in func.__code__.co_names:
        helper = func.__globals__.get(name)
        if inspect.isfunction(helper) and helper.__module__ == func.__module__:
            names |= _names(helper, seen)   # empty for one already read
    return names


def slow_reason(item) -> str | None:
    """A slow name used by the test, its fixtures or their module helpers, else None."""
    seen: set = set()
    names = _names(getattr(item, "function", None), seen)
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for fixture in defs:
            names |= _names(fixture.func, seen)
    found = sorted(names & SLOW_NAMES)
    return found[0] if found else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") is None and slow_reason(item):
            item.add_marker(pytest.mark.slow)


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

    import ddpm.metrics.inception_standin as standin

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
    from ddpm.metrics.fid import WEIGHTS_FILENAME
    from ddpm.metrics.inception_standin import make_standin_weights

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


@pytest.fixture(scope="session", autouse=True)
def fresh_test_caches():
    """Forget what test modules cached (`functools.cache`) in an earlier session of this process.

    A plain run starts with empty caches. mutmut forks each mutant's run from a process
    that has already run the tests once, so a cached sampler run of the unmutated code
    would stand in for the mutant's and the mutant would survive unseen (it did: 9 of the
    DDPM step's mutants, and DDIM's η > 0 arithmetic).
    """
    here = Path(__file__).resolve().parent
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().parent == here:
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()


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

# ------------------------------------------------------------------ a network that learned


@pytest.fixture(scope="session")
def trained_tiny_model(tmp_path_factory) -> Path:
    """The tiny UNet trained by the train stage's own code for 40 steps on 64 demo
    drawings (in-process, one thread, ~10 s), saved as the stage saves it; shared by
    the tests that need a network whose output depends on what it learned."""
    import torch

    from ddpm.training.run import train
    from tests import tiny

    root = tmp_path_factory.mktemp("trained")
    params = tiny.params(train={"max_steps": 40, "val_every": 20, "sample_every": 1000,
                                "checkpoint_every": 1000, "hflip": False})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(params, tiny.prepared(root / "data"), root / "models", root / "state",
              root / "dvclive", mlruns_dir=root / "mlruns", progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "models"
