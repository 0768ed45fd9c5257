"""Specialists: models that annotate images, run inside Spark over partitions.

A specialist declares its ``name``, ``version`` and the annotation ``kinds`` it
produces, loads its model once per Python worker (``load``), and turns one image
into annotation dicts (``annotate``).  Which specialists run is configuration:
``from_config([{"type": "tesseract"}, {"type": "florence2", "model": "path"},
{"type": "python", "class": "pkg.mod:MySpecialist", "kwargs": {...}}])``.
"""
from __future__ import annotations

import importlib

from lakehouse.specialists.base import Specialist, region_lists, run_specialists, split_errors

REGISTRY = {
    "tesseract": "lakehouse.specialists.ocr:TesseractOCR",
    "rapidocr": "lakehouse.specialists.ocr:RapidOCRSpecialist",
    "contours": "lakehouse.specialists.regions:ContourRegions",
    "florence2": "lakehouse.specialists.florence:Florence2Specialist",
    "florence2_labels": "lakehouse.specialists.florence:Florence2Labels",
    "hf_pipeline": "lakehouse.specialists.hf:HFPipelineSpecialist",
}


def _import(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def from_config(entries: list[dict]) -> list[Specialist]:
    out = []
    for e in entries:
        e = dict(e)
        kind = e.pop("type", None)
        if kind == "python":
            cls = _import(e.pop("class"))
            out.append(cls(**e.pop("kwargs", {})))
        elif kind in REGISTRY:
            out.append(_import(REGISTRY[kind])(**e))
        else:
            raise ValueError(f"unknown specialist type {kind!r}; known: {', '.join(REGISTRY)}, python")
    return out


__all__ = ["Specialist", "from_config", "region_lists", "run_specialists", "split_errors", "REGISTRY"]
