"""`precision: auto` / `channels_last: auto`: the rule, case by case, with the hardware mocked."""

from __future__ import annotations

import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.io.precision import (Hardware, choose_channels_last, choose_sample_precision,
                               choose_train_precision, detect_hardware, resolve_sample,
                               resolve_train)
from ddpm.reporting.config import params_from_dict
from ddpm.sampling.config import SampleConfig
from ddpm.training.config import TrainConfig

AMX = dict(cpu_amx=True, aten_capability="AVX512")
CASES = {  # name → (hardware, train precision, sample precision)
    "cuda with bf16": (Hardware("cuda", "H100", cuda_bf16=True), "bf16-mixed", "bf16-mixed"),
    "cuda without bf16": (Hardware("cuda", "V100", cuda_bf16=False), "16-mixed", "32-true"),
    "AMX CPU": (Hardware("cpu", **AMX), "bf16-mixed", "bf16-mixed"),
    "AVX512-BF16 CPU": (Hardware("cpu", cpu_avx512_bf16=True, aten_capability="AVX512"),
                        "bf16-mixed", "bf16-mixed"),
    "AVX2 CPU": (Hardware("cpu", aten_capability="AVX2"), "32-true", "32-true"),
    "AVX512 CPU without bf16": (Hardware("cpu", aten_capability="AVX512"), "32-true", "32-true"),
    # ATEN_CPU_CAPABILITY=avx2 on an AMX machine: torch reports AVX2 kernels.
    "AMX CPU, torch kernels restricted to AVX2": (
        Hardware("cpu", cpu_amx=True, aten_capability="AVX2"), "32-true", "32-true"),
    # ONEDNN_MAX_CPU_ISA=AVX2 alone also rules bf16 out: oneDNN runs the convolutions.
    "AMX CPU, oneDNN restricted to AVX2": (
        Hardware("cpu", **AMX, onednn_max_isa="AVX2"), "32-true", "32-true"),
    "AMX CPU, oneDNN capped at AMX": (
        Hardware("cpu", **AMX, onednn_max_isa="avx512_core_amx"), "bf16-mixed", "bf16-mixed"),
    "Apple MPS": (Hardware("mps"), "32-true", "32-true"),
}


@pytest.mark.parametrize("name", CASES)
def test_auto_precision_rule(name):
    hw, train_precision, sample_precision = CASES[name]
    assert choose_train_precision(hw)[0] == train_precision
    assert choose_sample_precision(hw)[0] == sample_precision


def test_channels_last_rule():
    assert choose_channels_last(Hardware("cpu", aten_capability="AVX2"))[0] is True
    assert choose_channels_last(Hardware("cuda", cuda_bf16=True))[0] is True
    assert choose_channels_last(Hardware("mps"))[0] is False


def _mock_cpu(monkeypatch, amx: bool, capability: str, isa: str | None):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)


@pytest.mark.parametrize("amx, capability, isa, expected", [
    (True, "AVX512", None, "bf16-mixed"),
    (True, "AVX2", None, "32-true"),        # ATEN_CPU_CAPABILITY=avx2
    (True, "AVX512", "AVX2", "32-true"),    # ONEDNN_MAX_CPU_ISA=AVX2
    (False, "AVX2", None, "32-true"),
])
def test_detect_and_resolve_on_a_mocked_cpu(monkeypatch, amx, capability, isa, expected):
    _mock_cpu(monkeypatch, amx, capability, isa)
    hw = detect_hardware("cpu")
    assert (hw.cpu_amx, hw.aten_capability, hw.onednn_max_isa) == (amx, capability, isa or "")
    train, line = resolve_train(TrainConfig(), "cpu")
    assert train.precision == expected and train.channels_last is True
    assert f"precision {expected}" in line and capability in line
    sample, line = resolve_sample(SampleConfig(), "cpu")
    assert sample.precision == expected and expected in line


def test_explicit_values_are_kept(monkeypatch):
    _mock_cpu(monkeypatch, False, "AVX2", None)
    train, line = resolve_train(TrainConfig(precision="bf16-mixed", channels_last=False), "cpu")
    assert (train.precision, train.channels_last) == ("bf16-mixed", False)
    assert "set in params" in line
    sample, _ = resolve_sample(SampleConfig(precision="bf16-mixed"), "cpu")
    assert sample.precision == "bf16-mixed"


def test_auto_is_the_default_and_typos_are_refused():
    params = params_from_dict({})
    assert (params.train.precision, params.train.channels_last,
            params.sample.precision) == ("auto", "auto", "auto")
    with pytest.raises(ConfigError, match=r"train.channels_last = 1: must be one of 'auto', "
                                          r"true, false"):
        params_from_dict({"train": {"channels_last": 1}})
    with pytest.raises(ConfigError, match="train.precision = 'bf16'"):
        params_from_dict({"train": {"precision": "bf16"}})
