"""Ingest throughput (images/s) of the synthetic world on a local SparkSession.

Runs the streaming ingest (available-now) over N freshly generated scenes and
reports images/s over the query's wall time, next to a plain single-process loop
(parse + fetch + validate + hash, no Spark, no Delta) over the same inputs, so
the ratio says what Spark + Delta cost on this machine.  Both run in one
process, one after the other.

    .venv/bin/python bench/ingest_throughput.py --images 1000
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from lakehouse.config import load_settings
from lakehouse.fetch import FetchPolicy
from lakehouse.ingest import resolve_row, run_ingest, totals
from lakehouse.sources import ADAPTERS
from lakehouse.spark import get_spark
from lakehouse.synthetic import write_world


def plain_loop(settings) -> int:
    n = 0
    for kind, adapter in ADAPTERS.items():
        root = settings.landing / kind
        for dirpath, _, files in os.walk(root):
            for fn in files:
                if fn.startswith((".", "_")) or not fnmatch.fnmatch(fn, adapter.glob):
                    continue
                for row in adapter.parse(str(Path(dirpath) / fn), str(root)):
                    out = resolve_row(row, settings.max_image_pixels, FetchPolicy.from_settings(settings))
                    n += out["reason"] is None
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest_throughput.json"))
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fld-bench-"))
    s = load_settings(home=home, max_files_per_trigger=100_000)
    t0 = time.time()
    write_world(s.landing, s.synthetic_dir, n_images=args.images, seed=0, bad_inputs=False)
    gen_s = time.time() - t0
    spark = get_spark(s, "fld-bench")
    res = run_ingest(spark, s, log=None)
    t = totals(spark, s)
    inputs = sum(v["inputs"] for v in t["per_source"].values())
    t1 = time.time()
    ok = plain_loop(s)
    plain_s = time.time() - t1
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, local[2] Spark",
        "images": args.images, "inputs": inputs, "bronze_images": t["bronze_images"],
        "generate_s": round(gen_s, 1),
        "spark_ingest_s": round(res.seconds, 1), "spark_images_per_s": round(t["bronze_images"] / res.seconds, 1),
        "plain_loop_s": round(plain_s, 1), "plain_inputs_ok": ok, "plain_images_per_s": round(ok / plain_s, 1),
    }
    result["spark_over_plain_time_ratio"] = round(res.seconds / plain_s * ok / max(1, t["bronze_images"]), 2)
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
