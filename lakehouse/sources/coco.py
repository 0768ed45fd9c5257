from __future__ import annotations

import json
import os
import sqlite3
import tempfile

from lakehouse.sources.base import SourceAdapter, label, manifest_row
from lakehouse.sources.jsonstream import iter_arrays


class CocoJSON(SourceAdapter):
    """COCO / Objects365 style: ``<source>/annotations/*.json`` naming files in ``<source>/images/``.

    Reads ``instances`` (boxes, polygon segmentation; RLE masks keep the box only)
    and ``captions`` annotations from whichever the file holds.  Drop the images
    before the JSON: the JSON is what triggers ingest.
    """

    kind = "coco"
    glob = "*.json"
    description = "COCO-style detection JSON (Objects365 / COCO)"

    def __init__(self, skip_crowd: bool = False):
        # ingest keeps crowd boxes (human labels: nothing is dropped); evaluation skips them, as COCO's does
        self.skip_crowd = skip_crowd

    def _label(self, a: dict, cats: dict) -> dict | None:
        if "caption" in a:
            return label("caption", a["caption"].strip())
        if "bbox" in a and not (self.skip_crowd and a.get("iscrowd")):
            x, y, w, h = a["bbox"]
            seg = a.get("segmentation")
            polys = seg if isinstance(seg, list) and seg and isinstance(seg[0], list) else None
            return label("box", cats.get(a.get("category_id"), str(a.get("category_id"))),
                         bbox=[x, y, x + w, y + h], polygons=polys)
        return None

    def _parse(self, path, source_name, dataset_dir):
        """Two streaming passes (``iter_arrays``): annotations go to a temporary SQLite file keyed by
        image, then each image is written with its labels.  Memory stays flat whatever the file's size
        (``json.loads`` of a 40 MB instances file took ~650 MB); the disk holds the annotations once."""
        with tempfile.TemporaryDirectory(prefix="fld-coco-") as tmp:
            db = sqlite3.connect(os.path.join(tmp, "labels.db"))
            try:
                db.execute("CREATE TABLE ann (image TEXT, body TEXT)")
                cats, pending = {}, []
                for key, item in iter_arrays(path, {"categories", "annotations"}):
                    if key == "categories":
                        cats[item["id"]] = item["name"]
                        continue
                    pending.append((json.dumps(item["image_id"]), json.dumps(item)))
                    if len(pending) >= 10_000:
                        db.executemany("INSERT INTO ann VALUES (?, ?)", pending)
                        pending.clear()
                db.executemany("INSERT INTO ann VALUES (?, ?)", pending)
                db.execute("CREATE INDEX ann_image ON ann (image)")
                for _, img in iter_arrays(path, {"images"}):
                    if not isinstance(img, dict) or "file_name" not in img or "id" not in img:
                        oid = img.get("id") if isinstance(img, dict) else None
                        yield manifest_row(self, source_name, f"{path.name}#{oid}", error_reason="malformed_record",
                                           error_detail=f"{path.name}: image entry without id/file_name: {str(img)[:200]}")
                        continue
                    rows = db.execute("SELECT body FROM ann WHERE image = ? ORDER BY rowid", (json.dumps(img["id"]),))
                    labs = [lab for (body,) in rows if (lab := self._label(json.loads(body), cats)) is not None]
                    yield manifest_row(self, source_name, f"{path.name}#{img['id']}",
                                       uri=self.resolve(dataset_dir / "images", img["file_name"]), labels=labs)
            finally:
                db.close()
