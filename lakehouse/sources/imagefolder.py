from __future__ import annotations

from lakehouse.sources.base import SourceAdapter, label, manifest_row


class ImageFolder(SourceAdapter):
    """ImageNet-22k style: ``<source>/<class>/<image file>``; the folder name is the class label."""

    kind = "imagefolder"
    glob = "*"
    description = "class folders (ImageNet-22k)"

    def _parse(self, path, source_name, dataset_dir):
        rel = path.relative_to(dataset_dir)
        labels = [label("class", rel.parts[0])] if len(rel.parts) > 1 else []
        yield manifest_row(self, source_name, str(rel), uri=str(path), labels=labels)
