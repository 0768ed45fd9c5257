"""A whole round 1 on the real COCO sample (not shipped: non-commercial licence), as a new user would:
land it, ingest, refine with the default specialists, print counts, the gate, statistics and the audit;
then (``--train-steps`` > 0) the rest of the pipeline on those photos: training examples (one row per
image), a short training run through Petastorm, the model registered in MLflow, the registered
pyfunc (what ``mlflow models serve`` runs) asked for ``<OD>`` and ``<CAPTION>`` on two of the photos,
and round 2 refined by that model (its annotations and relabels behind calibrated acceptance).

    .venv/bin/python bench/real_round.py --real-dev ../shared/data/real_dev --train-steps 20
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
    p.add_argument("--train-steps", type=int, default=20, help="0: stop after the round")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides, e.g. augment=hflip")
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
    if args.train_steps > 0:
        model = train_and_serve(s, spark, args.train_steps, args.set)
        try:
            run_round(spark, s, RoundConfig(round=2, model=model, specialists=[]))
        except GateFailed as e:
            print(f"round 2 not published:\n{e}")
        for h in round_history(spark, s.tables)[-1:]:
            print(f"round {h['round']} published={h['published']} audit={json.dumps(h['audit'])}")


def train_and_serve(s, spark, steps: int, overrides=()) -> str:
    """Train, register and ask the served model; returns the trained model's directory."""
    from florence2.recipe import load_config
    from lakehouse.evaluation import PyfuncPredictor
    from lakehouse.examples import example_rows
    from lakehouse.images import read_stored
    from lakehouse.tables import read
    from lakehouse.training import DEFAULT_CONFIG, run_training
    from florence2.predictor import Request

    cfg = load_config(DEFAULT_CONFIG, [f"max_steps={steps}", "batch_size=4", "checkpoint_every=0", *overrides])
    tr = run_training(s, cfg, run_name="real-round1", log=lambda *a: None)
    table = read(spark, s.tables, "training_examples", version=tr["examples_version"])
    tasks = {r.task: r["count"] for r in example_rows(table).groupBy("task").count().collect()}
    print(json.dumps({"examples_version": tr["examples_version"], "image_rows": table.count(),
                      "examples": sum(tasks.values()), "examples_by_task": tasks, "training": tr["result"],
                      "model": tr["model"]}, default=str))
    photos = [read_stored(r.content_path)
              for r in read(spark, s.tables, "bronze_images").orderBy("image_id").limit(2).collect()]
    uri = f"models:/florence2/{tr['model']['version']}"
    answers = PyfuncPredictor(uri).predict([Request(b, t) for b in photos for t in ("<OD>", "<CAPTION>")])
    for a in answers:
        print(f"served {a['task']}: {a['text'][:120]!r}")
    return tr["model_dir"]


if __name__ == "__main__":
    main()
