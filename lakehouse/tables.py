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

from florence2.vocabulary import ANNOTATION_KINDS, IMAGE_FORMATS
from lakehouse.layout import EXAMPLE_FIELDS

# Why an input was quarantined instead of landing in bronze.
QUARANTINE_REASONS = (
    "empty_file",          # zero bytes
    "not_an_image",        # bytes no image decoder recognises
    "unsupported_format",  # an image, but not JPEG/PNG/WEBP
    "truncated_image",     # header parses, pixel data is cut short or corrupt
    "too_many_pixels",     # over Settings.max_image_pixels (decompression bomb guard)
    "missing_file",        # a manifest row names a file that is not there
    "fetch_failed",        # a remote URL could not be fetched
    "forbidden",           # a reference the fetch policy refuses: outside its dataset folder, a scheme other
                           # than http(s), an address that is not globally routable, remote fetching off
    "too_large",           # more bytes than the fetch policy's cap
    "opted_out",           # the server said X-Robots-Tag: noai / noimageai
    "malformed_record",    # a manifest row that cannot be interpreted
)
LABEL_KINDS = ("class", "box", "polygon", "caption", "word")
# What specialists and human labels become in silver: captions at three granularities,
# regions (box + label + description + optional polygons), OCR words, image-level classes.

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

# One (task, prompt, target) example of an image, an element of training_examples.examples.  A JSON
# string, not array<struct>: Petastorm's batch reader stacks list columns into fixed-shape arrays.
EXAMPLE = T.StructType([
    T.StructField("example_id", T.StringType(), False),
    T.StructField("task", T.StringType(), False),
    T.StructField("text_input", T.StringType(), True),
    T.StructField("region", T.ArrayType(T.DoubleType()), True),
    T.StructField("prompt", T.StringType(), False),
    T.StructField("target", T.StringType(), False),
])
if tuple(EXAMPLE.fieldNames()) != EXAMPLE_FIELDS:  # the Spark-free writer builds rows from the names
    raise RuntimeError(f"EXAMPLE {EXAMPLE.fieldNames()} != lakehouse.layout.EXAMPLE_FIELDS {EXAMPLE_FIELDS}")

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
    # The dataset folder the record's local references must stay inside (lakehouse.fetch).
    T.StructField("root", T.StringType(), True),
])


REGION = T.StructType([
    T.StructField("bbox", T.ArrayType(T.DoubleType())), T.StructField("label", T.StringType()),
    T.StructField("description", T.StringType()), T.StructField("polygons", T.ArrayType(T.ArrayType(T.DoubleType()))),
    T.StructField("confidence", T.DoubleType()), T.StructField("annotator", T.StringType()),
])
WORD = T.StructType([
    T.StructField("text", T.StringType()), T.StructField("quad", T.ArrayType(T.DoubleType())),
    T.StructField("confidence", T.DoubleType()), T.StructField("annotator", T.StringType()),
])
GROUNDING = T.StructType([
    T.StructField("phrase", T.StringType()), T.StructField("start", T.IntegerType()),
    T.StructField("boxes", T.ArrayType(T.ArrayType(T.DoubleType()))),
])


