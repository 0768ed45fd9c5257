"""Ingest of one very large manifest: peak memory of the whole job (driver JVM, Python workers) and time.

A Conceptual Captions-style TSV of ``--rows`` lines lands as ONE file.  Every line names one of
``--images`` small PNGs in the same folder (so most rows are duplicates and the run measures the
pipeline, not disk space); a ``--malformed`` fraction of the lines, spread evenly, is malformed and
must be quarantined.
The ingest job runs as a subprocess (``python -m jobs.ingest``) while this script samples the resident
memory of its whole process tree; then it checks that every row is accounted for and reads the size of
the largest fetch micro-batch from ``ingest_log``.  Settings come from ``FLD_*`` variables as usual
(``FLD_MAX_ROWS_PER_TRIGGER``, ``FLD_SPARK_DRIVER_MEMORY``).

    FLD_MAX_ROWS_PER_TRIGGER=100000 FLD_SPARK_DRIVER_MEMORY=1g \
        python bench/big_manifest.py --rows 1000000 --out bench/results/big_manifest.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_images(src: Path, images: int, image_mb: float) -> str:
    """``images`` distinct PNGs: tiny flat ones, or with ``image_mb`` noise JPEGs of about that size,
    one encoded image made distinct per file by a JPEG comment (cheap to write, decoded like any)."""
    import numpy as np
    from PIL import Image

    if not image_mb:
        for i in range(images):
            buf = io.BytesIO()
            Image.new("RGB", (32, 24), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(buf, "PNG")
            (src / f"img{i}.png").write_bytes(buf.getvalue())
        return "png"
    side = int((image_mb * 2**20 / 0.9) ** 0.5)   # noise at quality 90: ~0.9 bytes per pixel
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    for i in range(images):
        note = f"image {i}".encode()
        com = b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note
        (src / f"img{i}.jpg").write_bytes(jpeg[:2] + com + jpeg[2:])
    return "jpg"


def write_manifest(landing: Path, rows: int, images: int, malformed: float, image_mb: float = 0) -> dict:
    src = landing / "cc" / "big"
    src.mkdir(parents=True, exist_ok=True)
    ext = write_images(src, images, image_mb)
    bad = 0
    with open(src / "manifest.tsv", "w") as f:
        for n in range(rows):
            if int((n + 1) * malformed) > int(n * malformed):
                f.write(f"a line without a tab {n}\n")
                bad += 1
            else:
                f.write(f"shape number {n}\timg{(n - bad) % images}.{ext}\n")
    return {"rows": rows, "malformed": bad, "distinct_images": min(images, rows - bad)}


def _pss(pid: int) -> int:
    """Proportional set size: a page shared by n processes counts 1/n in each (Python workers fork from
    one daemon and share most of their pages, which a sum of RSS counts once per worker)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over a process and its descendants; PSS is 0 where /proc lacks it."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for q in procs:
        try:
            rss += q.memory_info().rss
            pss += _pss(q.pid)
        except psutil.NoSuchProcess:
            pass
    return rss, pss


def run(rows: int, images: int, malformed: float, home: Path, extra: list[str], image_mb: float = 0) -> dict:
    expected = write_manifest(home / "landing", rows, images, malformed, image_mb)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.ingest", "--home", str(home), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    peak = peak_pss = 0
    out = []
    import threading

    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        time.sleep(0.25)
    reader.join(10)
    seconds = time.perf_counter() - t0
    text = "".join(out)
    if proc.returncode:
        raise SystemExit(f"ingest failed (rc {proc.returncode}):\n{text[-3000:]}")
    batches = [line for line in text.splitlines() if line.startswith("[ingest] batch")]
    return {**expected, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 2**20),
            "peak_pss_mib": round(peak_pss / 2**20) if peak_pss else None,
            "micro_batches": len(batches), "log": batches}


def check(home: Path, expected: dict) -> dict:
    """Counts from the tables, read in a fresh session after the job ended."""
    from lakehouse.config import load_settings
    from lakehouse.ingest import totals
    from lakehouse.spark import get_spark

    from pyspark.sql import functions as F

    from lakehouse.tables import read

    s = load_settings(home=home)
    spark = get_spark(s, "big-manifest-check")
    t = totals(spark, s)
    cc = t["per_source"]["cc"]
    log = read(spark, s.tables, "ingest_log").agg(F.count("*").alias("n"), F.max("inputs").alias("largest")).first()
    return {"inputs": cc["inputs"], "bronze_images": t["bronze_images"], "quarantine": t["quarantine"],
            "fetch_batches": log["n"], "largest_batch_inputs": log["largest"],
            "all_accounted": cc["inputs"] == expected["rows"]
            and cc["new_images"] + cc["duplicates"] + cc["quarantined"] == expected["rows"]
            and t["quarantine"].get("malformed_record", 0) == expected["malformed"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--malformed", type=float, default=0.001, help="fraction of lines that are malformed")
    p.add_argument("--image-mb", type=float, default=0,
                   help="make each image a noise JPEG of about this many MB (default: 32x24 PNGs)")
    p.add_argument("--home", type=Path, default=None, help="FLD_HOME to use (default: a new temporary folder)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("extra", nargs="*", help="more arguments for jobs.ingest")
    a = p.parse_args(argv)
    home = a.home or Path(tempfile.mkdtemp(prefix="fld-big-"))
    res = run(a.rows, a.images, a.malformed, home, a.extra, a.image_mb)
    res.update(check(home, res))
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, CPU only"
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
