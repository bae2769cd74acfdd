"""The parsing machinery for `params.yaml`: field helpers, validation, the loader.

Each section's frozen dataclass lives in the package that owns it, in a module
named config.py (ddpm/data/config.py holds `DataConfig`, ddpm/sampling/config.py
`SampleConfig`, ...; ddpm/reporting/config.py `Params`, all of them). A stage
loads only the sections it reads (`load_params(path, data=DataConfig, ...)`), so
DVC, which hashes every file a stage imports, never re-runs a stage for a default
in a section it does not load. This module imports nothing from ddpm but
ddpm.errors: every stage imports it (tests/test_stage_deps.py).

Validated once, at the edge: an unknown section or key, a wrong type or an
out-of-range value raises `ConfigError` with one line naming the key, the bad
value and what is allowed. A rule on one section sits in that section's
`__post_init__`; a rule across sections in its `check_sections` method, which
the loader calls with the other sections it loaded. Below this module, code
receives explicit, already valid values and never re-reads `params.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from ddpm.errors import ConfigError

# The sections params.yaml may hold, in its order (ddpm/reporting/config.py's `Params`
# has one field each). Plain names, so that knowing them imports no section's code.
SECTIONS = ("data", "model", "autoencoder", "diffusion", "train", "sample", "fid", "analysis", "report")


def bounded(default: Any, *, ge: float | None = None, le: float | None = None,
            gt: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field whose numeric value must lie in the given bounds."""
    bounds = {k: v for k, v in dict(ge=ge, le=le, gt=gt, lt=lt).items() if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"bounds": bounds})
    return field(default=default, metadata={"bounds": bounds})


def listed(default: list) -> Any:
    """A dataclass field holding a list (each instance gets its own copy of `default`)."""
    return field(default_factory=lambda: [list(x) if isinstance(x, list) else x for x in default])


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


def build_section(cls: type, raw: Any, section: str,
                  key: Callable[[str], str] | None = None) -> Any:
    """Build the frozen dataclass `cls` from the mapping `raw`, validating every key.

    Messages name a field as `key(name)`, by default `section.name` (params.yaml's
    spelling); the command line passes its own (`--batch-size`).
    """
    key = key or (lambda name: f"{section}.{name}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{key(unknown[0])}: unknown key; allowed keys are "
                          + ", ".join(fields))
    kwargs = {}
    for name, value in raw.items():
        value = _coerce(value, hints[name], key(name))
        _check_bounds(value, fields[name].metadata.get("bounds", {}), key(name))
        kwargs[name] = value
    return cls(**kwargs)


class Sections(types.SimpleNamespace):
    """The sections a caller loaded, as read-only attributes (`sections.train.lr`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def sections_from_dict(raw: Any, **sections: type) -> Sections:
    """Validate the `sections` (name=dataclass) of a parsed `params.yaml` mapping.

    The file's section names are all checked; keys and values only in the sections
    asked for. A section missing from the file takes its defaults. Once all are built,
    each one's `check_sections(loaded)` (when it has one) runs its rules across sections,
    in `SECTIONS` order.
    """
    asked = sorted(set(sections) - set(SECTIONS))
    if asked:
        raise TypeError(f"not params.yaml sections: {', '.join(asked)}")
    if not isinstance(raw, dict):
        raise ConfigError("params: the file must hold a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section; allowed sections are "
                          + ", ".join(SECTIONS))
    names = [name for name in SECTIONS if name in sections]
    loaded = {name: build_section(sections[name], raw.get(name), name) for name in names}
    for name in names:
        check = getattr(loaded[name], "check_sections", None)
        if check is not None:
            check(loaded)
    return Sections(**loaded)


def load_params(path: str | Path, **sections: type) -> Sections:
    """Read a `params.yaml` file and validate the `sections` asked for (name=dataclass).

    `load_params("params.yaml", model=ModelConfig, train=TrainConfig).train.lr`; every
    section at once: `ddpm.reporting.config.load_all`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the repository root "
                          "or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__}: "
                          f"{str(err).splitlines()[0]})") from None
    return sections_from_dict(raw or {}, **sections)


def to_dict(config: Any) -> dict:
    """A plain-dict copy of a config (for saving next to outputs)."""
    return dataclasses.asdict(config)
