"""The table catalog: every table of the platform, defined once.

A table is a name, a schema, partition columns and Delta CHECK constraints.
Tables live under a root that is either a filesystem path (tables addressed by
path, the local default ``$FLD_HOME/tables``) or ``catalog.schema`` (managed
tables, for Unity Catalog on Databricks).  ``ensure_tables`` is idempotent.
"""
from __future__ import annotations

import dataclasses
import re

from pyspark.sql import types as T

# Why an input was quarantined instead of landing in bronze.
QUARANTINE_REASONS = (
    "empty_file",          # zero bytes
    "not_an_image",        # bytes no image decoder recognises
    "unsupported_format",  # an image, but not JPEG/PNG/WEBP
    "truncated_image",     # header parses, pixel data is cut short or corrupt
    "too_many_pixels",     # over Settings.max_image_pixels (decompression bomb guard)
    "missing_file",        # a manifest row names a file that is not there
    "fetch_failed",        # a remote URL could not be fetched
    "malformed_record",    # a manifest row that cannot be interpreted
)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
LABEL_KINDS = ("class", "box", "polygon", "caption", "word")

# One human label carried by a source: a class, a box (+ polygons), a caption, an OCR word.
LABEL = T.StructType([
    T.StructField("kind", T.StringType(), False),
    T.StructField("text", T.StringType(), True),
    # [x0, y0, x1, y1]; pixels unless ``normalized``
    T.StructField("bbox", T.ArrayType(T.DoubleType()), True),
    # flat [x0, y0, x1, y1, ...] per polygon
    T.StructField("polygons", T.ArrayType(T.ArrayType(T.DoubleType())), True),
    # 8 numbers, OCR quad, clockwise from top-left
    T.StructField("quad", T.ArrayType(T.DoubleType()), True),
    T.StructField("normalized", T.BooleanType(), True),
])

# What every source adapter emits: one row per input image reference.
MANIFEST = T.StructType([
    T.StructField("source_kind", T.StringType(), False),
    T.StructField("source_name", T.StringType(), False),
    T.StructField("original_id", T.StringType(), True),
    T.StructField("uri", T.StringType(), True),
    T.StructField("content", T.BinaryType(), True),
    T.StructField("labels", T.ArrayType(LABEL), True),
    # Set by an adapter when a record cannot be read; a quarantine reason and its detail.
    T.StructField("error_reason", T.StringType(), True),
    T.StructField("error_detail", T.StringType(), True),
])


