"""One realistic micro-batch of ingest, its wall time and where its CPU goes, for checkouts side by side.

    .venv/bin/python bench/ingest_cpu.py --world /tmp/w5k --scenes 5000 CHECKOUT [CHECKOUT ...]

Generates the world once (``bench/scale.py``'s realistic chunk 0, kept in ``--world``), then for each
checkout in turn, in a fresh process run from that checkout, ingests a copy of it as one micro-batch and
reports the batch's wall seconds, the machine's busy core-seconds during it (``/proc/stat``: JVM and
Python workers together; run nothing else beside it) and the JVM's, per thread group (``/proc/<pid>/task``:
JIT compiler threads, executor tasks, the driver's stream thread, GC).  Compare checkouts only within
one run: the machine's speed drifts between sessions.  Writes ``--out`` (JSON) when given.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _busy() -> float:
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict:
    out: dict = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            st = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        name = re.sub(r"[0-9]+", "N", st.split("(", 1)[1].rsplit(")", 1)[0])
        f = st.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


def one_batch(world: str) -> dict:
    """Inside the checkout's process: ingest a copy of ``world``'s landing area, timing ``write_batch``."""
    from lakehouse import ingest
    from lakehouse.config import load_settings
    from lakehouse.spark import get_spark

    home = Path(tempfile.mkdtemp(prefix="fld-ingest-cpu-"))
    shutil.copytree(Path(world) / "landing", home / "landing")
    s = load_settings(home=home, max_files_per_trigger=100_000)
    spark = get_spark(s, "fld-bench-ingest-cpu")
    jvm = spark.sparkContext._gateway.proc.pid   # the JVM pyspark launched
    batches, write_batch = [], ingest.write_batch

    def timed(*a, **k):
        b0, t0, th0 = _busy(), time.perf_counter(), _threads(jvm)
        r = write_batch(*a, **k)
        th1 = _threads(jvm)
        groups = {n: round(v - th0.get(n, 0.0), 1) for n, v in th1.items() if v - th0.get(n, 0.0) >= 0.1}
        batches.append({"summary": r, "wall_s": round(time.perf_counter() - t0, 1),
                        "busy_core_s": round(_busy() - b0, 1), "jvm_core_s": round(sum(groups.values()), 1),
                        "jvm_threads": dict(sorted(groups.items(), key=lambda kv: -kv[1]))})
        return r

    ingest.write_batch = timed
    ingest.run_ingest(spark, s, log=None)
    spark.stop()
    shutil.rmtree(home, ignore_errors=True)
    return {"batches": batches}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs="*", default=[str(HERE.parent)])
    p.add_argument("--world", default=None, help="where the realistic world is kept (generated if missing)")
    p.add_argument("--scenes", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=1, help="alternate the checkouts this many times")
    p.add_argument("--out", default=None)
    p.add_argument("--one-batch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_batch:
        sys.path.insert(0, os.getcwd())   # the checkout being measured, not this file's
        print("RESULT " + json.dumps(one_batch(args.one_batch)))
        return
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from lakehouse.config import load_settings
    from scale import land_chunk, plain_loop_rate

    world = Path(args.world or tempfile.mkdtemp(prefix="fld-world-"))
    s = load_settings(home=world)
    if not (world / "landing").exists():
        print(f"[ingest_cpu] generating {args.scenes} realistic scenes in {world}", flush=True)
        land_chunk(s, 0, args.scenes, True)
    res = {"machine": f"{os.uname().machine}, {os.cpu_count()} cores", "world": str(world), "scenes": args.scenes,
           "plain_loop_inputs_per_s": plain_loop_rate(s, 0), "runs": []}
    for _ in range(args.repeat):
        for co in args.checkouts:
            py = Path(co) / ".venv" / "bin" / "python"
            r = subprocess.run([str(py if py.exists() else sys.executable), str(HERE / "ingest_cpu.py"),
                                "--one-batch", str(world)], cwd=co, capture_output=True, text=True)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                raise SystemExit(f"{co}: exit {r.returncode}\n{r.stderr[-3000:]}")
            run = {"checkout": co, "commit": subprocess.run(["git", "-C", co, "rev-parse", "--short", "HEAD"],
                                                            capture_output=True, text=True).stdout.strip(),
                   **json.loads(line[0][7:])}
            res["runs"].append(run)
            print(f"[ingest_cpu] {run['commit']} {co}: {json.dumps(run['batches'])}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