@dataclasses.dataclass(frozen=True)
class TableDef:
    name: str
    schema: T.StructType
    partition_by: tuple[str, ...] = ()
    constraints: dict[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""

    @property
    def holds_bytes(self) -> bool:
        """Image bytes in a column: already compressed, so its files are written uncompressed.  Snappy
        gained nothing on them and Parquet's Snappy reader grows a direct buffer page by page, so reading
        pages of ~100 images stalled for minutes on GC (jstack: NonBlockedDecompressor.setInput)."""
        return any(isinstance(f.dataType, T.BinaryType) for f in self.schema.fields)


def _in(col: str, values) -> str:
    return f"{col} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _f(name, dtype, nullable=True):
    return T.StructField(name, dtype, nullable)


def _top_level_only(schema: T.StructType) -> T.StructType:
    """``schema`` with NOT NULL kept on its top-level fields only: Delta refuses nested ones."""
    def relax(dt):
        if isinstance(dt, T.StructType):
            return T.StructType([T.StructField(f.name, relax(f.dataType), True) for f in dt.fields])
        if isinstance(dt, T.ArrayType):
            return T.ArrayType(relax(dt.elementType), True)
        return dt
    return T.StructType([T.StructField(f.name, relax(f.dataType), f.nullable) for f in schema.fields])


S, L, I, D, TS, B = T.StringType(), T.LongType(), T.IntegerType(), T.DoubleType(), T.TimestampType(), T.BinaryType()

TABLES: dict[str, TableDef] = {t.name: t for t in [
    TableDef(
        "bronze_images",
        T.StructType([
            _f("image_id", S, False), _f("content_path", S, False), _f("width", I, False),
            _f("height", I, False), _f("format", S, False), _f("source_kind", S, False), _f("source_name", S, False),
            _f("original_id", S), _f("uri", S), _f("ingest_time", TS, False),
            _f("ingest_query", S), _f("ingest_batch", L),
        ]),
        partition_by=("source_kind",),
        constraints={
            "image_id_is_sha256": "length(image_id) = 64",
            "positive_size": "width > 0 AND height > 0",
            "known_format": _in("format", IMAGE_FORMATS),
        },
        description="One row per distinct image (image_id = SHA-256 of the bytes); first source seen wins. "
                    "The bytes are in the image store, in the file content_path names (lakehouse.images).",
    ),
    TableDef(
        "bronze_labels",
        T.StructType([
            _f("label_id", S, False), _f("image_id", S, False), _f("source_kind", S, False),
            _f("source_name", S, False), _f("original_id", S), _f("kind", S, False), _f("text", S),
            _f("bbox", T.ArrayType(D)), _f("polygons", T.ArrayType(T.ArrayType(D))), _f("quad", T.ArrayType(D)),
            _f("ingest_time", TS, False), _f("ingest_query", S), _f("ingest_batch", L),
        ]),
        partition_by=("source_kind",),
        constraints={
            "known_kind": _in("kind", LABEL_KINDS),
            "bbox_is_box": "bbox IS NULL OR size(bbox) = 4",
        },
        description="Human labels the sources carried, in pixel coordinates, with their source.",
    ),
    TableDef(
        "landing_manifest",
        T.StructType(_top_level_only(MANIFEST).fields + [_f("landing_batch", L, False), _f("landed_at", TS, False)]),
        description="Every manifest row parsed from a landed file, before its bytes are fetched: the queue "
                    "that bounds an ingest micro-batch by rows (max_rows_per_trigger rows per file, one file "
                    "per micro-batch), and the record of which landed file each input came from.",
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
    TableDef(
        "silver_annotations",
        T.StructType([
            _f("annotation_id", S, False), _f("image_id", S, False), _f("round", I, False), _f("kind", S, False),
            _f("annotator", S, False), _f("annotator_version", S), _f("confidence", D), _f("text", S),
            _f("description", S), _f("bbox", T.ArrayType(D)), _f("polygons", T.ArrayType(T.ArrayType(D))),
            _f("quad", T.ArrayType(D)), _f("created_at", TS),
        ]),
        partition_by=("round",),
        constraints={
            "confidence_in_unit": "confidence IS NULL OR (confidence >= 0 AND confidence <= 1)",
            "known_kind": _in("kind", ANNOTATION_KINDS),
            "bbox_is_box": "bbox IS NULL OR size(bbox) = 4",
        },
        description="Every annotation of a round that survived the filters, with provenance "
                    "(annotator, version, round, confidence, time).",
    ),
    TableDef(
        "gold_fld",
        T.StructType([
            _f("image_id", S, False), _f("round", I, False),
            # text family
            _f("caption_brief", S), _f("caption_detailed", S), _f("caption_more_detailed", S),
            # region-text family (boxes with a label and a description; polygons when known)
            _f("regions", T.ArrayType(REGION)), _f("words", T.ArrayType(WORD)),
            # text-phrase-region family: phrases of the brief caption grounded to regions
            _f("grounding", T.ArrayType(GROUNDING)),
            _f("classes", T.ArrayType(S)), _f("n_regions", I, False), _f("content_hash", S, False),
            _f("published_at", TS),
        ]),
        partition_by=("round",),
        constraints={"regions_counted": "n_regions = size(regions)"},
        description="FLD: per image and published round, the three annotation families.",
    ),
    TableDef(
        "filter_log",
        T.StructType([
            _f("round", I, False), _f("step", S, False), _f("kind", S, False), _f("annotator", S, False),
            _f("reason", S, False), _f("removed", L, False), _f("logged_at", TS),
        ]),
        description="What each filter step removed per round, kind, annotator and reason.",
    ),
    TableDef(
        "annotation_errors",
        T.StructType([
            _f("round", I, False), _f("image_id", S, False), _f("annotator", S, False), _f("annotator_version", S),
            _f("error", S, False), _f("logged_at", TS),
        ]),
        partition_by=("round",),
        description="Per round, each (image, specialist) that raised or timed out, with the reason; "
                    "the round went on without that output.",
    ),
    TableDef(
        "rounds",
        T.StructType([
            _f("round", I, False), _f("attempt_at", TS, False), _f("published", T.BooleanType(), False),
            _f("gate_success", T.BooleanType(), False), _f("silver_version", L), _f("gold_version", L),
            _f("bronze_version", L), _f("model", S), _f("specialists", S), _f("stats_json", S), _f("gate_json", S),
            _f("audit_json", S),
        ]),
        description="Every refinement-round attempt: table versions, gate result, statistics, model used. "
                    "The latest published round is the highest round with published = true.",
    ),
    TableDef(
        "training_examples",
        T.StructType([
            _f("image_id", S, False), _f("round", I, False), _f("split", S, False),
            _f("examples", S, False), _f("n_examples", I, False),
            _f("content", B, False), _f("width", I, False), _f("height", I, False),
        ]),
        partition_by=("split",),
        constraints={"known_split": "split IN ('train', 'val')"},
        description="One row per image with all its training examples (a JSON list of EXAMPLE objects; "
                    "lakehouse.examples.example_rows explodes them), from gold at a pinned round/version. "
                    "The image's bytes are stored once and decoded once per epoch, whatever its task count.",
    ),
    TableDef(
        "fld_statistics",
        T.StructType([_f("round", I, False)] + [_f(c, D) for c in (
            "images", "text_annotations", "region_text_annotations", "phrase_region_triplets", "ocr_words",
            "regions_per_image", "words_caption_brief", "words_caption_detailed", "words_caption_more_detailed")]
            + [_f("annotations_by_annotator", S)]),
        description="The paper's dataset table per published round (written by jobs.statistics).",
    ),
    TableDef(
        "quality_results",
        T.StructType([
            _f("run_id", S, False), _f("round", I, False), _f("suite", S, False), _f("success", T.BooleanType(), False),
            _f("evaluated", I), _f("failed", I), _f("failed_expectations", S), _f("result_json", S),
            _f("docs_path", S), _f("validated_at", TS),
        ]),
        description="Great Expectations results per suite and round (the gate's evidence).",
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

    def save(self, writer, name: str) -> None:
        """Run a configured ``DataFrameWriter`` against table ``name`` (by name in a catalog, else by path)."""
        if name in TABLES and TABLES[name].holds_bytes:
            writer = writer.option("compression", "uncompressed")
        writer.saveAsTable(self.ident(name)) if self.is_catalog else writer.save(self.path(name))

    def load(self, reader, name: str):
        return reader.table(self.ident(name)) if self.is_catalog else reader.load(self.path(name))


def ensure_table(spark, root: TableRoot, tdef: TableDef) -> None:
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark).addColumns(tdef.schema)
    builder = builder.tableName(root.ident(tdef.name)) if root.is_catalog else builder.location(root.path(tdef.name))
    if tdef.partition_by:
        builder = builder.partitionedBy(*tdef.partition_by)
    if tdef.description:
        builder = builder.comment(tdef.description)
    builder.execute()
    # a table made by an earlier version of this catalog gets the nullable columns added since
    existing_schema = root.load(spark.read.format("delta"), tdef.name).schema
    have = set(existing_schema.fieldNames())
    gone = [f.name for f in existing_schema.fields if f.name not in tdef.schema.fieldNames() and not f.nullable]
    if gone:
        # every append would fail on the NOT NULL column this version no longer writes
        raise ValueError(f"table {tdef.name} at {root.ident(tdef.name)} was made by an earlier version of the "
                         f"platform: it has required column(s) {gone} that this version does not write "
                         f"(bronze image bytes now live in the image store, not in the table); ingest into a "
                         f"new FLD_HOME (or table_root) and the image store fills as it goes")
    missing = [f for f in tdef.schema.fields if f.name not in have]
    if missing:
        cols = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE {root.ident(tdef.name)} ADD COLUMNS ({cols})")
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
    return root.load(reader, name)


def current_version(spark, root: TableRoot, name: str) -> int:
    return spark.sql(f"DESCRIBE HISTORY {root.ident(name)} LIMIT 1").collect()[0]["version"]


def delta_table(spark, root: TableRoot, name: str):
    from delta.tables import DeltaTable

    return DeltaTable.forName(spark, root.ident(name)) if root.is_catalog else DeltaTable.forPath(spark, root.path(name))


def merge_insert(spark, root: TableRoot, name: str, df, keys: list[str]) -> None:
    """Insert the rows of ``df`` whose keys are not in the table yet (idempotent append)."""
    cond = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    delta_table(spark, root, name).alias("t").merge(df.alias("s"), cond).whenNotMatchedInsertAll().execute()


def append_once(spark, root: TableRoot, name: str, df, app_id: str, version: int,
                max_records_per_file: int = 0) -> None:
    """Append ``df`` unless this table already holds the write ``(app_id, version)``: Delta's idempotent
    writes (``txnAppId``/``txnVersion``), which keep a replayed streaming micro-batch from writing twice
    without the join a MERGE runs against the whole table.  Rows are grouped by the table's partition
    columns first: one file per partition per write, not one per task and partition (a micro-batch
    wrote ~24 small files per table, and every later read of the table paid for each)."""
    parts = TABLES[name].partition_by
    df = df.repartition(*parts) if parts else df.coalesce(1)
    writer = df.write.format("delta").mode("append").option("txnAppId", app_id).option("txnVersion", int(version))
    if max_records_per_file:
        writer = writer.option("maxRecordsPerFile", int(max_records_per_file))
    root.save(writer, name)
