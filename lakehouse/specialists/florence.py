"""The model specialist: any Florence-2 checkpoint directory or MLflow model annotates images.

This is how round N+1 uses round N's model.  ``model`` is a local directory in the
Hugging Face layout, or an MLflow URI (``models:/name@alias``, ``runs:/id/path``)
whose artifacts hold such a directory.
"""
from __future__ import annotations

from pathlib import Path

from florence2.geometry import bounding_box
from florence2.vocabulary import CAPTION_TASKS
from lakehouse.specialists.base import Specialist

TASK_KINDS = {task: kind for kind, task in CAPTION_TASKS.items()} | {"<OD>": "region", "<OCR_WITH_REGION>": "word"}


def resolve_model_dir(model: str) -> Path:
    if "://" in model or model.startswith(("models:/", "runs:/")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(model))
        found = [p.parent for p in local.rglob("config.json") if (p.parent / "model.safetensors").exists()]
        if not found:
            raise FileNotFoundError(f"no Florence-2 model directory inside MLflow artifacts of {model}")
        return found[0]
    path = Path(model)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{model} is not a Florence-2 model directory (no config.json)")
    return path


class Florence2Specialist(Specialist):
    """One model per Python worker (on its GPU when it has one); every image of an Arrow batch and
    every task go through the predictor's batched path in one call."""

    name = "florence2"
    is_model = True
    batched = True
    kinds = tuple(sorted(set(TASK_KINDS.values())))

    def __init__(self, model: str, tasks=tuple(TASK_KINDS), max_new_tokens: int = 256, version: str | None = None,
                 name: str | None = None, batch_size: int = 16, device: str | None = None):
        self.model_uri, self.tasks, self.max_new_tokens = str(model), tuple(tasks), max_new_tokens
        self.batch_size, self.device = batch_size, device
        self.version = version or Path(str(model)).name
        if name:
            self.name = name

    def load(self):
        from florence2.predictor import Predictor

        return Predictor.from_pretrained(resolve_model_dir(self.model_uri), max_new_tokens=self.max_new_tokens,
                                         device=self.device, batch_size=self.batch_size)

    def annotate(self, image, image_id):
        return self.annotate_batch([image], [image_id])[0]

    def annotate_batch(self, images, image_ids):
        from florence2.predictor import Request

        # task-major order: a predictor batch holds one task, so its prompts pad to one length
        results = self.model().predict([Request(im, t) for t in self.tasks for im in images])
        per_image = [[] for _ in images]
        for k, res in enumerate(results):
            per_image[k % len(images)] += self._annotations(res)
        return per_image

    @staticmethod
    def _annotations(res) -> list[dict]:
        out = []
        kind, ans = TASK_KINDS[res["task"]], res["answer"]
        if kind.startswith("caption"):
            if ans:
                out.append({"kind": kind, "text": ans, "confidence": res["score"]})
        elif kind == "region":
            out += [{"kind": "region", "text": lab, "description": lab, "bbox": b, "confidence": sc}
                    for b, lab, sc in zip(ans["bboxes"], ans["labels"], ans["scores"]) if lab]
        else:
            out += [{"kind": "word", "text": lab, "quad": [float(v) for v in q], "bbox": bounding_box(q),
                     "confidence": sc} for q, lab, sc in zip(ans["quad_boxes"], ans["labels"], ans["scores"])]
        return out
