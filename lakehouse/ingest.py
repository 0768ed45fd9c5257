"""Streaming ingest: landing area -> bronze images, bronze labels, quarantine.

Two Structured Streaming queries.  ``landing`` reads every source kind's landed
files (the file source locally, Auto Loader on Databricks) and parses them with
the kind's adapter into ``landing_manifest``: rows only, no image bytes read, in
files of at most ``max_rows_per_trigger`` rows.  ``ingest`` reads that table one
file per micro-batch, so a manifest of millions of lines becomes many bounded
micro-batches, fetches and validates the image bytes, keeps each valid image in
the image store (one file per distinct image, named by its hash), and writes each
batch's rows as idempotent Delta appends (``write_batch``).  Both queries' appends are tagged
with their checkpoint and batch id, so a replayed micro-batch (after a crash)
writes nothing twice and counts the same: exactly-once end to end.
``image_id`` is the SHA-256 of the bytes, so the same image from two sources, or
ingested twice, is one bronze row and one stored file.

Every input lands in exactly one place: a new bronze image, a duplicate of one
(counted in ``ingest_log``), or a quarantine row with a reason.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse.config import Settings
from lakehouse.faults import crash_point
from lakehouse.fetch import FetchPolicy, fetch_url, is_remote, read_local, redact
from lakehouse.images import ImageRejected, check_pixels, inspect_image, is_stored, store_image, stored_path
from lakehouse.sources import ADAPTERS
from lakehouse.sources.base import local_path
from lakehouse.spark import json_columns, on_databricks, parse_json_columns
from lakehouse.tables import MANIFEST, TableRoot, append_once, ensure_tables, read

QUERY_NAME = "ingest"            # landing_manifest -> bronze (fetch, validate, write)
LANDING_QUERY = "landing"       # landed files -> landing_manifest (parse only)

BINARY_FILE = T.StructType([
    T.StructField("path", T.StringType()), T.StructField("modificationTime", T.TimestampType()),
    T.StructField("length", T.LongType()), T.StructField("content", T.BinaryType()),
])

# A manifest row after its bytes were fetched, checked and kept in the image store: no bytes.
RESOLVED = T.StructType(
    [f for f in MANIFEST.fields if f.name not in ("content", "error_reason", "error_detail")] + [
        T.StructField("image_id", T.StringType()),
        T.StructField("content_path", T.StringType()),   # its file in the image store
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("format", T.StringType()),
        T.StructField("size_bytes", T.LongType()),
        T.StructField("reason", T.StringType()),
        T.StructField("detail", T.StringType()),
        # "<identity>#<occurrence>": unique within a micro-batch and the same on a recompute, so which
        # row of an image bronze gets is decided the same way every time
        T.StructField("row_id", T.StringType()),
    ])


PARSE_CHUNK_ROWS = 5_000


def _parse_files(kind: str, kind_root: str, batches):
    """Manifest rows of the landed files, in chunks of at most ``PARSE_CHUNK_ROWS``: adapters parse as
    streams, so a manifest of millions of lines never sits in one worker's memory at once."""
    import itertools

    import pandas as pd

    adapter = ADAPTERS[kind]
    cols = [f.name for f in MANIFEST.fields]
    for pdf in batches:
        rows = (r for p in pdf["path"] for r in adapter.parse(p, kind_root))
        while chunk := list(itertools.islice(rows, PARSE_CHUNK_ROWS)):
            yield pd.DataFrame(chunk, columns=cols)


def fetch_bytes(uri: str, root: str | None, policy: FetchPolicy) -> bytes:
    """Bytes behind a manifest uri under the fetch policy; raises ImageRejected with the reason."""
    if is_remote(uri):
        return fetch_url(uri, policy)
    return read_local(local_path(uri), root, policy.max_bytes)


