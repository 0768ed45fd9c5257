"""Florence-2 as an MLflow pyfunc model: what ``mlflow models serve`` runs.

Input rows: ``image`` (base64 text or bytes), ``task`` (a task token), optional
``text`` and ``region`` (JSON text "[x0, y0, x1, y1]", pixels).  Output rows: ``task``,
``raw_text`` (the model's answer text) and ``answer`` (the parsed result as JSON:
boxes, labels, polygons, quads, scores or text).  Requests are batched inside
``predict``.

The server protects itself with ``ServingLimits``, logged as the model's config and
overridable by the operator at deploy time without re-logging
(``SERVING_MODEL_CONFIG='{"max_images": 16}' mlflow models serve ...``): every row is
checked from its image header before any image is decoded (formats as ingest, pixels
per image and per request, encoded bytes, text length, prompt tokens), images are
decoded one batch at a time, and work stops at a deadline.  A bad request is a 400
that names the row; a request over a budget a 413-like 429; a deadline a 504; anything
else a 500 whose message holds an id to find in the server log, never a stack trace.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import uuid
import warnings

import mlflow.pyfunc

_log = logging.getLogger("florence2.serving")


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    max_images: int = 64                    # rows per request
    max_image_pixels: int = 40_000_000      # per image (header size, before decoding)
    max_total_pixels: int = 200_000_000     # per request: bounds the decoded memory of a request
    max_image_bytes: int = 20_000_000       # encoded bytes per image
    max_text_chars: int = 2_000             # the text input; the prompt is checked in tokens too
    deadline_s: float = 60.0                # wall clock per request; work stops at the next checkpoint
    predict_batch_size: int = 8           # images per model batch (not "batch_size": the run logs both as params)
    max_new_tokens: int = 256

    @classmethod
    def from_config(cls, config: dict | None) -> "ServingLimits":
        """The logged config (or the operator's ``SERVING_MODEL_CONFIG``); values cast to the defaults' types."""
        types = {f.name: type(f.default) for f in dataclasses.fields(cls)}
        unknown = set(config or {}) - set(types)
        if unknown:
            raise ValueError(f"unknown serving limits {sorted(unknown)}; known: {sorted(types)}")
        return cls(**{k: types[k](v) for k, v in (config or {}).items()})


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
            value = json.loads(value[:200])
        except json.JSONDecodeError:
            raise ValueError(f"request {index}: 'region' must be JSON [x0, y0, x1, y1], got {value[:60]!r}") from None
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"request {index}: 'region' must be 4 numbers [x0, y0, x1, y1]") from None
    if len(out) != 4 or any(v != v or abs(v) == float("inf") for v in out):
        raise ValueError(f"request {index}: 'region' must be 4 finite numbers [x0, y0, x1, y1]")
    return out


class OverBudget(ValueError):
    """A request within the format but over one of the operator's budgets."""


class Florence2PyFunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from florence2.predictor import Predictor
        from florence2.vocabulary import IMAGE_FORMATS

        self.limits = ServingLimits.from_config(getattr(context, "model_config", None))
        self.predictor = Predictor.from_pretrained(
            context.artifacts["model_dir"], formats=IMAGE_FORMATS, max_image_pixels=self.limits.max_image_pixels,
            batch_size=self.limits.predict_batch_size, max_new_tokens=self.limits.max_new_tokens)

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_EXHAUSTED

        from florence2.predictor import PredictionInputError, PredictionTimeout

        try:
            return self._predict(model_input)
        except OverBudget as e:
            raise MlflowException(str(e), error_code=RESOURCE_EXHAUSTED) from None
        except (ValueError, PredictionInputError) as e:  # the caller's fault: the server answers 400
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        except PredictionTimeout as e:
            raise MlflowException(str(e), error_code=DEADLINE_EXCEEDED) from None
        except Exception:  # ours: the trace goes to the server log, the caller gets an id to quote
            ref = uuid.uuid4().hex[:12]
            _log.exception("prediction failed (ref %s)", ref)
            raise MlflowException(f"internal error (ref {ref}; see the server log)", error_code=INTERNAL_ERROR) from None

    def _predict(self, model_input):
        import pandas as pd

        from florence2.predictor import Request

        lim = self.limits
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        if len(rows) > lim.max_images:
            raise OverBudget(f"{len(rows)} images in one request; the limit is {lim.max_images}")
        reqs, pixels = [], 0
        for i, r in enumerate(rows):
            data = decode_image_field(r.get("image"), i)
            if len(data) > lim.max_image_bytes:
                raise OverBudget(f"request {i}: the image is {len(data)} bytes; the limit is {lim.max_image_bytes}")
            text = r.get("text")
            text = None if text is None or text != text else str(text)
            if text is not None and len(text) > lim.max_text_chars:
                raise ValueError(f"request {i}: the text is {len(text)} characters; the limit is {lim.max_text_chars}")
            reqs.append(Request(data, str(r.get("task")), text, _region(r.get("region"), i)))
        prepared = self.predictor.prepare(reqs)  # headers only: formats, pixels, prompt tokens
        pixels = sum(w * h for w, h in prepared[2])
        if pixels > lim.max_total_pixels:
            raise OverBudget(f"the request's images hold {pixels} pixels; the limit is {lim.max_total_pixels}")
        out = self.predictor.predict(reqs, deadline_s=lim.deadline_s, prepared=prepared)
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


def log_and_register(model_dir, registered_name: str | None, alias: str | None = "candidate",
                     limits: ServingLimits | None = None) -> dict:
    """Log the model directory as a pyfunc in the active run (``limits`` as its config); register it
    and set an alias."""
    from pathlib import Path

    import mlflow

    pkg = Path(__file__).resolve().parent
    with warnings.catch_warnings():
        # the signature is explicit; an input example would run the model at logging time
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        info = mlflow.pyfunc.log_model(
            # from code, not a pickled object: loading the model runs our file, never unpickles code
            name="model", python_model=str(pkg / "pyfunc_model.py"), artifacts={"model_dir": str(model_dir)},
            model_config=dataclasses.asdict(limits or ServingLimits()),
            code_paths=[str(pkg)], signature=signature(), registered_model_name=registered_name,
            pip_requirements=["torch", "transformers", "tokenizers", "pillow", "numpy", "pandas"])
    out = {"model_uri": info.model_uri, "registered_name": registered_name, "version": None}
    if registered_name:
        version = info.registered_model_version
        out["version"] = version
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(registered_name, alias, str(version))
    return out

