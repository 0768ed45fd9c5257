"""Annotate step: specialists inside Spark (mapInPandas over partitions, local[2]) against the
same specialists in a plain single Python process, on the same images, side by side in one run.
Reports images/s and images/s per core; the ratio is Spark's overhead (or gain) per core.

    .venv/bin/python bench/annotate_overhead.py --images 100
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lakehouse.config import load_settings  # noqa: E402
from lakehouse.ingest import run_ingest  # noqa: E402
from lakehouse.images import read_stored  # noqa: E402
from lakehouse.specialists import from_config, run_specialists  # noqa: E402
from lakehouse.spark import get_spark  # noqa: E402
from lakehouse.synthetic import write_world  # noqa: E402
from lakehouse.tables import read  # noqa: E402

SPECIALISTS = [{"type": "contours"}, {"type": "rapidocr"}, {"type": "tesseract"}]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "annotate_overhead.json"))
    args = p.parse_args()
    from PIL import Image

    s = load_settings(home=Path(tempfile.mkdtemp(prefix="fld-annot-")))
    spark = get_spark(s, "fld-bench-annotate")
    write_world(s.landing, s.synthetic_dir, n_images=args.images, seed=0, bad_inputs=False)
    run_ingest(spark, s, log=None)
    images = read(spark, s.tables, "bronze_images").persist()
    n = images.count()
    sps = from_config(SPECIALISTS)
    run_specialists(images.limit(2), sps, 1).count()  # warm the Python workers and models
    t0 = time.perf_counter()
    n_spark = run_specialists(images, sps, 1).count()
    spark_s = time.perf_counter() - t0
    rows = images.select("image_id", "content_path").collect()
    for sp in sps:
        sp.model()
    t1 = time.perf_counter()
    n_plain = 0
    for r in rows:
        img = Image.open(io.BytesIO(read_stored(r.content_path))).convert("RGB")
        for sp in sps:
            n_plain += len(sp.annotate(img, r.image_id))
    plain_s = time.perf_counter() - t1
    cores = int(s.spark_master.split("[")[1].rstrip("]")) if "[" in s.spark_master else 1
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Spark {s.spark_master}",
           "images": n, "specialists": [f"{x.name}@{x.version}" for x in sps],
           "spark_s": round(spark_s, 2), "spark_images_per_s": round(n / spark_s, 2),
           "spark_images_per_s_per_core": round(n / spark_s / cores, 2),
           "plain_s": round(plain_s, 2), "plain_images_per_s": round(n / plain_s, 2),
           "annotations_spark": n_spark, "annotations_plain": n_plain,
           "per_core_overhead_ratio": round((n / plain_s) / (n / spark_s / cores), 2)}
    print(json.dumps(res, indent=2))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
