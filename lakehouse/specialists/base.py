from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Iterator

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lakehouse.tables import TABLES

# Loaded models, one per (specialist, config) per Python worker process.
_LOADED: dict[str, object] = {}


class Specialist:
    """Subclasses set ``name``, ``version``, ``kinds`` and implement ``load`` and ``annotate``."""

    name = "specialist"
    # a trained model whose output must earn its way into a round (lakehouse.acceptance)
    is_model = False
    version = "0"
    kinds: tuple[str, ...] = ()

    def config_key(self) -> str:
        return f"{self.name}@{self.version}:{json.dumps(vars(self), sort_keys=True, default=str)}"

    def load(self):
        """Return the model (or anything heavy); called once per worker."""
        return None

    def model(self):
        key = self.config_key()
        if key not in _LOADED:
            _LOADED[key] = self.load()
        return _LOADED[key]

    def annotate(self, image, image_id: str) -> list[dict]:
        """One PIL image -> annotations: dicts with ``kind`` and any of ``text``, ``bbox``,
        ``polygons``, ``quad``, ``confidence`` (pixels, confidence in [0, 1])."""
        raise NotImplementedError


def annotation_id(image_id: str, annotator: str, a: dict) -> str:
    key = json.dumps([image_id, annotator, a.get("kind"), a.get("text"), a.get("bbox"), a.get("quad"),
                      a.get("polygons")], default=float)
    return hashlib.sha256(key.encode()).hexdigest()


def _clip_box(b, w, h):
    if b is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in b)
    return [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]


def provenance_rows(image_id: str, width: int, height: int, sp: Specialist, anns: list[dict], round_: int,
                    now) -> list[dict]:
    rows = []
    for a in anns:
        bbox = _clip_box(a.get("bbox"), width, height)
        if bbox is not None and not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
            continue  # degenerate after clipping to the image
        conf = a.get("confidence")
        rows.append({
            "annotation_id": annotation_id(image_id, sp.name, a), "image_id": image_id, "round": round_,
            "kind": a["kind"], "annotator": sp.name, "annotator_version": sp.version,
            "confidence": None if conf is None else float(min(max(conf, 0.0), 1.0)), "text": a.get("text"),
            "description": a.get("description"),
            "bbox": bbox, "polygons": a.get("polygons"), "quad": a.get("quad"), "created_at": now,
        })
    return rows


def _annotate_partition(specialists, round_, batches) -> Iterator:
    import pandas as pd

    from lakehouse.images import decode_rgb

    cols = TABLES["silver_annotations"].schema.fieldNames()
    for pdf in batches:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        rows = []
        for r in pdf.itertuples(index=False):
            img = decode_rgb(r.content)
            for sp in specialists:
                rows += provenance_rows(r.image_id, r.width, r.height, sp, sp.annotate(img, r.image_id), round_, now)
        yield pd.DataFrame(rows, columns=cols)


def run_specialists(images: DataFrame, specialists: list[Specialist], round_: int) -> DataFrame:
    """Annotate ``images`` (image_id, content, width, height) with every specialist, inside Spark."""
    import functools

    schema: T.StructType = TABLES["silver_annotations"].schema
    fn = functools.partial(_annotate_partition, specialists, round_)
    return images.select("image_id", "content", "width", "height").mapInPandas(fn, schema=schema)
