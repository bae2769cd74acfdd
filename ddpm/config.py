"""Typed, frozen configuration: one dataclass per `params.yaml` section.

Validated once, at the edge (`load_params`): an unknown key, a wrong type or an
out-of-range value raises `ConfigError` with one line naming the key, the bad
value and what is allowed. Below this module, code receives explicit, already
valid values and never re-reads `params.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ddpm.diffusion.registry import SAMPLER_NAMES
from ddpm.diffusion.samplers import SPACINGS
from ddpm.errors import ConfigError


def _bounded(default: Any, *, ge: float | None = None, le: float | None = None,
             gt: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field whose numeric value must lie in the given bounds."""
    bounds = {k: v for k, v in dict(ge=ge, le=le, gt=gt, lt=lt).items() if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"bounds": bounds})
    return field(default=default, metadata={"bounds": bounds})


def _list(default: list) -> Any:
    return field(default_factory=lambda: [list(x) if isinstance(x, list) else x for x in default])


@dataclass(frozen=True)
class DataConfig:
    source: str = "demo"
    crop: Literal["celeba", "center", "none"] = "center"
    demo_size: int = _bounded(1000, ge=1)
    seed: int = 0
    holdout_fraction: float = _bounded(0.1, gt=0.0, lt=1.0)
    min_size: int = _bounded(16, ge=1)
    shard_size: int = _bounded(4096, ge=1)
    workers: int = _bounded(0, ge=0)
    image_column: str = ""
    identity_file: str = ""
    partition_file: str = ""


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["unet", "unetpp", "dit"] = "unet"
    img_size: int = _bounded(32, ge=8)
    channels: list[int] = _bounded([24, 48, 96], ge=1)
    down_attn: list[bool] = _list([False, False])
    down_channel_indices: list[list[int]] = _list([[0, 0], [0, 1]])
    mid_attn: list[bool] = _list([True, False])
    mid_channel_indices: list[list[int]] = _list([[1, 2], [2, 1]])
    up_attn: list[bool] = _list([True])
    up_channel_indices: list[list[int]] = _list([[1, 0]])
    num_res_blocks: int = _bounded(1, ge=1)
    num_heads: int = _bounded(4, ge=1)
    norm_groups: int = _bounded(8, ge=1)
    dropout: float = _bounded(0.0, ge=0.0, lt=1.0)
    attn_dropout: float = _bounded(0.0, ge=0.0, lt=1.0)
    dropout_kind: Literal["element", "channel"] = "element"
    time_injection: Literal["add", "scale_shift"] = "scale_shift"
    zero_init: bool = True
    patch_size: int = _bounded(4, ge=1)
    dit_size: Literal["custom", "S", "B", "L"] = "custom"
    depth: int = _bounded(6, ge=1)
    hidden_size: int = _bounded(192, ge=8)


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: Literal["linear", "cosine", "sigmoid"] = "cosine"
    timesteps: int = _bounded(1000, ge=2)
    prediction: Literal["eps", "v", "x0"] = "v"
    loss_weighting: Literal["none", "min_snr"] = "min_snr"
    min_snr_gamma: float = _bounded(5.0, gt=0.0)


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = _bounded(600, ge=1)
    batch_size: int = _bounded(32, ge=1)
    accumulate_grad_batches: int = _bounded(1, ge=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"  # ddpm/io/precision.py
    lr: float = _bounded(1e-3, gt=0.0)
    warmup_steps: int = _bounded(100, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = _bounded(0.0, ge=0.0)
    grad_clip: float = _bounded(1.0, ge=0.0)
    ema_decay: float = _bounded(0.999, ge=0.0, lt=1.0)
    seed: int = 0
    hflip: bool = True
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = _bounded(1, ge=1)
    num_nodes: int = _bounded(1, ge=1)
    strategy: Literal["auto", "ddp"] = "auto"
    compile: bool = False
    channels_last: Literal["auto", True, False] = "auto"  # ddpm/io/precision.py
    num_workers: int = _bounded(0, ge=0)
    val_every: int = _bounded(200, ge=1)
    val_images: int = _bounded(64, ge=1)
    sample_every: int = _bounded(200, ge=1)
    checkpoint_every: int = _bounded(200, ge=1)
    loggers: list[Literal["dvclive", "mlflow"]] = _list(["dvclive"])


@dataclass(frozen=True)
class SampleConfig:
    n: int = _bounded(200, ge=1)
    sampler: Literal[SAMPLER_NAMES] = "unipc"  # the sampler registry's names
    steps: int = _bounded(10, ge=1)
    eta: float = _bounded(0.0, ge=0.0)
    spacing: Literal[SPACINGS] = "trailing"
    solver_spacing: Literal[SPACINGS] = "trailing"
    variance: Literal["small", "large"] = "small"
    clip_x0: bool = True
    batch_size: int = _bounded(100, ge=1)
    shard_size: int = _bounded(1000, ge=1)
    seed: int = 0
    use_ema: bool = True
    precision: Literal["auto", "32-true", "bf16-mixed"] = "auto"  # ddpm/io/precision.py
    compile: Literal["none", "default", "reduce-overhead"] = "none"
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = _bounded(1, ge=1)
    num_nodes: int = _bounded(1, ge=1)
    sweep_samplers: list[Literal[SAMPLER_NAMES]] = _list(["ddim", "unipc"])
    sweep_steps: list[int] = _bounded([5, 10, 20], ge=1)
    sweep_n: int = _bounded(50, ge=2)


@dataclass(frozen=True)
class FidConfig:
    ref_split: Literal["train", "holdout"] = "train"
    batch_size: int = _bounded(50, ge=1)
    weights: str = ""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"  # where Inception runs
    splits: int = _bounded(4, ge=2)             # FID of this many disjoint sample blocks: ± sd
    kid_subsets: int = _bounded(100, ge=1)      # KID: random subsets averaged (± std over them)
    kid_subset_size: int = _bounded(100, ge=2)  # KID: images per subset, capped at each side's N
    bootstrap: int = _bounded(50, ge=0)         # bootstrap draws for the FID/KID standard errors; 0 = off (never 1)
    max_real: int = _bounded(300, ge=2)         # real images per split Inception sees (FID ref, KID, P/R, memorisation)
    memorisation_train: int = _bounded(300, ge=0)  # training images (+ their flips) memorisation searches; 0 = all


@dataclass(frozen=True)
class AnalysisConfig:
    t_points: int = _bounded(100, ge=1)
    n_images: int = _bounded(32, ge=1)
    seed: int = 0
    nll_images: int = _bounded(32, ge=2)       # bits/dim bound: holdout images (>= 2: an se)
    nll_exact_below: int = _bounded(50, ge=1)  # timesteps 0..this−1 exact (0: the decoder)
    nll_strata: int = _bounded(50, ge=1)       # one timestep drawn per stratum above them


@dataclass(frozen=True)
class ReportConfig:
    title: str = "DDPM experiment report"


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


# ---------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(str(a).lower() if isinstance(a, bool) else repr(a)
                                     for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp))


