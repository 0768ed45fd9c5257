"""The main job: the whole flywheel on the embedded default (the synthetic world).

1. generate the synthetic world;  2. streaming ingest;  3. refinement round 1;
4. train the tiny model on round 1;  5. round 2 refined by that model;
6. evaluate;  7. register (alias candidate; champion if it beats the current one);
8. print a summary table and the command that serves the model.
"""
from __future__ import annotations

import json
import time

from jobs import evaluate, generate, ingest, refine_round, statistics, train
from jobs.common import base_parser, settings_from


def main(argv=None) -> None:
    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-minutes", type=float, default=9.0)
    p.add_argument("--first", metavar="TASK[,TASK]=MINUTES", help="first phase (default DEMO_FIRST), or 'none'")
    p.add_argument("--mixture", help="JSON task weights over the flywheel bench's (default DEMO_MIXTURE)")
    args = p.parse_args(argv)
    s = settings_from(args)
    t0 = time.time()
    common = [f"--home={s.home}"] + ([f"--table-root={args.table_root}"] if args.table_root else [])
    stage = lambda n, text: print(f"\n== {n}/8 {text}  [{time.time() - t0:.0f}s]", flush=True)  # noqa: E731
    stage(1, f"generate the synthetic world ({args.images} scenes, seed {args.seed}) under {s.home}")
    generate.main(common + [f"--images={args.images}", f"--seed={args.seed}"])
    stage(2, "streaming ingest (available-now) into bronze Delta tables")
    ing = ingest.main(common)
    stage(3, "refinement round 1: specialists + human labels -> filters -> FLD -> quality gate -> publish")
    r1 = refine_round.main(common + ["--round=1"])
    from lakehouse.training import DEMO_FIRST, DEMO_MIXTURE, first_phase, flywheel_train_args

    first, mixture = args.first or DEMO_FIRST, json.loads(args.mixture) if args.mixture else DEMO_MIXTURE
    stage(4, f"train the tiny Florence-2 on round 1 ({args.train_minutes:g} min budget, the demo's mixture, "
             f"first phase {first_phase(args.train_minutes, first)})")
    tr = train.main(common + ["--run-name=demo-round1", *flywheel_train_args(args.train_minutes, first, mixture)])
    stage(5, "refinement round 2 with the round-1 model as a specialist")
    rounds = {1: r1}
    try:
        rounds[2] = refine_round.main(common + ["--round=2", f"--model={tr['model_dir']}"])
    except SystemExit as e:  # a failed gate: round 2 is not published; the flywheel keeps round 1
        print(f"round 2 not published (exit {e.code}); latest published round stays 1")
    stage(6, "evaluate on the validation split, next to trivial baselines")
    ev = evaluate.main(common + [f"--examples-version={tr['examples_version']}",
                                 f"--model=models:/florence2/{tr['model']['version']}", "--promote", "--limit=200"])
    from lakehouse.evaluation import fresh_scenes
    from lakehouse.tracking import configure_mlflow

    configure_mlflow(s)
    fresh = fresh_scenes("models:/florence2@champion", 50, args.seed + 10_007)
    stage(7, "register: alias candidate on the trained version; champion moves only if it wins")
    statistics.main(common)
    stage(8, "summary")
    _summary(s, ing, rounds, tr, ev, fresh, time.time() - t0)


def _audit(s):
    from lakehouse.rounds import audit_table, round_history
    from lakehouse.spark import get_spark

    return audit_table(round_history(get_spark(s, "fld-demo"), s.tables))


def _summary(s, ing, rounds, tr, ev, fresh, seconds):
    from lakehouse.reporting import print_table

    audit = _audit(s)
    print("\nCounts per source (ingest):")
    print_table(("source", "inputs", "new images", "duplicates", "quarantined"),
                [(k, v["inputs"], v["new_images"], v["duplicates"], v["quarantined"]) for k, v in sorted(ing["per_source"].items())])
    print("\nRounds:")
    rows = []
    for n, r in rounds.items():
        st = r["stats"]
        rows.append((n, "PASSED" if r["gate"].success else "FAILED", r["gold_version"], st["images"],
                     st["region_text_annotations"], st["phrase_region_triplets"], st["ocr_words"]))
    print_table(("round", "gate", "gold version", "images", "region-text", "phrase-region", "OCR words"), rows)
    print("\nAudit slice per round attempt (F1 against the trusted reference; the gate refuses a drop):")
    print_table(*audit)
    print("\nEvaluation (validation split):")
    m, b = ev["val"]["model"], ev["val"]["baseline"]
    print_table(("metric", "model", "baseline"), [(k, f"{m[k]:.4f}", f"{b.get(k, float('nan')):.4f}") for k in sorted(m)])
    m, b = fresh["model"], fresh["baseline"]
    print(f"\nThe champion through MLflow on {fresh['images']} freshly generated scenes (seed {fresh['seed']}), <OD>: "
          f"AP50 {m['od_AP50']:.4f} (whole-image baseline {b['od_AP50']:.4f}), mAP {m['od_mAP']:.4f}")
    reg = tr["model"]
    print(f"\nMLflow run {tr['run_id']}; registered florence2 version {reg['version']} (alias candidate"
          f"{', champion' if ev.get('promoted') else ''}); tracking store {s.mlflow_dir / 'mlflow.db'}")
    print(f"\nServe it:\n  PATH=.venv/bin:$PATH MLFLOW_TRACKING_URI=sqlite:///{s.mlflow_dir / 'mlflow.db'} \\\n"
          f"    mlflow models serve -m models:/florence2@champion --env-manager local -h 127.0.0.1 -p 5000")
    print(json.dumps({"demo_wall_s": round(seconds, 1)}))


if __name__ == "__main__":
    main()
