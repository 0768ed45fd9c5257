"""Florence-2 as an MLflow pyfunc model: what ``mlflow models serve`` runs.

Input rows: ``image`` (base64 text or bytes), ``task`` (a task token), optional
``text`` and ``region`` (JSON text "[x0, y0, x1, y1]", pixels).  Output rows: ``task``,
``raw_text`` (the model's answer text) and ``answer`` (the parsed result as JSON:
boxes, labels, polygons, quads, scores or text).  Requests are batched inside
``predict``; image size and request count are limited by model config.
"""
from __future__ import annotations

import base64
import binascii
import json

import mlflow.pyfunc

MAX_IMAGES = 64
MAX_IMAGE_PIXELS = 40_000_000


def decode_image_field(value, index: int) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"request {index}: 'image' must be base64 text or bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"request {index}: 'image' is not valid base64") from None


def _region(value, index: int):
    """None, a JSON array text or a sequence -> 4 floats (or None)."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"request {index}: 'region' must be JSON [x0, y0, x1, y1], got {value[:60]!r}") from None
    return list(value)


class Florence2PyFunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from florence2.predictor import Predictor

        self.predictor = Predictor.from_pretrained(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from florence2.predictor import PredictionInputError

        try:
            return self._predict(model_input, params)
        except (ValueError, PredictionInputError) as e:  # the caller's fault: the server answers 400
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None

    def _predict(self, model_input, params=None):
        import io

        import pandas as pd
        from PIL import Image

        from florence2.predictor import Request

        params = params or {}
        max_images = int(params.get("max_images", MAX_IMAGES))
        max_pixels = int(params.get("max_image_pixels", MAX_IMAGE_PIXELS))
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        if len(rows) > max_images:
            raise ValueError(f"{len(rows)} images in one request; the limit is {max_images}")
        reqs = []
        for i, r in enumerate(rows):
            data = decode_image_field(r.get("image"), i)
            try:
                w, h = Image.open(io.BytesIO(data)).size
            except Exception:
                raise ValueError(f"request {i}: 'image' is not an image ({len(data)} bytes)") from None
            if w * h > max_pixels:
                raise ValueError(f"request {i}: image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
            text = r.get("text")
            region = _region(r.get("region"), i)
            reqs.append(Request(data, str(r.get("task")), None if text is None or text != text else text, region))
        out = self.predictor.predict(reqs)
        return pd.DataFrame([{"task": o["task"], "raw_text": o["text"], "answer": json.dumps(o["answer"])}
                             for o in out])


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        # region travels as JSON text ("[x0, y0, x1, y1]"): an optional array column breaks
        # MLflow's schema check when some rows of a request have no region
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "task"), ColSpec("string", "text", required=False),
                       ColSpec("string", "region", required=False)]),
        outputs=Schema([ColSpec("string", "task"), ColSpec("string", "raw_text"), ColSpec("string", "answer")]))


def log_and_register(model_dir, registered_name: str | None, alias: str | None = "candidate") -> dict:
    """Log the model directory as a pyfunc in the active run; register it and set an alias."""
    from pathlib import Path

    import mlflow

    pkg = Path(__file__).resolve().parent
    info = mlflow.pyfunc.log_model(
        name="model", python_model=Florence2PyFunc(), artifacts={"model_dir": str(model_dir)},
        code_paths=[str(pkg)], signature=signature(), registered_model_name=registered_name,
        pip_requirements=["torch", "transformers", "tokenizers", "pillow", "numpy", "pandas"])
    out = {"model_uri": info.model_uri, "registered_name": registered_name, "version": None}
    if registered_name:
        version = info.registered_model_version
        out["version"] = version
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(registered_name, alias, str(version))
    return out
