"""Ingest and a refinement round on a real Spark standalone cluster (a master and two workers on loopback,
separate executor JVMs and Python workers in their own directories): the counts equal the world's, as in
local mode (issue 10, item 6)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lakehouse.synthetic import write_world

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_and_round_on_a_standalone_cluster(tmp_path):
    from lakehouse.config import load_settings

    s = load_settings(home=tmp_path / "fld_home")
    expected = write_world(s.landing, s.synthetic_dir, n_images=16, seed=11)
    script = (
        "import json; from lakehouse.config import load_settings; from lakehouse.spark import get_spark\n"
        "from lakehouse.ingest import run_ingest, totals; from jobs import refine_round\n"
        "s = load_settings(); spark = get_spark(s, 'standalone-test')\n"
        "run_ingest(spark, s, log=None)\n"
        "r = refine_round.main(['--round=1', '--specialists=[{\"type\": \"contours\"}]'])\n"
        "print('RESULT', json.dumps({'master': spark.sparkContext.master, 'totals': totals(spark, s),\n"
        "      'gate': bool(r['gate'].success), 'stats': r['stats']}, default=str))\n")
    env = {"FLD_HOME": str(s.home), "FLD_MAX_FILES_PER_TRIGGER": "1000", "FLD_SPARK_EXECUTOR_MEMORY": "1g"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "standalone.py"), "--memory", "2g", "--port", "7177",
                        "--", sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(__import__("os").environ, **env))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert res["master"] == "spark://127.0.0.1:7177"
    t = res["totals"]
    assert sum(v["inputs"] for v in t["per_source"].values()) == expected["inputs"]
    assert t["bronze_images"] == expected["distinct_images"] and t["quarantine"] == expected["quarantined"]
    assert res["gate"] and 0 < res["stats"]["images"] <= expected["distinct_images"]
    # the executors ran in the workers' directories, not the driver's
    assert list((s.home / "standalone" / "work").glob("worker-*/app-*/*/stderr"))