def resolve_row(row: dict, max_pixels: int, policy: FetchPolicy, store: str | None = None) -> dict:
    """Fetch and check one manifest row, and keep its image in ``store`` (the image store) when it passes.
    The pixels are decoded unless the store holds the image already: it was decoded when it was stored."""
    out = {k: row.get(k) for k in RESOLVED.fieldNames()}
    out["uri"] = redact(row.get("uri"))  # no credentials or signed query strings in any table
    try:
        if row.get("error_reason"):
            raise ImageRejected(row["error_reason"], row.get("error_detail") or "")
        data = row.get("content")
        if data is None:
            if not row.get("uri"):
                raise ImageRejected("malformed_record", "record has neither bytes nor uri")
            data = fetch_bytes(row["uri"], row.get("root"), policy)
        data = bytes(data)
        out["size_bytes"] = len(data)
        iid, out["width"], out["height"], out["format"] = inspect_image(data, max_pixels, decode=False)
        if store is None or not is_stored(store, iid):
            check_pixels(data)
        else:
            data = None   # stored already
    except ImageRejected as e:
        out["reason"], out["detail"] = e.reason, e.detail[:2000]
        return out
    except Exception as e:  # no poison pills: whatever one record does, it becomes one quarantine row
        out["reason"], out["detail"] = "malformed_record", f"{type(e).__name__}: {str(e)[:300]}"
        return out
    out["image_id"] = iid
    if store is not None:
        # outside the try: a store that cannot be written fails the batch (retried), it is not the record's fault
        out["content_path"] = store_image(store, iid, data) if data is not None else stored_path(store, iid)
    return out


def _identity(row: dict) -> str:
    """Hash of what names a manifest row; identical rows share a uri, so ``resolve``'s partitioning by
    uri puts them all in one task."""
    ident = "|".join(str(row.get(k)) for k in ("source_kind", "source_name", "original_id", "uri"))
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _row_id(row: dict, seen: dict) -> str:
    """Identity of a manifest row plus its occurrence among identical rows (``seen`` counts them)."""
    ident = _identity(row)
    k = seen[ident] = seen.get(ident, -1) + 1
    return f"{ident}#{k}"


def _resolve(max_pixels: int, policy: FetchPolicy, store: str, batches):
    """Resolved rows of each chunk, in order: every input's bytes read once, hashed, checked and, if
    they pass, kept in the image store, so the batch itself holds only keys and metadata, whatever its
    images weigh.  Only remote fetches go to the thread pool: they wait on the network; local reads and
    image checks hold the GIL, and threads made them 2.5x slower."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    seen: dict = {}
    with ThreadPoolExecutor(max(1, policy.threads)) as pool:
        for pdf in batches:
            rows = parse_json_columns(pdf, ["labels"]).to_dict("records")
            remote = {i: pool.submit(resolve_row, r, max_pixels, policy, store) for i, r in enumerate(rows)
                      if r.get("content") is None and r.get("uri") and is_remote(r["uri"])}
            out = [remote[i].result() if i in remote else resolve_row(r, max_pixels, policy, store)
                   for i, r in enumerate(rows)]
            for o, r in zip(out, rows):
                o["row_id"] = _row_id(r, seen)
            yield pd.DataFrame(out, columns=RESOLVED.fieldNames())


def manifest(spark, settings: Settings, kinds=None, streaming: bool = True) -> DataFrame:
    """Union of every source kind's landed files, parsed into manifest rows."""
    out = None
    for kind in kinds or ADAPTERS:
        adapter = ADAPTERS[kind]
        root = settings.landing / kind
        root.mkdir(parents=True, exist_ok=True)
        if streaming and on_databricks():
            reader = (spark.readStream.format("cloudFiles").option("cloudFiles.format", "binaryFile")
                      .option("cloudFiles.maxFilesPerTrigger", settings.max_files_per_trigger))
        elif streaming:
            # maxFileAge (default 7 days) silently skips files landed later with an old mtime (cp -p, rsync -t)
            reader = (spark.readStream.format("binaryFile").option("maxFilesPerTrigger", settings.max_files_per_trigger)
                      .option("maxFileAge", "3650d"))
        else:
            reader = spark.read.format("binaryFile")
        if streaming:
            reader = reader.schema(BINARY_FILE)
        # Only the path is selected, so Spark never reads file contents here; workers do.
        files = (reader.option("recursiveFileLookup", "true").option("pathGlobFilter", adapter.glob)
                 .load(str(root)).select("path"))
        df = files.mapInPandas(functools.partial(_parse_files, kind, str(root)), schema=MANIFEST)
        out = df if out is None else out.unionByName(df)
    return out


