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
def promote(name: str, model_uri: str, new_score: float) -> bool:
    """Point ``champion`` at the evaluated version if it beats the current champion's score."""
    import mlflow

    client = mlflow.MlflowClient()
    if not model_uri.startswith("models:/"):
        raise ValueError("--promote needs a registered model URI (models:/name@alias or models:/name/version)")
    ref = model_uri[len("models:/"):]
    mv = client.get_model_version_by_alias(*ref.split("@", 1)) if "@" in ref else client.get_model_version(*ref.split("/", 1))
    try:
        champ = client.get_model_version_by_alias(name, "champion")
        best = float(champ.tags.get("fld.eval_score", "-inf"))
    except Exception:  # no champion yet
        champ, best = None, float("-inf")
    if champ is None or champ.version != mv.version:
        client.set_model_version_tag(name, mv.version, "fld.eval_score", f"{new_score:.6f}")
    if new_score > best:
        client.set_registered_model_alias(name, "champion", mv.version)
        print(f"[evaluate] champion -> version {mv.version} (score {new_score:.4f} > {best:.4f})")
        return True
    print(f"[evaluate] champion stays version {champ.version} (score {best:.4f} >= {new_score:.4f})")
    return False
