"""accelerator: gpu where there is none ends with one line naming the key, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tiny

REPO = Path(__file__).resolve().parents[1]
NO_GPU = not torch.cuda.is_available() and not torch.backends.mps.is_available()


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("stage, section, outputs", [
    ("train", "train", ["--data", "data", "--models", "models", "--state", "state",
                        "--live", "live"]),
    ("generate", "sample", ["--models", "models", "--out", "samples"]),
    ("fid_ref", "fid", ["--data", "data", "--out", "fid_ref/stats.npz"]),
    ("timestep_loss", "analysis", ["--models", "models", "--data", "data", "--out", "analysis"]),
])
def test_gpu_accelerator_without_a_gpu_is_one_line_and_exit_2(tmp_path, stage, section,
                                                              outputs):
    params = tiny.write_params(tmp_path / "params.yaml", **{section: {"accelerator": "gpu"}})
    proc = tiny.run_stage(stage, "--params", params, *outputs, cwd=tmp_path)
    assert proc.exit_code == 2, proc.stderr
    assert proc.stderr.strip() == (f"error: {section}.accelerator = 'gpu': no GPU is visible on "
                                   "this machine (torch.cuda.is_available() is False); use auto "
                                   "or cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_too_many_gpus_names_the_devices_key(monkeypatch):
    from ddpm.io.devices import check_accelerator
    from ddpm.errors import ConfigError
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_accelerator("train", "gpu", 2)
    check_accelerator("train", "cpu", 8)
    with pytest.raises(ConfigError, match=r"^train.devices = 4: only 2 GPU\(s\) visible"):
        check_accelerator("train", "gpu", 4)


def test_fid_device_follows_fid_accelerator(monkeypatch):
    """auto is the GPU exactly when CUDA sees one (the FID stages' old rule); cpu stays."""
    from ddpm.io.devices import torch_device
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda cuda=cuda: int(cuda))
        assert torch_device("fid", "auto") == ("cuda" if cuda else "cpu")
        assert torch_device("fid", "cpu") == "cpu"
    assert torch_device("fid", "gpu") == "cuda"

