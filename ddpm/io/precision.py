"""`precision: auto` and `channels_last: auto`: the number formats this hardware runs natively.

bf16 autocast is fast only where the hardware has bf16 arithmetic: tensor cores on
a GPU, AMX or AVX512-BF16 on a CPU. Elsewhere it runs through slow paths (on a
2-core AVX2 EPYC one training step of the default model ran at 0.08-0.11x
float32; docs/benchmarks.md). So `auto` is decided from what the hardware
reports, never from a timing probe: the same machine always resolves the same
way, and the resolved value is written into every output it shapes.

`Hardware` holds the capabilities; `detect_hardware` reads them (honouring
`ATEN_CPU_CAPABILITY` and `ONEDNN_MAX_CPU_ISA`, which restrict the kernels torch
and oneDNN may use, so an AMX machine told `avx2` is treated as an AVX2 one);
the `choose_*` rules are pure functions of a `Hardware`, tested case by case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) that include bf16 arithmetic; any lower
# cap (SSE41, AVX, AVX2, AVX2_VNNI, AVX512_CORE, AVX512_CORE_VNNI, ...) excludes it.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512",
                     "AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16",
                     "AVX512_CORE_AMX_FP16", "ALL", "DEFAULT")


@dataclass(frozen=True)
class Hardware:
    """What the device a stage runs on can do, as torch and the environment report it."""
    device: str                   # "cuda" | "cpu" | "mps"
    name: str = ""                # the GPU's or CPU's name, for the log line
    cuda_bf16: bool = False       # torch.cuda.is_bf16_supported() (Ampere and later)
    cpu_amx: bool = False         # torch.cpu._is_amx_tile_supported()
    cpu_avx512_bf16: bool = False  # torch.cpu._is_avx512_bf16_supported()
    aten_capability: str = ""     # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", ...
    onednn_max_isa: str = ""      # $ONEDNN_MAX_CPU_ISA, "" when unset

    @property
    def cpu_native_bf16(self) -> bool:
        """bf16 arithmetic in hardware, and neither library restricted below it."""
        has_bf16 = self.cpu_amx or self.cpu_avx512_bf16
        aten_ok = self.aten_capability.upper().startswith("AVX512")
        isa = self.onednn_max_isa.upper()
        onednn_ok = not isa or isa in _ONEDNN_BF16_ISAS
        return has_bf16 and aten_ok and onednn_ok

    def describe(self) -> str:
        if self.device == "cuda":
            return f"CUDA GPU {self.name or '?'} ({'with' if self.cuda_bf16 else 'without'} bf16)"
        if self.device == "mps":
            return "Apple MPS"
        units = [u for u, on in (("AMX", self.cpu_amx), ("AVX512-BF16", self.cpu_avx512_bf16))
                 if on]
        limits = [f"ONEDNN_MAX_CPU_ISA={self.onednn_max_isa}"] if self.onednn_max_isa else []
        text = f"CPU, torch kernels {self.aten_capability or '?'}"
        text += f", {' + '.join(units)}" if units else ", no AMX or AVX512-BF16"
        return text + (f" ({', '.join(limits)})" if limits else "")


def detect_hardware(device: str | torch.device) -> Hardware:
    """The capabilities of `device` ("cuda", "cpu", "mps" or a torch.device)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return Hardware("cuda", torch.cuda.get_device_name(), cuda_bf16=_cuda_bf16())
    if kind == "mps":
        return Hardware("mps")
    return Hardware("cpu", cpu_amx=_probe(torch.cpu, "_is_amx_tile_supported"),
                    cpu_avx512_bf16=_probe(torch.cpu, "_is_avx512_bf16_supported"),
                    aten_capability=torch.backends.cpu.get_cpu_capability(),
                    onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip())


def _cuda_bf16() -> bool:
    # including_emulation=False: emulated bf16 on a pre-Ampere GPU is slower than fp16.
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch without the argument
        return torch.cuda.is_bf16_supported()


def _probe(module, name: str) -> bool:
    probe = getattr(module, name, None)
    return bool(probe()) if probe is not None else False


def choose_train_precision(hw: Hardware) -> tuple[str, str]:
    """(Lightning precision, why) for `train.precision: auto`."""
    if hw.device == "cuda":
        if hw.cuda_bf16:
            return "bf16-mixed", "the GPU has bf16 tensor cores"
        return "16-mixed", "the GPU has fp16 but not bf16 tensor cores"
    if hw.device == "cpu" and hw.cpu_native_bf16:
        return "bf16-mixed", "the CPU has native bf16 (AMX or AVX512-BF16)"
    if hw.device == "cpu":
        return "32-true", "no native bf16 on this CPU: bf16 autocast ran at 0.1x float32 on AVX2"
    return "32-true", "mixed precision is not measured on this device"


def choose_sample_precision(hw: Hardware) -> tuple[str, str]:
    """(precision, why) for `sample.precision: auto`: bf16 where native, else float32.

    No fp16 for sampling: the sampler's arithmetic stays float32 either way, and
    fp16's range is the risk bf16 does not carry.
    """
    precision, why = choose_train_precision(hw)
    if precision == "16-mixed":
        return "32-true", "the GPU has no bf16 tensor cores"
    return precision, why


def choose_channels_last(hw: Hardware) -> tuple[bool, str]:
    """(channels_last, why) for `train.channels_last: auto`, from measurement.

    Channels-last was faster wherever it was measured: 1.15-1.2x a float32 step
    on 2-core AVX2 EPYCs, 1.3x on an AMX Xeon (docs/benchmarks.md); on CUDA GPUs
    it is what tensor-core convolutions want. Not measured on MPS: contiguous.
    """
    if hw.device in ("cpu", "cuda"):
        return True, "channels-last convolutions measured faster on this kind of device"
    return False, "channels-last is not measured on this device"


def resolve_train(train, device: str | torch.device):
    """`train` (TrainConfig) with `auto` replaced by this hardware's choice, and why."""
    hw = detect_hardware(device)
    precision, why_p = ((train.precision, "set in params") if train.precision != "auto"
                        else choose_train_precision(hw))
    channels_last, why_c = ((train.channels_last, "set in params")
                            if train.channels_last != "auto" else choose_channels_last(hw))
    why = (f"on {hw.describe()}: precision {precision} ({why_p}); "
           f"channels_last {str(channels_last).lower()} ({why_c})")
    return replace(train, precision=precision, channels_last=channels_last), why


def resolve_sample(sample, device: str | torch.device):
    """`sample` (SampleConfig) with precision `auto` resolved, and why."""
    if sample.precision != "auto":
        return sample, f"precision {sample.precision} (set in params)"
    hw = detect_hardware(device)
    precision, why = choose_sample_precision(hw)
    return replace(sample, precision=precision), f"on {hw.describe()}: precision {precision} ({why})"
