"""Petastorm readers over exactly the files of one Delta version of ``training_examples``.

Petastorm reads parquet files, not Delta logs, so the file list comes from Delta
(``input_file_name`` over the versioned, split-filtered table): files that a later
overwrite replaced, or that belong to the other split, are never read.  Image
decoding and preprocessing run in the reader's workers (``decode_transform``,
importable so the process pool can use it).  Rows are counted per epoch: a short
read raises instead of silently training on less (the stock thread pool was seen
to end reads early).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

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


def decode_transform(image_size: int, mean, std, pdf):
    """Runs in Petastorm's workers: bytes -> normalised (3, S, S) float32 pixels."""
    import io

    from PIL import Image

    from florence2.processing import Processor

    proc = Processor(None, image_size, 0, tuple(mean), tuple(std))
    pixels = proc.preprocess([Image.open(io.BytesIO(b)) for b in pdf["content"]])
    out = pdf.drop(columns=["content"])
    out["pixel_values"] = list(pixels)
    return out


def make_reader(sl: DeltaSlice, image_size: int, mean, std, cur_shard: int | None = None,
                shard_count: int | None = None, pool: str = "process", workers: int = 2, seed: int = 0):
    import os
    import warnings

    from petastorm import TransformSpec, make_batch_reader

    # petastorm 0.13 uses pyarrow's legacy dataset API, which warns on every piece
    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*pyarrow.*")
    # the process pool's workers are new interpreters: they only see filters passed in the environment
    if "FutureWarning" not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore::FutureWarning"]))

    spec = TransformSpec(functools.partial(decode_transform, image_size, tuple(mean), tuple(std)),
                         edit_fields=[("pixel_values", np.float32, (3, image_size, image_size), False)],
                         removed_fields=["content"])
    return make_batch_reader(list(sl.files), schema_fields=list(FIELDS), reader_pool_type=pool,
                             workers_count=workers, num_epochs=1, cur_shard=cur_shard, shard_count=shard_count,
                             shuffle_row_groups=True, shuffle_rows=True, seed=seed, transform_spec=spec)


def iterate_rows(reader):
    """Row dicts out of Petastorm's column batches."""
    for batch in reader:
        cols = batch._asdict()
        n = len(cols["example_id"])
        for i in range(n):
            yield {k: (v[i].decode() if isinstance(v[i], bytes) else v[i]) for k, v in cols.items()}


def petastorm_batches(data: dict, cfg, dist, epoch: int, proc):
    """The recipe's Petastorm batch source (``florence2.recipe.SOURCES`` protocol): this rank's shard of
    the pinned files, decoded in the reader's pool, then ``EpochEnd`` (rows read)."""
    sl = DeltaSlice(tuple(data["files"]), data["rows"], data["version"], data["split"])
    buf, n = [], 0
    with make_reader(sl, proc.image_size, proc.image_mean, proc.image_std, dist.rank, dist.size,
                     pool=cfg.reader_pool, workers=cfg.reader_workers, seed=cfg.seed + epoch) as reader:
        for row in iterate_rows(reader):
            n += 1
            buf.append(row)
            if len(buf) == cfg.batch_size:
                yield np.stack([r["pixel_values"] for r in buf]), [r["prompt"] for r in buf], [r["target"] for r in buf]
                buf = []
    from florence2.recipe import EpochEnd

    yield EpochEnd(n)
