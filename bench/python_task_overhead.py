"""What one Spark Python task costs before it does any work: ``--tasks`` trivial ``mapInPandas`` tasks,
with Spark's own worker daemon and with ``lakehouse.pydaemon`` (which keeps Spark 3.5's per-task
``importlib.invalidate_caches()`` from re-reading pyspark's archives), alternated ``--repeats`` times in
one run so both see the same machine.

    .venv/bin/python bench/python_task_overhead.py --tasks 400 --repeats 2

Writes bench/results/python_task_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAEMONS = ("pyspark.daemon", "lakehouse.pydaemon")


def _identity(batches):
    yield from batches


def run(daemon: str, tasks: int, home: Path) -> float:
    from lakehouse.config import load_settings
    from lakehouse.spark import get_spark

    spark = get_spark(load_settings(home=home), "fld-bench-tasks", conf={"spark.python.daemon.module": daemon})
    try:
        df = spark.range(0, tasks * 10, 1, tasks)
        df.mapInPandas(_identity, "id long").count()  # workers started, imports done
        t = time.perf_counter()
        df.mapInPandas(_identity, "id long").count()
        return time.perf_counter() - t
    finally:
        spark.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "python_task_overhead.json"))
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fld-bench-tasks-"))
    seconds = {d: [] for d in DAEMONS}
    for i in range(args.repeats):
        for d in DAEMONS:
            seconds[d].append(round(run(d, args.tasks, home), 2))
            print(f"[tasks] repeat {i + 1}: {d}: {args.tasks} tasks in {seconds[d][-1]} s", flush=True)
    best = {d: min(v) for d, v in seconds.items()}
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "tasks": args.tasks, "seconds": seconds,
           "ms_per_task": {d: round(1000 * b / args.tasks, 1) for d, b in best.items()},
           "ratio_lakehouse_over_spark": round(best["lakehouse.pydaemon"] / best["pyspark.daemon"], 3)}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