def by_uri(df: DataFrame, settings: Settings) -> DataFrame:
    """Manifest rows spread over ``shuffle_partitions`` tasks by uri, as every pass over a micro-batch
    reads them: one large manifest file is parsed by one task, but its rows are fetched and hashed by
    all of them, and identical rows (same uri) meet in one task."""
    return json_columns(df.repartition(settings.shuffle_partitions, "uri"), ["labels"])


def resolve(rows: DataFrame, settings: Settings) -> DataFrame:
    """Fetched and checked rows of ``by_uri`` manifest rows; their images are in the image store."""
    fn = functools.partial(_resolve, settings.max_image_pixels, FetchPolicy.from_settings(settings),
                           settings.image_store_path)
    return rows.mapInPandas(fn, schema=RESOLVED)


def _quarantine_id():
    return F.sha2(F.concat_ws("|", "source_kind", "source_name", F.coalesce("original_id", F.lit("")),
                              F.coalesce("uri", F.lit("")), "reason"), 256)


def listed_files(checkpoint: Path, batch_id: int) -> list[str] | None:
    """The files the file source took into micro-batch ``batch_id``, from its own log in the query's
    checkpoint (``offsets/N`` names each source's log range; ``sources/<i>/<k>`` lists its files), or
    None where there is no such log (Auto Loader keeps its listing elsewhere).  The log lists zero-byte
    files, which Spark's file scan then skips; reading it costs the batch's files, not the landing area."""
    def offsets(n: int) -> list:
        f = checkpoint / "offsets" / str(n)
        if not f.exists():
            return []
        lines = f.read_text().splitlines()[2:]  # version, then the batch's metadata
        return [json.loads(x)["logOffset"] if x.strip() not in ("", "-") else None for x in lines]

    cur = offsets(batch_id)
    if not cur:
        return None
    prev = offsets(batch_id - 1) if batch_id > 0 else []
    out = []
    for i, end in enumerate(cur):
        start = prev[i] if i < len(prev) and prev[i] is not None else -1
        for k in range(start + 1, (end if end is not None else -1) + 1):
            d = checkpoint / "sources" / str(i)
            f = d / str(k) if (d / str(k)).exists() else d / f"{k}.compact"
            if not f.exists():
                return None  # cleaned up: the caller falls back to listing
            for line in f.read_text().splitlines()[1:]:
                e = json.loads(line)
                if e.get("batchId") == k:
                    out.append(e["path"])
    return out


def _landed(settings: Settings, kinds, listed: list[str] | None):
    """(kind, path) of each file in this micro-batch: the source log's ``listed`` files, else (Auto
    Loader) by walking the landing area."""
    kinds = list(kinds or ADAPTERS)
    if listed is not None:
        roots = {kind: (settings.landing / kind).resolve() for kind in kinds}
        for uri in listed:
            p = Path(local_path(uri))
            for kind, root in roots.items():
                if p.resolve().is_relative_to(root):
                    yield kind, p
        return
    for kind in kinds:
        for dirpath, dirnames, files in os.walk(settings.landing / kind):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
            for fn in files:
                yield kind, Path(dirpath) / fn


