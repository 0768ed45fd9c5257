from __future__ import annotations

import json

from lakehouse.sources.base import SourceAdapter, label, manifest_row


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

    def _parse(self, path, source_name, dataset_dir):
        doc = json.loads(path.read_text())
        cats = {c["id"]: c["name"] for c in doc.get("categories", [])}
        per_image: dict = {}
        for a in doc.get("annotations", []):
            labs = per_image.setdefault(a["image_id"], [])
            if "caption" in a:
                labs.append(label("caption", a["caption"].strip()))
            elif "bbox" in a and not (self.skip_crowd and a.get("iscrowd")):
                x, y, w, h = a["bbox"]
                seg = a.get("segmentation")
                polys = seg if isinstance(seg, list) and seg and isinstance(seg[0], list) else None
                labs.append(label("box", cats.get(a.get("category_id"), str(a.get("category_id"))),
                                  bbox=[x, y, x + w, y + h], polygons=polys))
        for img in doc.get("images", []):
            if "file_name" not in img or "id" not in img:
                yield manifest_row(self, source_name, f"{path.name}#{img.get('id')}", error_reason="malformed_record",
                                   error_detail=f"{path.name}: image entry without id/file_name: {str(img)[:200]}")
                continue
            yield manifest_row(self, source_name, f"{path.name}#{img['id']}",
                               uri=self.resolve(dataset_dir / "images", img["file_name"]),
                               labels=per_image.get(img["id"], []))
