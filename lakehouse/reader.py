"""Petastorm readers over exactly the files of one Delta version of ``training_examples``.

Petastorm reads parquet files, not Delta logs, so the file list comes from Delta
(``input_file_name`` over the versioned, split-filtered table): files that a later
overwrite replaced, or that belong to the other split, are never read.  Petastorm's
workers read and shuffle encoded rows; images are decoded per batch in threads
(``decoded_batches``).  Rows are counted per epoch: a short read raises instead of
silently training on less (the stock thread pool was seen to end reads early).
"""
from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("example_id", "task", "prompt", "target", "content", "width", "height")


@dataclass(frozen=True)
class DeltaSlice:
    """The files and row count of one split of one Delta version."""

    files: tuple[str, ...]
    rows: int
    version: int
    split: str


def delta_slice(spark, root, version: int, split: str, name: str = "training_examples") -> DeltaSlice:
    # Spark only here: the rest of this module runs where there is none (a GPU box reading files)
    from pyspark.sql import functions as F

    from lakehouse.tables import read

    df = read(spark, root, name, version=version).filter(F.col("split") == split)
    props = {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES {root.ident(name)}").collect()}
    if props.get("delta.enableDeletionVectors", "false").lower() == "true":
        raise RuntimeError(f"{name} has deletion vectors; Petastorm would read deleted rows")
    files = sorted({r[0] for r in df.select(F.input_file_name()).distinct().collect()})
    return DeltaSlice(tuple(files), df.count(), version, split)


def image_decoder(image_size: int, mean, std):
    """bytes -> normalised float32 (B, 3, S, S): what the CPU trainer consumes."""
    import io

    from PIL import Image

    from florence2.processing import Processor

    proc = Processor(None, image_size, 0, tuple(mean), tuple(std))
    return lambda contents: proc.preprocess([Image.open(io.BytesIO(b)) for b in contents])


def make_reader(sl: DeltaSlice, cur_shard: int | None = None, shard_count: int | None = None,
                pool: str = "process", workers: int = 2, seed: int = 0):
    """Petastorm over the slice's files: rows with the image still encoded (``decoded_batches`` decodes).

    Decoding is not a Petastorm transform: a transform gets a whole row group, and at 768 px a 128 MB row
    group of ~900 JPEGs decodes to 6.4 GB of float pixels per worker (the reader ran out of memory)."""
    import os
    import warnings

    from petastorm import make_batch_reader

    # petastorm 0.13 uses pyarrow's legacy dataset API, which warns on every piece
    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*pyarrow.*")
    # the process pool's workers are new interpreters: they only see filters passed in the environment
    if "FutureWarning" not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore::FutureWarning"]))

    return make_batch_reader(list(sl.files), schema_fields=list(FIELDS), reader_pool_type=pool,
                             workers_count=workers, num_epochs=1, cur_shard=cur_shard, shard_count=shard_count,
                             shuffle_row_groups=True, shuffle_rows=True, seed=seed)


def decoded_batches(rows, batch_size: int, decode, threads: int = 2):
    """(decode(contents), rows) per ``batch_size`` rows, the last batch possibly short, in reading order.
    ``decode`` runs in ``threads`` threads, that many batches ahead of the consumer (PIL decodes and
    resizes without the GIL), so memory is bounded by batches, not by row groups."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def batches():
        buf = []
        for row in rows:
            buf.append(row)
            if len(buf) == batch_size:
                yield buf
                buf = []
        if buf:
            yield buf

    with ThreadPoolExecutor(threads) as pool:
        ahead = deque()
        for buf in batches():
            ahead.append((pool.submit(decode, [r["content"] for r in buf]), buf))
            if len(ahead) > threads:
                fut, done = ahead.popleft()
                yield fut.result(), done
        while ahead:
            fut, done = ahead.popleft()
            yield fut.result(), done


def iterate_rows(reader):
    """Row dicts out of Petastorm's column batches (text columns as str, ``content`` as bytes)."""
    for batch in reader:
        cols = batch._asdict()
        n = len(cols["example_id"])
        for i in range(n):
            yield {k: (v[i].decode() if isinstance(v[i], bytes) and k != "content" else v[i]) for k, v in cols.items()}


def petastorm_batches(data: dict, cfg, dist, epoch: int, proc):
    """The recipe's Petastorm batch source (``florence2.recipe.SOURCES`` protocol): this rank's shard of
    the pinned files, then ``EpochEnd`` (rows read).  On a GPU it yields decoded images (``prepare_batch``
    resizes them on the device); on CPU, pixels preprocessed in the decoding threads."""
    import io

    import torch
    from PIL import Image

    from florence2.recipe import EpochEnd

    sl = DeltaSlice(tuple(data["files"]), data["rows"], data["version"], data["split"])
    if torch.cuda.is_available():
        def decode(contents):
            return [Image.open(io.BytesIO(b)).convert("RGB") for b in contents]
    else:
        decode = image_decoder(proc.image_size, proc.image_mean, proc.image_std)
    n = 0
    with make_reader(sl, dist.rank, dist.size, pool=cfg.reader_pool, workers=cfg.reader_workers,
                     seed=cfg.seed + epoch) as reader:
        for pixels, rows in decoded_batches(iterate_rows(reader), cfg.batch_size, decode, cfg.reader_workers):
            n += len(rows)
            if len(rows) == cfg.batch_size:  # a short last batch is counted, not trained on
                yield pixels, [r["prompt"] for r in rows], [r["target"] for r in rows]
    yield EpochEnd(n)
