"""Specialists with known quality for the audit, gate and acceptance tests (shipped to Spark
workers with addPyFile).  They read the synthetic world's ground truth, so the test knows
exactly how right each one is."""
import json

from lakehouse.specialists.base import Specialist
from lakehouse.synthetic import CATEGORIES


class _FromTruth(Specialist):
    version, kinds = "1", ("region",)

    def __init__(self, truth: str):
        self.truth = truth

    def load(self):
        return {json.loads(x)["image_id"]: json.loads(x) for x in open(self.truth)}

    def objects(self, image_id):
        return (self.model().get(image_id) or {"objects": []})["objects"]


class OracleModel(_FromTruth):
    """A model that is always right."""

    name, is_model = "oracle", True

    def annotate(self, image, image_id):
        return [{"kind": "region", "text": o["category"], "description": f"{o['size']} {o['color']} {o['category']}",
                 "bbox": o["bbox"], "confidence": 0.95} for o in self.objects(image_id)]


class UnsureOracle(OracleModel):
    """Always right, and too unsure for the round's region confidence filter."""

    name = "unsure"

    def annotate(self, image, image_id):
        return [dict(r, confidence=0.1) for r in super().annotate(image, image_id)]


class LiarModel(_FromTruth):
    """A model that is always wrong, and sure of itself: another category, in the mirrored place."""

    name, is_model = "liar", True

    def annotate(self, image, image_id):
        out = []
        for o in self.objects(image_id):
            x0, y0, x1, y1 = o["bbox"]
            w = self.model()[image_id]["width"]
            wrong = CATEGORIES[(CATEGORIES.index(o["category"]) + 3) % len(CATEGORIES)]
            out.append({"kind": "region", "text": wrong, "bbox": [w - x1, y0, w - x0, y1], "confidence": 0.99})
        return out


class ShiftedContours(Specialist):
    """Stands in for the contour specialist in a later round with boxes that miss every object."""

    name, version, kinds = "contours", "broken", ("region",)

    def annotate(self, image, image_id):
        w, h = image.size
        return [{"kind": "region", "text": "circle", "bbox": [0.0, 0.0, w * 0.1, h * 0.1], "confidence": 0.9}]


class _Relabels(_FromTruth):
    """Names the regions it is given (``takes_regions``), as ``Florence2Labels`` does."""

    is_model, takes_regions, relabels = True, True, True

    def __init__(self, truth: str, confidence: float = 0.95):
        super().__init__(truth)
        self.confidence = confidence

    def annotate(self, image, image_id, regions=None):
        from florence2.geometry import iou

        out = []
        for r in regions or []:
            best = max(self.objects(image_id), key=lambda o: iou(o["bbox"], r["bbox"]), default=None)
            if best is not None and iou(best["bbox"], r["bbox"]) >= 0.5:
                out.append({"kind": "region", "text": self.label(best), "bbox": r["bbox"],
                            "polygons": r["polygons"], "confidence": self.confidence})
        return out


class OracleLabels(_Relabels):
    """Always names a region's object right."""

    name = "oracle_labels"

    def label(self, obj):
        return obj["category"]


class WrongLabels(_Relabels):
    """Always names a region's object wrong, and is sure of it."""

    name = "wrong_labels"

    def label(self, obj):
        return CATEGORIES[(CATEGORIES.index(obj["category"]) + 3) % len(CATEGORIES)]
