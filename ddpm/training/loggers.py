"""The run's loggers (`train.loggers`): DVCLive always, MLflow beside it on request.

DVCLive is required: the pipeline's metrics, plots and the report are read from
its files. MLflow (the optional extra `.[mlflow]`) gets the same params and
metrics through Lightning's `MLFlowLogger`, plus the sample grids and, at the
end, the trained weights as artifacts. Its store is `MLFLOW_TRACKING_URI` when
set, else a local SQLite database with its artifacts in `mlruns/` (MLflow 3
refuses its old plain-file store unless told otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from ddpm.errors import ConfigError
from ddpm.io.atomic import write_json_atomically

EXPERIMENT = "ddpm"
RUN_FILE = "mlflow_run.json"  # beside the resume checkpoint: a resumed run continues its MLflow run
# MLflow's SQL store on SQLAlchemy 2.1: third-party deprecation noise, nothing for the user to do.
warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy is deprecated.*")


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("train.loggers includes mlflow, but MLflow is not installed: "
                          "pip install -e \".[mlflow]\", or set train.loggers to [dvclive]") \
            from None


def tracking(mlruns_dir: Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None for the server's)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    root = Path(mlruns_dir).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def mlflow_logger(mlruns_dir: Path, state_dir: Path, resume: bool) -> MLFlowLogger:
    """An MLFlowLogger; on resume, the run that the checkpoint's training started."""
    require_mlflow()
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # DB set-up chatter
    logging.getLogger("alembic").setLevel(logging.WARNING)
    Path(mlruns_dir).mkdir(parents=True, exist_ok=True)
    uri, artifacts = tracking(mlruns_dir)
    saved = Path(state_dir) / RUN_FILE
    run_id = None
    if resume and saved.is_file():
        previous = json.loads(saved.read_text())
        run_id = previous["run_id"] if previous.get("tracking_uri") == uri else None
    logger = MLFlowLogger(experiment_name=EXPERIMENT, tracking_uri=uri,
                          artifact_location=artifacts, run_id=run_id)
    if rank_zero_only.rank == 0:  # the other ranks' loggers are dummies without a run
        write_json_atomically(saved, {"tracking_uri": uri, "run_id": logger.run_id})
    return logger


def build_loggers(names: list[str], live_dir: Path, mlruns_dir: Path, state_dir: Path,
                  resume: bool) -> list[Logger]:
    """DVCLive first (the pipeline reads its files), then MLflow if `names` asks for it."""
    from dvclive.lightning import DVCLiveLogger  # here, so build_trainer works without dvclive

    # An out in dvc.yaml: present even when MLflow logs elsewhere or not at all.
    Path(mlruns_dir).mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = [DVCLiveLogger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False,
                                           resume=resume)]
    if "mlflow" in names:
        loggers.append(mlflow_logger(mlruns_dir, state_dir, resume))
    return loggers


def log_image(logger: Logger, name: str, image: Image.Image) -> None:
    """Store a PIL image with a logger that can take one (MLflow, DVCLive); others skip it."""
    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, image, artifact_file=name)
    elif hasattr(logger.experiment, "log_image"):
        logger.experiment.log_image(name, image)


def log_final(loggers: list[Logger], models_dir: Path, metrics: dict, step: int) -> None:
    """End-of-run metrics and, for MLflow, the trained weights (models/) as artifacts."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            logger.log_metrics(metrics, step=step)
            logger.experiment.log_artifacts(logger.run_id, str(models_dir), artifact_path="models")