def empty_files(spark, settings: Settings, root: TableRoot, batch_id: int, kinds=None,
                checkpoint: Path | None = None) -> DataFrame | None:
    """Zero-byte landed files, which Spark's file scan silently skips, as manifest rows that the
    fetch stage quarantines (``error_reason`` ``empty_file``).

    Found among this landing micro-batch's own files (``listed_files``), so the cost is the batch's,
    and a replayed batch finds the same ones.  Without the source's log (Auto Loader) the landing
    area is walked and files that an earlier batch already landed are left out.
    """
    import fnmatch

    checkpoint = checkpoint or settings.checkpoints / LANDING_QUERY
    listed = listed_files(checkpoint, batch_id)
    rows = []
    for kind, p in _landed(settings, kinds, listed):
        adapter, kind_root = ADAPTERS[kind], settings.landing / kind
        fn = p.name
        if fn.startswith((".", "_")) or not fnmatch.fnmatch(fn, adapter.glob):
            continue
        try:
            if p.stat().st_size:
                continue
        except FileNotFoundError:
            continue  # removed since it was listed: nothing to account for
        name = adapter.source_name(str(p), str(kind_root))
        rel = str(p.relative_to(adapter.dataset_dir(str(p), str(kind_root))))
        rows.append({**{k: None for k in MANIFEST.fieldNames()}, "source_kind": kind, "source_name": name,
                     "original_id": rel, "uri": str(p), "labels": [],
                     "error_reason": "empty_file", "error_detail": "0 bytes"})
    if not rows:
        return None
    df = spark.createDataFrame(rows, MANIFEST)
    if listed is not None:
        return df
    key = ["source_kind", "source_name", "original_id"]
    seen = (read(spark, root, "landing_manifest")
            .filter((F.col("landing_batch") != batch_id) & (F.col("error_reason") == "empty_file")).select(*key))
    return df.join(seen, key, "left_anti")


def _pixel_bbox():
    lab = F.col("lab")
    scaled = F.array(lab.bbox[0] * F.col("width"), lab.bbox[1] * F.col("height"),
                     lab.bbox[2] * F.col("width"), lab.bbox[3] * F.col("height"))
    return F.when(F.coalesce(lab.normalized, F.lit(False)) & lab.bbox.isNotNull(), scaled).otherwise(lab.bbox)


def _held_before(spark, root: TableRoot, name: str, key: str, writer: str, batch_id: int) -> DataFrame:
    """The keys table ``name`` held before this batch: rows this same batch of this same writer wrote
    before a crash are left out, so a replay finds exactly what the first attempt found.  Only the
    table's key and batch-tag columns are read."""
    return (read(spark, root, name)
            .filter(~((F.col("ingest_query") == writer) & (F.col("ingest_batch") == batch_id))).select(key))


def _not_yet_in(spark, root: TableRoot, name: str, rows: DataFrame, key: str, writer: str,
                batch_id: int) -> DataFrame:
    """The rows of ``rows`` whose key the table did not hold before this batch."""
    return rows.join(_held_before(spark, root, name, key, writer, batch_id), key, "left_anti")


