"""A generic adapter for any Hugging Face model directory, through ``transformers.pipeline``.

``task`` picks the mapping: image-classification -> ``class``, object-detection ->
``region``, image-to-text -> ``caption_brief``.
"""
from __future__ import annotations

from pathlib import Path

from lakehouse.specialists.base import Specialist


class HFPipelineSpecialist(Specialist):
    kinds = ("class", "region", "caption_brief")
    TASKS = ("image-classification", "object-detection", "image-to-text")

    def __init__(self, path: str, task: str, name: str | None = None, top_k: int = 1, threshold: float = 0.0):
        if task not in self.TASKS:
            raise ValueError(f"hf_pipeline task must be one of {self.TASKS}, got {task!r}")
        self.path, self.task, self.top_k, self.threshold = str(path), task, top_k, threshold
        self.name = name or f"hf:{Path(self.path).name}"
        self.version = Path(self.path).name

    def load(self):
        from transformers import pipeline

        return pipeline(self.task, model=self.path, device="cpu")

    def annotate(self, image, image_id):
        pipe = self.model()
        if self.task == "image-classification":
            return [{"kind": "class", "text": r["label"], "confidence": r["score"]}
                    for r in pipe(image, top_k=self.top_k)]
        if self.task == "object-detection":
            return [{"kind": "region", "text": r["label"], "description": r["label"], "confidence": r["score"],
                     "bbox": [r["box"]["xmin"], r["box"]["ymin"], r["box"]["xmax"], r["box"]["ymax"]]}
                    for r in pipe(image, threshold=self.threshold)]
        return [{"kind": "caption_brief", "text": r["generated_text"].strip(), "confidence": None}
                for r in pipe(image) if r["generated_text"].strip()]
