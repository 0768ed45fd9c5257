"""Petastorm readers over exactly the files of one Delta version of ``training_examples``.

Petastorm reads parquet files, not Delta logs, so the file list comes from Delta
(``input_file_name`` over the versioned, split-filtered table): files that a later
overwrite replaced, or that belong to the other split, are never read.  Petastorm's
workers read and shuffle encoded image rows (one per image, with all its examples);
images are decoded once, in threads, into a pool from which batches of examples are
drawn at random (``example_batches``).  Examples are counted per epoch: a short read
raises instead of silently training on less (the stock thread pool was seen to end
reads early).
"""
from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("image_id", "examples", "n_examples", "content")


@dataclass(frozen=True)
class DeltaSlice:
    """The files of one split of one Delta version, with its example (``rows``) and image counts."""

    files: tuple[str, ...]
    rows: int
    version: int
    split: str
    images: int = 0


def delta_slice(spark, root, version: int, split: str, name: str = "training_examples") -> DeltaSlice:
    # Spark only here: the rest of this module runs where there is none (a GPU box reading files)
    from pyspark.sql import functions as F

    from lakehouse.examples import check_layout
    from lakehouse.tables import read

    df = read(spark, root, name, version=version).filter(F.col("split") == split)
    check_layout(df, f"{name} v{version}")
    props = {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES {root.ident(name)}").collect()}
    if props.get("delta.enableDeletionVectors", "false").lower() == "true":
        raise RuntimeError(f"{name} has deletion vectors; Petastorm would read deleted rows")
    files = sorted({r[0] for r in df.select(F.input_file_name()).distinct().collect()})
    counts = df.agg(F.count("*").alias("images"), F.sum("n_examples").alias("rows")).collect()[0]
    return DeltaSlice(tuple(files), int(counts["rows"] or 0), version, split, int(counts["images"]))


def image_decoder(image_size: int, mean, std):
    """bytes -> normalised float32 (B, 3, S, S): what the CPU trainer consumes."""
    import io

    from PIL import Image

    from florence2.processing import Processor

    proc = Processor(None, image_size, 0, tuple(mean), tuple(std))
    return lambda contents: proc.preprocess([Image.open(io.BytesIO(b)) for b in contents])


def make_reader(sl: DeltaSlice, cur_shard: int | None = None, shard_count: int | None = None,
                pool: str = "process", workers: int = 2, seed: int = 0):
    """Petastorm over the slice's files: image rows still encoded (``example_batches`` decodes).

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
        n = len(cols["image_id"])
        for i in range(n):
            yield {k: (v[i].decode() if isinstance(v[i], bytes) and k != "content" else v[i]) for k, v in cols.items()}


def example_batches(image_rows, batch_size: int, decode, threads: int = 2, pool_images: int = 0, seed: int = 0):
    """(images, examples) per ``batch_size`` examples, the last batch possibly short.  Each image row is
    decoded once (``decoded_batches``, ``threads`` ahead) and joins a pool of about ``pool_images`` decoded
    images (default: twice the batch size, at least 32); each example of a batch is a random remaining
    example of a random image in the pool, so a batch mixes images and tasks and every example is drawn
    exactly once.  ``images`` is a stacked array when ``decode`` gives arrays, else a list."""
    import json
    import random

    import numpy as np

    rng = random.Random(seed)
    pool_images = pool_images or max(2 * batch_size, 32)
    pool, left = [], 0   # pool: [decoded image, its examples not yet drawn]

    def draw(n):
        nonlocal left
        picks = []
        for _ in range(n):
            i = rng.randrange(len(pool))
            image, exs = pool[i]
            picks.append((image, exs.pop()))
            if not exs:
                pool[i] = pool[-1]
                pool.pop()
        left -= n
        images = [p[0] for p in picks]
        return (np.stack(images) if isinstance(images[0], np.ndarray) else images), [p[1] for p in picks]

    for decoded, rows in decoded_batches(image_rows, batch_size, decode, threads):
        for image, row in zip(decoded, rows):
            exs = json.loads(row["examples"]) if isinstance(row["examples"], str) else list(row["examples"])
            rng.shuffle(exs)
            pool.append((image, exs))
            left += len(exs)
        while len(pool) >= pool_images and left >= batch_size:
            yield draw(batch_size)
    while left:
        yield draw(min(batch_size, left))


def petastorm_batches(data: dict, cfg, dist, epoch: int, proc):
    """The recipe's Petastorm batch source (``florence2.recipe.SOURCES`` protocol): this rank's shard of
    the pinned files, then ``EpochEnd`` (examples read).  On a GPU it yields decoded images
    (``prepare_batch`` resizes them on the device); on CPU, pixels preprocessed in the decoding threads."""
    import io

    import torch
    from PIL import Image

    from florence2.recipe import EpochEnd

    sl = DeltaSlice(tuple(data["files"]), data["rows"], data["version"], data["split"], data.get("images", 0))
    if torch.cuda.is_available():
        def decode(contents):
            return [Image.open(io.BytesIO(b)).convert("RGB") for b in contents]
    else:
        decode = image_decoder(proc.image_size, proc.image_mean, proc.image_std)
    n = 0
    with make_reader(sl, dist.rank, dist.size, pool=cfg.reader_pool, workers=cfg.reader_workers,
                     seed=cfg.seed + epoch) as reader:
        for images, examples in example_batches(iterate_rows(reader), cfg.batch_size, decode, cfg.reader_workers,
                                                seed=cfg.seed + epoch):
            n += len(examples)
            if len(examples) == cfg.batch_size:  # a short last batch is counted, not trained on
                yield images, [e["prompt"] for e in examples], [e["target"] for e in examples]
    yield EpochEnd(n)