def write_batch(spark, settings: Settings, landed: DataFrame, batch_id: int, query: str = QUERY_NAME,
                log=print, app_id: str | None = None) -> dict:
    """Write one micro-batch of manifest rows (``landed``) as appends to bronze, labels, quarantine and
    the log.

    Exactly-once without MERGE: what is new is decided against the tables as they were before this
    batch (``_not_yet_in``), counted from the batch itself, and each append is an idempotent Delta
    write tagged ``(app_id, batch_id)``, so replaying a batch after a crash writes nothing twice and
    logs the same counts.  ``app_id`` names the query's checkpoint (a new checkpoint is a new writer).

    One pass over the inputs (``resolve``) reads, hashes and checks each one and keeps its image in the
    image store; everything after it moves keys and metadata only, so memory does not grow with the
    images' size.  A replay finds its images stored already (and does not decode them again); a crash
    between the store and the bronze commit leaves files that no row names yet, which the replay uses.
    """
    from lakehouse.tables import TABLES

    root = settings.tables
    app_id = app_id or f"fld-{query}"
    df = resolve(by_uri(landed, settings), settings).persist()
    written = []
    try:
        now = F.current_timestamp()
        # rows carry their writer (the checkpoint's app id), not only the query's name: a new checkpoint
        # numbers its batches from 0 again and must still see what an old one's batch 0 wrote
        tag = [F.lit(app_id).alias("ingest_query"), F.lit(batch_id).cast("long").alias("ingest_batch")]
        ok = df.filter(F.col("reason").isNull())
        meta = ["image_id", "content_path", "width", "height", "format", "source_kind", "source_name", "original_id",
                "uri"]
        first = Window.partitionBy("image_id").orderBy("source_kind", "source_name", "original_id", "row_id")
        firsts = (ok.select("row_id", *meta).withColumn("_n", F.row_number().over(first))
                  .filter("_n = 1").drop("_n"))
        held = _held_before(spark, root, "bronze_images", "image_id", app_id, batch_id).withColumn("_held", F.lit(True))
        firsts = firsts.join(held, "image_id", "left").persist()
        written.append(firsts)
        counts = firsts.groupBy("source_kind", F.col("_held").isNotNull().alias("held")).count().collect()
        new = {r["source_kind"]: r["count"] for r in counts if not r["held"]}
        # labels can be in bronze_labels already only where their image was in bronze before this batch
        labels_known = any(r["held"] for r in counts)
        images = firsts.filter(F.col("_held").isNull()).select(*meta, now.alias("ingest_time"), *tag)
        if new:
            append_once(spark, root, "bronze_images", images, app_id, batch_id)
        crash_point("ingest:bronze")

        labels = (ok.select("image_id", "source_kind", "source_name", "original_id", "width", "height",
                            F.posexplode("labels").alias("pos", "lab"))
                  .select(F.sha2(F.concat_ws("|", "image_id", "source_kind", "source_name", "original_id",
                                             F.col("pos").cast("string")), 256).alias("label_id"),
                          "image_id", "source_kind", "source_name", "original_id", F.col("lab.kind").alias("kind"),
                          F.col("lab.text").alias("text"), _pixel_bbox().alias("bbox"),
                          F.col("lab.polygons").alias("polygons"), F.col("lab.quad").alias("quad"),
                          now.alias("ingest_time"), *tag)
                  .dropDuplicates(["label_id"]))
        if labels_known:
            labels = _not_yet_in(spark, root, "bronze_labels", labels, "label_id", app_id, batch_id)
        append_once(spark, root, "bronze_labels", labels, app_id, batch_id)

        # every bad input is one quarantine row: a replay is kept out by the transaction, not by a key
        bad = (df.filter(F.col("reason").isNotNull())
               .select(_quarantine_id().alias("quarantine_id"),
                       "source_kind", "source_name", "original_id", "uri", "reason", "detail", "size_bytes",
                       now.alias("ingest_time"), *tag))
        stats = df.groupBy("source_kind").agg(
            F.count("*").alias("inputs"),
            F.sum(F.col("reason").isNotNull().cast("long")).alias("quarantined"),
            F.sum(F.when(F.col("reason").isNull(), F.size("labels")).otherwise(0)).cast("long").alias("labels"),
        ).collect()
        if any(r["quarantined"] for r in stats):
            append_once(spark, root, "quarantine", bad, app_id, batch_id)
        rows = []
        for r in stats:
            n_new = new.get(r["source_kind"], 0)
            rows.append((query, int(batch_id), r["source_kind"], r["inputs"], n_new,
                         r["inputs"] - r["quarantined"] - n_new, r["quarantined"], r["labels"]))
        if rows:
            log_df = spark.createDataFrame(rows, "ingest_query string, batch_id long, source_kind string, inputs long, "
                                                 "new_images long, duplicates long, quarantined long, labels long")
            log_df = log_df.withColumn("logged_at", now).select(*TABLES["ingest_log"].schema.fieldNames())
            append_once(spark, root, "ingest_log", log_df, app_id, batch_id)
        crash_point("ingest:logged")
        summary = {k: sum(r[i] for r in rows) for i, k in ((3, "inputs"), (4, "new"), (5, "duplicates"), (6, "quarantined"))}
        if log:
            log(f"[ingest] batch {batch_id}: {summary['inputs']} inputs -> {summary['new']} new, "
                f"{summary['duplicates']} duplicate, {summary['quarantined']} quarantined")
        return summary
    finally:
        for d in written:
            d.unpersist()
        df.unpersist()


@dataclass
class IngestResult:
    batches: list[int] = field(default_factory=list)
    seconds: float = 0.0
    # per micro-batch, in order: batch id, its summary (inputs, new, duplicates, quarantined) and seconds
    batch_stats: list[dict] = field(default_factory=list)


def _app_id(checkpoint: Path, query: str) -> str:
    """The writer id of a query's idempotent appends: its checkpoint's query id, because a new
    checkpoint starts batch ids at 0 again and must not be mistaken for a replay of the old one."""
    return f"fld-{query}-{json.loads((checkpoint / 'metadata').read_text())['id']}"


