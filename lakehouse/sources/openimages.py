from __future__ import annotations

import csv

from lakehouse.sources.base import SourceAdapter, label, manifest_row


class OpenImagesCSV(SourceAdapter):
    """Open Images style: ``<source>/boxes/*.csv`` (ImageID, LabelName, XMin, XMax, YMin, YMax, ...,
    normalised coordinates) with images at ``<source>/images/<ImageID>.jpg`` and optional
    ``<source>/class-descriptions.csv`` (LabelName, DisplayName) mapping ids to names.
    One manifest row per ImageID per CSV file.
    """

    kind = "openimages"
    glob = "*.csv"
    description = "Open Images-style CSV boxes"

    def _parse(self, path, source_name, dataset_dir):
        if path.parent == dataset_dir:  # class-descriptions.csv and other metadata, not inputs
            return
        names = {}
        desc = dataset_dir / "class-descriptions.csv"
        if desc.exists():
            with open(desc, newline="") as f:
                names = {r[0]: r[1] for r in csv.reader(f) if len(r) >= 2}
        boxes: dict[str, list] = {}
        bad = []
        with open(path, newline="") as f:
            for i, r in enumerate(csv.DictReader(f), start=2):
                try:
                    bbox = [float(r["XMin"]), float(r["YMin"]), float(r["XMax"]), float(r["YMax"])]
                    boxes.setdefault(r["ImageID"], []).append(
                        label("box", names.get(r["LabelName"], r["LabelName"]), bbox=bbox, normalized=True))
                except (KeyError, ValueError, TypeError) as e:
                    bad.append((i, f"{type(e).__name__}: {e}"))
        for image, labs in boxes.items():
            yield manifest_row(self, source_name, image, uri=str(dataset_dir / "images" / f"{image}.jpg"), labels=labs)
        for line, why in bad:
            yield manifest_row(self, source_name, f"{path.name}:{line}", uri=str(path),
                               error_reason="malformed_record", error_detail=f"line {line}: {why}")