@dataclasses.dataclass(frozen=True)
class TableDef:
    name: str
    schema: T.StructType
    partition_by: tuple[str, ...] = ()
    constraints: dict[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""


def _in(col: str, values) -> str:
    return f"{col} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _f(name, dtype, nullable=True):
    return T.StructField(name, dtype, nullable)


S, L, I, D, TS, B = T.StringType(), T.LongType(), T.IntegerType(), T.DoubleType(), T.TimestampType(), T.BinaryType()

TABLES: dict[str, TableDef] = {t.name: t for t in [
    TableDef(
        "bronze_images",
        T.StructType([
            _f("image_id", S, False), _f("content", B, False), _f("width", I, False), _f("height", I, False),
            _f("format", S, False), _f("source_kind", S, False), _f("source_name", S, False),
            _f("original_id", S), _f("uri", S), _f("ingest_time", TS, False),
            _f("ingest_query", S), _f("ingest_batch", L),
        ]),
        partition_by=("source_kind",),
        constraints={
            "image_id_is_sha256": "length(image_id) = 64",
            "positive_size": "width > 0 AND height > 0",
            "known_format": _in("format", IMAGE_FORMATS),
        },
        description="One row per distinct image (image_id = SHA-256 of the bytes); first source seen wins.",
    ),
    TableDef(
        "bronze_labels",
        T.StructType([
            _f("label_id", S, False), _f("image_id", S, False), _f("source_kind", S, False),
            _f("source_name", S, False), _f("original_id", S), _f("kind", S, False), _f("text", S),
            _f("bbox", T.ArrayType(D)), _f("polygons", T.ArrayType(T.ArrayType(D))), _f("quad", T.ArrayType(D)),
            _f("ingest_time", TS, False),
        ]),
        partition_by=("source_kind",),
        constraints={
            "known_kind": _in("kind", LABEL_KINDS),
            "bbox_is_box": "bbox IS NULL OR size(bbox) = 4",
        },
        description="Human labels the sources carried, in pixel coordinates, with their source.",
    ),
    TableDef(
        "quarantine",
        T.StructType([
            _f("quarantine_id", S, False), _f("source_kind", S, False), _f("source_name", S, False),
            _f("original_id", S), _f("uri", S), _f("reason", S, False), _f("detail", S),
            _f("size_bytes", L), _f("ingest_time", TS, False), _f("ingest_query", S), _f("ingest_batch", L),
        ]),
        partition_by=("reason",),
        constraints={"known_reason": _in("reason", QUARANTINE_REASONS)},
        description="Inputs that did not become bronze rows, with the reason.",
    ),
    TableDef(
        "ingest_log",
        T.StructType([
            _f("ingest_query", S, False), _f("batch_id", L, False), _f("source_kind", S, False),
            _f("inputs", L, False), _f("new_images", L, False), _f("duplicates", L, False),
            _f("quarantined", L, False), _f("labels", L, False), _f("logged_at", TS, False),
        ]),
        constraints={"inputs_accounted": "inputs = new_images + duplicates + quarantined"},
        description="Per micro-batch and source: every input is a new image, a duplicate, or quarantined.",
    ),
    # Placeholders completed by the data-engine issue.
    TableDef(
        "silver_annotations",
        T.StructType([
            _f("annotation_id", S, False), _f("image_id", S, False), _f("round", I, False), _f("kind", S, False),
            _f("annotator", S, False), _f("annotator_version", S), _f("confidence", D), _f("text", S),
            _f("bbox", T.ArrayType(D)), _f("polygons", T.ArrayType(T.ArrayType(D))), _f("quad", T.ArrayType(D)),
            _f("created_at", TS),
        ]),
        partition_by=("round",),
        constraints={"confidence_in_unit": "confidence IS NULL OR (confidence >= 0 AND confidence <= 1)"},
        description="Specialist and human annotations per round, with provenance (placeholder).",
    ),
    TableDef(
        "gold_fld",
        T.StructType([_f("image_id", S, False), _f("round", I, False), _f("annotations_json", S)]),
        partition_by=("round",),
        description="FLD: per image and round, text / region-text / phrase-region families (placeholder).",
    ),
    TableDef(
        "quality_results",
        T.StructType([
            _f("run_id", S, False), _f("table_name", S, False), _f("table_version", L), _f("round", I),
            _f("success", T.BooleanType(), False), _f("result_json", S), _f("validated_at", TS),
        ]),
        description="Great Expectations results per table and round (placeholder).",
    ),
]}


class TableRoot:
    """Where tables live: a filesystem path or ``catalog.schema``."""

    _NAME = re.compile(r"^[A-Za-z_][\w]*\.[A-Za-z_][\w]*$")

    def __init__(self, root: str):
        self.root = root
        self.is_catalog = bool(self._NAME.match(root)) and "/" not in root

    def path(self, name: str) -> str | None:
        return None if self.is_catalog else f"{self.root.rstrip('/')}/{name}"

    def ident(self, name: str) -> str:
        """SQL identifier: ``delta.`/path``` or ``catalog.schema.name``."""
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}")
        return f"{self.root}.{name}" if self.is_catalog else f"delta.`{self.path(name)}`"


def ensure_table(spark, root: TableRoot, tdef: TableDef) -> None:
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).addColumns(tdef.schema)
    builder = builder.tableName(root.ident(tdef.name)) if root.is_catalog else builder.location(root.path(tdef.name))
    if tdef.partition_by:
        builder = builder.partitionedBy(*tdef.partition_by)
    if tdef.description:
        builder = builder.comment(tdef.description)
    builder.execute()
    existing = {
        r["key"] for r in spark.sql(f"SHOW TBLPROPERTIES {root.ident(tdef.name)}").collect()
    }
    for cname, expr in tdef.constraints.items():
        if f"delta.constraints.{cname.lower()}" not in existing:
            spark.sql(f"ALTER TABLE {root.ident(tdef.name)} ADD CONSTRAINT {cname} CHECK ({expr})")


def ensure_tables(spark, root: TableRoot, names=None) -> None:
    if root.is_catalog:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {root.root}")
    for name in names or TABLES:
        ensure_table(spark, root, TABLES[name])


def read(spark, root: TableRoot, name: str, version: int | None = None):
    """A table as a DataFrame, optionally at an earlier Delta version (time travel)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.table(root.ident(name)) if root.is_catalog else reader.load(root.path(name))


def current_version(spark, root: TableRoot, name: str) -> int:
    return spark.sql(f"DESCRIBE HISTORY {root.ident(name)} LIMIT 1").collect()[0]["version"]