def landed_rows(spark, settings: Settings, root: TableRoot) -> DataFrame:
    """The fetch stage's input: landing_manifest as a stream of at most ``max_rows_per_trigger`` rows
    per micro-batch (the landing stage writes files of at most that many rows; one file per trigger)."""
    reader = spark.readStream.format("delta").option("maxFilesPerTrigger", 1)
    return root.load(reader, "landing_manifest").select(*MANIFEST.fieldNames())


def run_ingest(spark, settings: Settings, mode: str = "available-now", kinds=None, timeout_s: float | None = None,
               log=print, until=None) -> IngestResult:
    """Run the two ingest queries: ``landing`` parses landed files into ``landing_manifest`` (cheap:
    no image bytes are read), ``ingest`` fetches, validates and writes those rows in micro-batches of
    at most ``max_rows_per_trigger`` rows.  ``available-now`` processes what has landed and stops;
    ``continuous`` runs both until ``until(result)`` is true or ``timeout_s`` has passed."""
    root = settings.tables
    ensure_tables(spark, root)
    result = IngestResult()
    landing_ckpt, ingest_ckpt = settings.checkpoints / LANDING_QUERY, settings.checkpoints / QUERY_NAME

    def land(df, batch_id):
        empties = empty_files(spark, settings, root, batch_id, kinds, landing_ckpt)
        if empties is not None:
            df = df.unionByName(empties)
        df = df.select(*MANIFEST.fieldNames(), F.lit(batch_id).cast("long").alias("landing_batch"),
                       F.current_timestamp().alias("landed_at"))
        append_once(spark, root, "landing_manifest", df, _app_id(landing_ckpt, LANDING_QUERY), batch_id,
                    max_records_per_file=settings.max_rows_per_trigger)
        crash_point("landing:appended")

    def batch(df, batch_id):
        t = time.perf_counter()
        summary = write_batch(spark, settings, df, batch_id, log=log, app_id=_app_id(ingest_ckpt, QUERY_NAME))
        result.batches.append(batch_id)
        result.batch_stats.append({"batch_id": batch_id, **summary, "seconds": round(time.perf_counter() - t, 3)})

    def start(stream, name, fn, checkpoint):
        w = stream.writeStream.queryName(name).foreachBatch(fn).option("checkpointLocation", str(checkpoint))
        return (w.trigger(availableNow=True) if mode == "available-now" else w.trigger(processingTime="5 seconds")).start()

    t0 = time.time()

    def left():
        return None if timeout_s is None else max(0.0, timeout_s - (time.time() - t0))

    queries = [start(manifest(spark, settings, kinds, streaming=True), LANDING_QUERY, land, landing_ckpt)]
    if mode == "available-now":
        queries[0].awaitTermination(left())
    queries.append(start(landed_rows(spark, settings, root), QUERY_NAME, batch, ingest_ckpt))
    try:
        if until is None:
            for q in queries:
                q.awaitTermination(left())
        else:  # continuous runs that stop once ``until(result)`` is true
            while all(q.isActive for q in queries) and not until(result) and (left() is None or left() > 0):
                queries[-1].awaitTermination(1)
    finally:
        for q in queries:
            if q.isActive:
                q.stop()
    for q in queries:
        if q.exception():
            raise q.exception()
    result.seconds = time.time() - t0
    return result


def totals(spark, settings: Settings) -> dict:
    """Counts per source over the whole ingest log and current tables (for reports and tests)."""
    root = settings.tables
    per_source = {r["source_kind"]: r.asDict() for r in read(spark, root, "ingest_log").groupBy("source_kind").agg(
        *(F.sum(c).alias(c) for c in ("inputs", "new_images", "duplicates", "quarantined", "labels"))).collect()}
    return {
        "per_source": per_source,
        "bronze_images": read(spark, root, "bronze_images").count(),
        "bronze_labels": read(spark, root, "bronze_labels").count(),
        "quarantine": {r["reason"]: r["count"] for r in read(spark, root, "quarantine").groupBy("reason").count().collect()},
    }