def _float_text(value: Any) -> Any:
    """A finite number written as text ('2e-4'), as a float; anything else unchanged.

    YAML 1.1 (PyYAML) reads `2e-4` and `1e3`, the way most people write them, as
    strings: it wants a dot and a signed exponent (`2.0e-4`).
    """
    if not isinstance(value, str):
        return value
    try:
        number = float(value.strip())
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    ok = True
    if origin is Literal:
        # By type too: 1 == True in Python, but `channels_last: 1` is not a choice.
        ok = any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    elif origin is list:
        if not isinstance(value, list):
            ok = False
        else:
            (inner,) = typing.get_args(tp)
            return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin in (typing.Union, types.UnionType):
        raise TypeError(f"union types are not supported in config ({key})")
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        value = _float_text(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key} = {value!r}: must be {_type_name(tp)}")
    return value


_BOUND_TEXT = {"ge": ">=", "le": "<=", "gt": ">", "lt": "<"}
_BOUND_TEST = {"ge": lambda v, b: v >= b, "le": lambda v, b: v <= b,
               "gt": lambda v, b: v > b, "lt": lambda v, b: v < b}


def _check_bounds(value: Any, bounds: dict, key: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        for name, bound in bounds.items():
            if not _BOUND_TEST[name](v, bound):
                allowed = " and ".join(f"{_BOUND_TEXT[n]} {b}" for n, b in bounds.items())
                raise ConfigError(f"{key} = {value!r}: must be {allowed}")


def build_section(cls: type, raw: Any, section: str) -> Any:
    """Build the frozen dataclass `cls` from the mapping `raw`, validating every key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown key; allowed keys are "
                          + ", ".join(fields))
    kwargs = {}
    for name, value in raw.items():
        key = f"{section}.{name}"
        value = _coerce(value, hints[name], key)
        _check_bounds(value, fields[name].metadata.get("bounds", {}), key)
        kwargs[name] = value
    return cls(**kwargs)


def params_from_dict(raw: Any) -> Params:
    """Validate a parsed `params.yaml` mapping into `Params`."""
    if not isinstance(raw, dict):
        raise ConfigError("params: the file must hold a mapping of sections")
    sections = {f.name: f for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; allowed sections are "
                          + ", ".join(sections))
    hints = typing.get_type_hints(Params)
    params = Params(**{name: build_section(hints[name], raw.get(name), name)
                       for name in sections})
    _check_steps_within_timesteps(params)
    if params.fid.bootstrap == 1:
        raise ConfigError("fid.bootstrap = 1: one draw has no spread; use 0 (off) or >= 2 "
                          "(e.g. 50)")
    if "dvclive" not in params.train.loggers:
        raise ConfigError(f"train.loggers = {params.train.loggers!r}: must include dvclive (the "
                          "pipeline's metrics and report are read from its files); add mlflow "
                          "beside it, e.g. [dvclive, mlflow]")
    return params


def _check_steps_within_timesteps(params: Params) -> None:
    """Sampler step counts must not exceed T: caught when params load, not after training."""
    sample, timesteps = params.sample, params.diffusion.timesteps
    checks = [("sample.sweep_steps", sample.sweep_steps, max(sample.sweep_steps, default=0))]
    if sample.sampler != "ddpm":  # ancestral DDPM runs all T steps and ignores sample.steps
        checks.insert(0, ("sample.steps", sample.steps, sample.steps))
    for key, value, steps in checks:
        if steps > timesteps:
            raise ConfigError(f"{key} = {value!r}: must be <= diffusion.timesteps ({timesteps}); "
                              f"lower {key} or raise diffusion.timesteps")


def load_params(path: str | Path) -> Params:
    """Read and validate a `params.yaml` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the repository root "
                          "or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__}: "
                          f"{str(err).splitlines()[0]})") from None
    return params_from_dict(raw or {})


def to_dict(config: Any) -> dict:
    """A plain-dict copy of a config (for saving next to outputs)."""
    return dataclasses.asdict(config)
