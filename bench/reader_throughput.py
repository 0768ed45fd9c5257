"""Petastorm reader alone: images/s and examples/s over the pinned train split of training_examples,
decoding and preprocessing each image once as the trainer's source does (no model), its peak memory,
and a plain pyarrow + PIL loop over the same files.  Run after `make demo` (or any jobs.train), or on the
realistic-size table of `bench/scale.py --realistic` (``FLD_HOME`` of that run).

    .venv/bin/python bench/reader_throughput.py --image-size 768 --pool process --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.big_manifest import tree_memory  # noqa: E402
from lakehouse.config import load_settings  # noqa: E402
from florence2.recipe import check_count  # noqa: E402
from lakehouse.reader import delta_slice, example_batches, image_decoder, iterate_rows, make_reader  # noqa: E402
from lakehouse.spark import get_spark  # noqa: E402
from lakehouse.tables import current_version  # noqa: E402


def plain_loop(sl, image_size: int) -> float:
    """Images/s of one process reading the same files with pyarrow and preprocessing each image with the
    same processor (PIL decode, resize, normalise): what the reader is measured against (issue 10)."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from florence2.processing import Processor

    proc = Processor(None, image_size, 0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    t0, n, images = time.perf_counter(), 0, 0
    for f in sl.files:
        pf = pq.ParquetFile(f.replace("file:", "", 1) if f.startswith("file:") else f)
        for batch in pf.iter_batches(batch_size=32, columns=["n_examples", "content"]):
            contents = batch.column("content").to_pylist()
            proc.preprocess([Image.open(io.BytesIO(b)) for b in contents])
            n += sum(batch.column("n_examples").to_pylist())
            images += len(contents)
    check_count(n, sl.rows, "plain loop")
    return round(images / (time.perf_counter() - t0), 1)


class PeakRSS:
    """Peak resident memory of this process and its children (Petastorm's workers), sampled every 0.2 s."""

    def __init__(self):
        import threading

        self.peak, self.done = 0, threading.Event()

        def watch():
            while not self.done.wait(0.2):
                self.peak = max(self.peak, tree_memory(os.getpid())[0])

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return round(self.peak / 2 ** 30, 2)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--pool", default="process")
    p.add_argument("--workers", type=int, default=2, help="Petastorm workers, and decoding threads")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "reader_throughput.json"))
    args = p.parse_args()
    s = load_settings()
    spark = get_spark(s, "fld-bench-reader")
    root = s.tables
    sl = delta_slice(spark, root, current_version(spark, root, "training_examples"), "train")
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "examples": sl.rows, "images": sl.images,
           "files": len(sl.files), "image_size": args.image_size}
    decode = image_decoder(args.image_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for pool in dict.fromkeys([args.pool, "dummy"]):
        peak = PeakRSS()
        t0 = time.perf_counter()
        with make_reader(sl, pool=pool, workers=args.workers) as reader:
            n = sum(len(exs) for _, exs in example_batches(iterate_rows(reader), args.batch, decode, args.workers))
        dt = time.perf_counter() - t0
        check_count(n, sl.rows, f"{pool} pool")
        res[f"{pool}_examples_per_s"] = round(n / dt, 1)
        res[f"{pool}_images_per_s"] = round(sl.images / dt, 1)
        res[f"{pool}_peak_rss_gb"] = peak.stop()
        print(json.dumps(res), flush=True)  # a later pass that runs out of memory leaves these
    res["plain_images_per_s"] = plain_loop(sl, args.image_size)
    # the dummy pool is Petastorm in this one process: the like-for-like ratio against the plain loop
    res["dummy_over_plain"] = round(res["dummy_images_per_s"] / res["plain_images_per_s"], 2)
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
