"""The model specialists: any Florence-2 checkpoint directory or MLflow model annotates images.

This is how round N+1 uses round N's model: ``Florence2Specialist`` asks it for
whole-image tasks (``<OD>``, OCR with regions, captions), and ``Florence2Labels``
asks it to name the regions the published round already has
(``<REGION_TO_CATEGORY>`` on each box).  ``model`` is a local directory in the
Hugging Face layout, or an MLflow URI (``models:/name@alias``, ``runs:/id/path``)
whose artifacts hold such a directory.
"""
from __future__ import annotations

from pathlib import Path

from florence2.geometry import bounding_box
from florence2.vocabulary import CAPTION_TASKS
from lakehouse.specialists.base import _LOADED, Specialist

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
        from florence2 import modeling
        from florence2.predictor import Predictor

        # one copy of the weights per worker, however many of these specialists (tasks, relabelling) use them
        key = f"florence2 weights:{self.model_uri}:{self.device}"
        if key not in _LOADED:
            _LOADED[key] = modeling.load(resolve_model_dir(self.model_uri))
        model, proc = _LOADED[key]
        return Predictor(model, proc, max_new_tokens=self.max_new_tokens, device=self.device, batch_size=self.batch_size)

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


def renamed(region: dict, label: str) -> str:
    """The region's description with its label replaced ('small red circle' -> 'small red square')."""
    old, desc = (region.get("text") or "").strip(), (region.get("description") or "").strip()
    if old and desc.lower().endswith(old.lower()):
        return desc[: len(desc) - len(old)] + label
    return label


class Florence2Labels(Florence2Specialist):
    """The model names each region of the published round (``<REGION_TO_CATEGORY>`` on its box).  Box and
    polygons stay the region's; only the label is the model's, and it replaces a specialist's only
    where the model is right more often on the audit slice (``lakehouse.acceptance``)."""

    name = "florence2_labels"
    takes_regions = True
    relabels = True
    kinds = ("region",)

    def __init__(self, model: str, max_new_tokens: int = 16, version: str | None = None, name: str | None = None,
                 batch_size: int = 16, device: str | None = None):
        super().__init__(model, ("<REGION_TO_CATEGORY>",), max_new_tokens, version, name, batch_size, device)

    def annotate(self, image, image_id, regions=None):
        return self.annotate_batch([image], [image_id], [regions or []])[0]

    def annotate_batch(self, images, image_ids, regions=None):
        from florence2.predictor import Request

        asked = [(k, reg) for k, regs in enumerate(regions or [[] for _ in images]) for reg in regs]
        results = self.model().predict([Request(images[k], "<REGION_TO_CATEGORY>", region=tuple(reg["bbox"]))
                                        for k, reg in asked]) if asked else []
        per_image = [[] for _ in images]
        for (k, reg), res in zip(asked, results):
            label = (res["answer"] or "").strip()
            if label:
                per_image[k].append({"kind": "region", "text": label, "description": renamed(reg, label),
                                     "bbox": list(reg["bbox"]), "polygons": reg.get("polygons"),
                                     "confidence": res["score"]})
        return per_image

