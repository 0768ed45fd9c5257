"""MLflow tracking under $FLD_HOME by default (sqlite store + local artifacts), or any URI."""
from __future__ import annotations

import os

from lakehouse.config import Settings

EXPERIMENT = "fld-florence2"


def tracking_uri(settings: Settings) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"


def configure_mlflow(settings: Settings, experiment: str = EXPERIMENT) -> str:
    import mlflow

    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(settings.mlflow_dir / "artifacts").as_uri())
    mlflow.set_experiment(experiment)
    return uri
