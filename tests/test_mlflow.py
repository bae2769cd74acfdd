"""train.loggers: MLflow beside DVCLive, read back with MLflow's own client."""

from __future__ import annotations

import sys

import pytest

import tiny
from ddpm.errors import ConfigError
from ddpm.training.loggers import mlflow_logger, tracking
from ddpm.training.run import train


def test_mlflow_gets_params_metric_histories_sample_grids_and_weights(tmp_path, monkeypatch,
                                                                       one_thread):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # A store named by URI keeps its artifacts where MLflow's default says: ./mlruns
    # of the working directory, which must be the test's, not the repository's.
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    params = tiny.params(train={"max_steps": 20, "loggers": ["dvclive", "mlflow"]})
    train(params, tiny.prepared(tmp_path / "data", n=32), tmp_path / "models",
          tmp_path / "state", tmp_path / "live", mlruns_dir=tmp_path / "mlruns", progress=False)

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ddpm").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train/max_steps"] == "20"
    assert run.data.params["model/channels"] == "[16, 32]"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [9, 19]
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2  # steps 10, 20
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert grids == ["samples/step-0000010.png", "samples/step-0000020.png"]
    weights = {a.path for a in client.list_artifacts(run.info.run_id, "models")}
    assert {"models/ema.safetensors", "models/config.json"} <= weights
    # DVCLive still writes the pipeline's metrics; the local store stays unused.
    assert (tmp_path / "live" / "metrics.json").is_file()
    assert list((tmp_path / "mlruns").iterdir()) == []
    # Training resumed from this run's checkpoint logs into the same MLflow run.
    resumed = mlflow_logger(tmp_path / "mlruns", tmp_path / "state", resume=True)
    assert resumed.run_id == run.info.run_id
    assert mlflow_logger(tmp_path / "mlruns", tmp_path / "state", resume=False).run_id != \
        run.info.run_id


def test_without_mlflow_tracking_uri_the_store_is_mlruns(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, artifacts = tracking(tmp_path / "mlruns")
    assert uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert artifacts == (tmp_path / "mlruns" / "artifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking(tmp_path / "mlruns") == ("http://tracking:5000", None)


def test_mlflow_without_the_extra_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)      # import mlflow → ImportError
    params = tiny.params(train={"loggers": ["dvclive", "mlflow"]})
    with pytest.raises(ConfigError,
                       match=r'MLflow is not installed: pip install -e "\.\[mlflow\]"'):
        train(params, tmp_path / "no-data", tmp_path / "models", tmp_path / "state",
              tmp_path / "live", mlruns_dir=tmp_path / "mlruns", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_dvclive_cannot_be_dropped():
    with pytest.raises(ConfigError, match=r"train.loggers = \['mlflow'\]: must include dvclive"):
        tiny.params(train={"loggers": ["mlflow"]})
    with pytest.raises(ConfigError, match=r"train.loggers\[1\] = 'wandb': must be one of"):
        tiny.params(train={"loggers": ["dvclive", "wandb"]})
