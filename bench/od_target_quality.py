"""How good are the ``<OD>`` targets a run trained on?  Each image's ``<OD>`` target in the run's pinned
examples (``data.json``, or ``data_first.json``: a curriculum's first phase), read as predictions with score 1,
scored against the synthetic world's truth (COCO AP), so label noise can be told apart from learning.

    .venv/bin/python bench/od_target_quality.py --home FLD_HOME --run demo-round1 [--first]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="FLD_HOME of a synthetic-world run (its synthetic truth)")
    p.add_argument("--run", default="demo-round1", help="run directory under FLD_HOME/runs")
    p.add_argument("--first", action="store_true", help="the curriculum's first-phase examples (data_first.json)")
    args = p.parse_args(argv)
    import pyarrow.parquet as pq

    from florence2.evaluation import coco_map
    from florence2.parsing import post_process_generation
    from lakehouse.config import load_settings

    settings = load_settings(home=args.home)
    truth = {}
    with open(settings.synthetic_dir / "ground_truth.jsonl") as f:
        for line in f:
            t = json.loads(line)
            truth[t["image_id"]] = t
    data = json.loads((settings.home / "runs" / args.run / ("data_first.json" if args.first else "data.json")).read_text())
    gt, pred, images, missing = [], [], 0, 0
    for file in data["files"]:
        for r in pq.read_table(file.removeprefix("file:"), columns=["image_id", "examples", "width", "height"]).to_pylist():
            od = [e for e in json.loads(r["examples"]) if e["task"] == "<OD>"]
            if not od:
                continue
            if r["image_id"] not in truth:
                missing += 1
                continue
            images += 1
            a = post_process_generation(od[0]["target"], "<OD>", (r["width"], r["height"]), as_int=False)["<OD>"]
            pred += [{"image_id": images, "bbox": b, "label": lab, "score": 1.0} for b, lab in zip(a["bboxes"], a["labels"])]
            gt += [{"image_id": images, "bbox": o["bbox"], "label": o["category"]} for o in truth[r["image_id"]]["objects"]]
    res = {"images": images, "without_truth": missing, "target_boxes": len(pred), "true_boxes": len(gt), **coco_map(gt, pred)}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
