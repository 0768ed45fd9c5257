"""The data flywheel, measured: does round 2 (refined by a model trained on round 1) beat round 1?

On the synthetic world, where ground truth is known: ingest, run round 1
(specialists + human labels), train the tiny Florence-2 on round 1's published
FLD rows, run round 2 with that model as a specialist, and score both rounds'
annotations (precision / recall / F1 per kind) against ground truth.

    .venv/bin/python bench/flywheel.py --images 100 --train-minutes 6
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

from pyspark.sql import functions as F  # noqa: E402

from florence2 import modeling  # noqa: E402
from florence2.targets import build_examples  # noqa: E402
from florence2.tokenization import build_tokenizer  # noqa: E402
from florence2.train import fit  # noqa: E402
from lakehouse.config import load_settings  # noqa: E402
from lakehouse.examples import gold_annotations  # noqa: E402
from lakehouse.ingest import run_ingest  # noqa: E402
from lakehouse.rounds import RoundConfig, run_round  # noqa: E402
from lakehouse.spark import get_spark  # noqa: E402
from lakehouse.synthetic import write_world  # noqa: E402
from lakehouse.tables import TableRoot, read  # noqa: E402
from quality.annotation_metrics import score  # noqa: E402

TRAIN_TASKS = ("<OD>", "<OCR_WITH_REGION>", "<CAPTION>", "<DETAILED_CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>",
               "<REGION_TO_CATEGORY>")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--train-minutes", type=float, default=6.0)
    p.add_argument("--size", default="tiny")
    p.add_argument("--home", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "flywheel.json"))
    args = p.parse_args()
    from PIL import Image

    home = Path(args.home or tempfile.mkdtemp(prefix="fld-flywheel-"))
    s = load_settings(home=home)
    spark = get_spark(s, "fld-flywheel")
    root = TableRoot(s.tables_root)
    t0 = time.time()
    write_world(s.landing, s.synthetic_dir, n_images=args.images, seed=0)
    run_ingest(spark, s, log=None)
    truth = {json.loads(x)["image_id"]: json.loads(x) for x in open(s.synthetic_dir / "ground_truth.jsonl")}
    run_round(spark, s, RoundConfig(round=1))
    gold1 = [r.asDict(recursive=True) for r in read(spark, root, "gold_fld").filter("round = 1").collect()]
    m1 = score(gold1, truth)
    print("round 1:", json.dumps(m1))

    images = {r.image_id: r for r in read(spark, root, "bronze_images").collect()}
    examples = []
    for row in gold1:
        img = images[row["image_id"]]
        row = dict(row, width=img.width, height=img.height)
        pil = Image.open(io.BytesIO(img.content)).convert("RGB")
        examples += [(pil, e) for e in build_examples(gold_annotations(row), TRAIN_TASKS)]
    corpus = [e.target for _, e in examples if "<loc_" not in e.target] + [r["caption_more_detailed"] or "" for r in gold1]
    tok = build_tokenizer(corpus, vocab_size=2000)
    model, proc = modeling.create(args.size, tok, seed=0)
    tr = fit(model, proc, examples, steps=100_000, batch_size=16, lr=1e-3, time_limit_s=args.train_minutes * 60)
    print("trained:", tr)
    model_dir = home / "models" / "round1-tiny"
    modeling.save(model, proc, model_dir)

    run_round(spark, s, RoundConfig(round=2, model=str(model_dir), specialists=[]))
    gold2 = [r.asDict(recursive=True) for r in read(spark, root, "gold_fld").filter("round = 2").collect()]
    m2 = score(gold2, truth)
    print("round 2:", json.dumps(m2))
    by2 = {f"{r.annotator}/{r.kind}": r["count"] for r in read(spark, root, "silver_annotations")
           .filter(F.col("round") == 2).groupBy("annotator", "kind").count().collect()}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, local[2] Spark, CPU training",
        "images": args.images, "model": args.size, "train_examples": len(examples), "training": tr,
        "round1": m1, "round2": m2, "round2_annotations_by_annotator": by2,
        "delta_f1": {k: round(m2[k]["f1"] - m1[k]["f1"], 4) for k in m1}, "wall_s": round(time.time() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["delta_f1"]), "->", args.out)


if __name__ == "__main__":
    main()
