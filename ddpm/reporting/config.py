"""The `report` section and `Params`, every section of params.yaml at once.

Only what reads every section imports this module (the report stage, the `ddpm`
command, scripts and tests): it imports every package's config module. A stage
that reads a few sections loads just those (`ddpm.config.load_params`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm.autoencoder.config import AutoencoderConfig
from ddpm.config import SECTIONS, load_params, sections_from_dict
from ddpm.data.config import DataConfig
from ddpm.diffusion.config import DiffusionConfig
from ddpm.evaluation.config import AnalysisConfig, FidConfig
from ddpm.models.config import ModelConfig
from ddpm.sampling.config import SampleConfig
from ddpm.training.config import TrainConfig


@dataclass(frozen=True)
class ReportConfig:
    title: str = "DDPM experiment report"


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def section_classes() -> dict[str, type]:
    """Every section's name → its dataclass, in params.yaml's order."""
    classes = typing.get_type_hints(Params)
    assert tuple(classes) == SECTIONS, "Params and ddpm.config.SECTIONS name other sections"
    return classes


def params_from_dict(raw: Any) -> Params:
    """Validate a parsed `params.yaml` mapping into `Params`, every section and rule."""
    return Params(**vars(sections_from_dict(raw, **section_classes())))


def load_all(path: str | Path) -> Params:
    """Read and validate a `params.yaml` file, every section (`load_params` for some)."""
    return Params(**vars(load_params(path, **section_classes())))

