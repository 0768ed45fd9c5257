"""A whole round 1 on the real COCO sample (not shipped: non-commercial licence), as a new user would:
land it, ingest, refine with the default specialists, print counts, the gate, statistics and the audit.

    .venv/bin/python bench/real_round.py --real-dev ../shared/data/real_dev
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    from lakehouse.config import load_settings
    from lakehouse.ingest import run_ingest, totals
    from lakehouse.rounds import GateFailed, RoundConfig, round_history, run_round
    from lakehouse.spark import get_spark

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real-dev", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "real_dev"))
    p.add_argument("--dataset", default="coco_train2017_det_caption")
    p.add_argument("--home", default=None)
    args = p.parse_args()
    src = Path(args.real_dev) / args.dataset
    s = load_settings(home=args.home or tempfile.mkdtemp(prefix="fld-real-"))
    dest = s.landing / "coco" / "real"
    shutil.copytree(src / "images", dest / "images")
    (dest / "annotations").mkdir()
    for f in ("instances_train2017.json", "captions_train2017.json"):
        shutil.copy(src / "annotations" / f, dest / "annotations" / f)
    spark = get_spark(s, "fld-real-round")
    run_ingest(spark, s, kinds=["coco"], log=None)
    print(json.dumps(totals(spark, s)))
    try:
        res = run_round(spark, s, RoundConfig(round=1))
        print(json.dumps({k: v for k, v in res["stats"].items() if k != "annotations_by_annotator"}))
    except GateFailed as e:
        print(f"round 1 not published:\n{e}")
    for h in round_history(spark, s.tables):
        print(f"round {h['round']} published={h['published']} audit={json.dumps(h['audit'])}")


if __name__ == "__main__":
    main()
