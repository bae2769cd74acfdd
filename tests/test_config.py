"""Config validation: one clear line naming key, value and what is allowed."""

from pathlib import Path

import pytest

import tiny
from ddpm.config import SECTIONS, ConfigError, Sections, load_params, sections_from_dict
from ddpm.data.config import DataConfig
from ddpm.diffusion.config import DiffusionConfig
from ddpm.evaluation.config import FidConfig
from ddpm.models.config import ModelConfig
from ddpm.reporting.config import Params, ReportConfig, load_all, params_from_dict
from ddpm.sampling.config import SampleConfig
from ddpm.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("raw, message", [
    ({"model": {"img_sz": 64}}, "model.img_sz: unknown key; allowed keys are arch, img_size"),
    ({"modle": {}}, "modle: unknown section"),
    ({"model": {"img_size": "64"}}, "model.img_size = '64': must be an integer"),
    ({"model": {"img_size": 4}}, "model.img_size = 4: must be >= 8"),
    ({"data": {"crop": "middle"}}, "data.crop = 'middle': must be one of 'celeba', 'center', 'none'"),
    ({"data": {"holdout_fraction": 1.0}}, "data.holdout_fraction = 1.0: must be > 0.0 and < 1.0"),
    ({"model": {"down_attn": [True, "no"]}}, "model.down_attn[1] = 'no': must be true or false"),
    ({"model": {"channels": [32, 0]}}, "model.channels = [32, 0]: must be >= 1"),
    ({"train": {"hflip": 1}}, "train.hflip = 1: must be true or false"),
    ({"model": "big"}, "model: must be a mapping"),
])
def test_bad_values_name_key_value_and_allowed(raw, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_ints_are_accepted_for_floats_and_sections_default():
    params = params_from_dict({"train": {"lr": 1}, "model": {"img_size": 64}})
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.model.img_size == 64 and params.data.source == "demo"


def test_stage_reports_bad_params_in_one_line_without_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  img_size: big\n")
    proc = tiny.run_stage("prepare", "--params", tmp_path / "params.yaml", "--out", tmp_path / "out")
    assert proc.exit_code == 2
    assert proc.stderr.strip() == "error: model.img_size = 'big': must be an integer"
    assert not (tmp_path / "out").exists()


def test_invalid_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml", train=TrainConfig)


@pytest.mark.parametrize("text, value", [("2e-4", 2e-4), ("1e3", 1000.0), (" 3E-5 ", 3e-5)])
def test_float_keys_accept_numbers_yaml_reads_as_text(tmp_path, text, value):
    # PyYAML reads 2e-4 (no dot) as the string '2e-4'; people write learning rates that way.
    (tmp_path / "params.yaml").write_text(f"train:\n  lr: {text}\n")
    params = load_params(tmp_path / "params.yaml", train=TrainConfig)
    assert params.train.lr == value and isinstance(params.train.lr, float)


@pytest.mark.parametrize("raw, message", [
    ({"train": {"lr": "fast"}}, "train.lr = 'fast': must be a number"),
    ({"train": {"lr": "nan"}}, "train.lr = 'nan': must be a number"),
    ({"train": {"lr": "-2e-4"}}, "train.lr = -0.0002: must be > 0.0"),
    ({"model": {"img_size": "64"}}, "model.img_size = '64': must be an integer"),
])
def test_text_that_is_not_a_finite_number_is_still_refused(raw, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    assert str(err.value) == message


DEFAULT_STEPS = SampleConfig().steps
SMALL_T = DEFAULT_STEPS - 1  # a T that refuses the default steps
PREVIEW_FITS = {"preview_steps": 5}  # train.preview_steps within SMALL_T: the sample rule speaks


@pytest.mark.parametrize("raw, message", [
    ({"diffusion": {"timesteps": SMALL_T}, "train": PREVIEW_FITS},
     f"sample.steps = {DEFAULT_STEPS}: must be <= diffusion.timesteps ({SMALL_T}); lower sample.steps or raise "
     "diffusion.timesteps"),
    ({"diffusion": {"timesteps": 15}, "sample": {"steps": 15}},
     "sample.sweep_steps = [5, 10, 20]: must be <= diffusion.timesteps (15); lower "
     "sample.sweep_steps or raise diffusion.timesteps"),
    ({"diffusion": {"timesteps": SMALL_T}},
     f"train.preview_steps = {TrainConfig().preview_steps}: must be <= diffusion.timesteps "
     f"({SMALL_T}); lower train.preview_steps or raise diffusion.timesteps"),
])
def test_ddim_steps_beyond_timesteps_are_refused_when_params_load(raw, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    assert str(err.value) == message


def test_ddpm_sampler_ignores_sample_steps_so_they_are_not_checked():
    params = params_from_dict({"diffusion": {"timesteps": SMALL_T},
                               "sample": {"sampler": "ddpm", "sweep_steps": [5]},
                               "train": {"preview_sampler": "ddpm"}})
    assert params.sample.steps == DEFAULT_STEPS > params.diffusion.timesteps == SMALL_T
    assert params.train.preview_steps > SMALL_T


@pytest.mark.parametrize("raw, message", [
    ({"diffusion": {"timesteps": 1000}, "sample": {"sampler": "ddim", "steps": 2000}},
     "sample.steps = 2000: must be <= diffusion.timesteps (1000)"),
    ({"diffusion": {"timesteps": 100}, "sample": {"sampler": "ddim", "steps": 101}},
     "sample.steps = 101"),
    ({"sample": {"steps": 0}}, "sample.steps = 0"),
    ({"sample": {"spacing": "leading"}}, "sample.spacing = 'leading'"),
    ({"sample": {"solver_spacing": "leading"}}, "sample.solver_spacing = 'leading'"),
    ({"sample": {"variance": "medium"}}, "sample.variance = 'medium'"),
    ({"sample": {"eta": -0.5}}, "sample.eta = -0.5: must be >= 0"),
    ({"diffusion": {"prediction": "score"}}, "diffusion.prediction = 'score'"),
])
def test_sampler_settings_are_refused_when_params_load(raw, message):
    """The one validation point: the samplers trust their settings, so each bad one
    is refused here, naming its key, before any sampling."""
    with pytest.raises(ConfigError) as err:
        sections_from_dict(raw, diffusion=DiffusionConfig, sample=SampleConfig)
    assert str(err.value).startswith(message)


def test_a_sweep_of_ddpm_alone_reads_no_sweep_steps():
    """Whether a sampler takes steps is the registry's answer (`takes_steps`), here too."""
    raw = {"diffusion": {"timesteps": 4},
           "sample": {"sampler": "ddpm", "sweep_samplers": ["ddpm"]}}
    sample = sections_from_dict(raw, diffusion=DiffusionConfig, sample=SampleConfig).sample
    assert sample.steps == DEFAULT_STEPS and max(sample.sweep_steps) > 4


@pytest.mark.parametrize("stage, message", [
    ("generate", f"sample.steps = {DEFAULT_STEPS}: must be <= diffusion.timesteps"),
    ("train", f"train.preview_steps = {TrainConfig().preview_steps}: must be <= diffusion.timesteps"),
])
def test_stage_refuses_steps_beyond_timesteps_before_doing_anything(tmp_path, stage, message):
    # The stages that load the diffusion section with the sample or train section; each
    # stage's outputs are its default paths under tmp_path.
    (tmp_path / "params.yaml").write_text(f"diffusion:\n  timesteps: {SMALL_T}\n")
    proc = tiny.run_stage(stage, "--params", "params.yaml", cwd=tmp_path)
    assert proc.exit_code == 2
    assert proc.stderr.strip().startswith(f"error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# ------------------------------------------------------------ loading only some sections


def test_a_stage_loads_only_the_sections_it_asks_for():
    raw = {"data": {"demo_size": 5}, "sample": {"stepz": 3}, "fid": {"bootstrap": 1}}
    loaded = sections_from_dict(raw, data=DataConfig, model=ModelConfig)
    assert loaded == Sections(data=DataConfig(demo_size=5), model=ModelConfig())
    assert not hasattr(loaded, "sample")   # its bad key and fid's bad value: not this stage's
    with pytest.raises(AttributeError):
        loaded.data = DataConfig()         # read-only, like the sections themselves


@pytest.mark.parametrize("raw, sections, message", [
    ({"modle": {}}, {"data": DataConfig}, "modle: unknown section; allowed sections are "
                                         "data, model, autoencoder, diffusion, train, sample, fid, analysis, report"),
    ({"sample": {"stepz": 3}}, {"sample": SampleConfig},
     "sample.stepz: unknown key; allowed keys are n, sampler, steps"),
    ({"fid": {"bootstrap": 1}}, {"fid": FidConfig},
     "fid.bootstrap = 1: one draw has no spread; use 0 (off) or >= 2 (e.g. 50)"),
    ({"train": {"loggers": ["mlflow"]}}, {"train": TrainConfig},
     "train.loggers = ['mlflow']: must include dvclive (the pipeline's metrics and report are "
     "read from its files); add mlflow beside it, e.g. [dvclive, mlflow]"),
    ({"train": {"preview_sampler": "euler"}}, {"train": TrainConfig},
     "train.preview_sampler = 'euler': must be one of 'ddpm', 'ddim', 'dpmpp_2m', 'unipc'"),
    ({"diffusion": {"timesteps": 4}, "sample": {"sampler": "ddpm"}},
     {"diffusion": DiffusionConfig, "sample": SampleConfig},
     "sample.sweep_steps = [5, 10, 20]: must be <= diffusion.timesteps (4); lower "
     "sample.sweep_steps or raise diffusion.timesteps"),
])
def test_the_sections_a_stage_loads_are_validated_as_a_whole_load_is(raw, sections, message):
    with pytest.raises(ConfigError) as err:
        sections_from_dict(raw, **sections)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_steps_rules_need_both_sections_loaded():
    # T is not known without the diffusion section: the rules wait for a stage that loads both.
    raw = {"diffusion": {"timesteps": 4}}
    assert sections_from_dict(raw, sample=SampleConfig).sample == SampleConfig()
    assert sections_from_dict(raw, train=TrainConfig).train == TrainConfig()


def test_params_has_one_field_per_section_in_the_files_order(tmp_path):
    assert tuple(f for f in Params.__dataclass_fields__) == SECTIONS
    (tmp_path / "params.yaml").write_text("report:\n  title: t\n")
    assert load_all(tmp_path / "params.yaml") == Params(report=ReportConfig(title="t"))
