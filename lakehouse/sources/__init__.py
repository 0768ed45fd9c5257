"""Source adapters: one per kind of source the paper draws images from.

An adapter names the files it owns under ``$FLD_HOME/landing/<kind>/<source_name>/``
(a file-name glob) and parses one such file into manifest rows (``tables.MANIFEST``):
one row per image reference, with any human labels the source carries.
Adapters are pure Python so they run inside Spark workers and in plain tests.
"""
from lakehouse.sources.base import SourceAdapter, manifest_row
from lakehouse.sources.captions import ConceptualCaptionsTSV
from lakehouse.sources.coco import CocoJSON
from lakehouse.sources.imagefolder import ImageFolder
from lakehouse.sources.laion import LaionParquet
from lakehouse.sources.openimages import OpenImagesCSV

ADAPTERS: dict[str, SourceAdapter] = {a.kind: a for a in (
    ImageFolder(), CocoJSON(), OpenImagesCSV(), ConceptualCaptionsTSV(), LaionParquet())}

__all__ = ["ADAPTERS", "SourceAdapter", "manifest_row"]
