"""The data flywheel, measured on the synthetic world, where every answer is known.

round 1 (specialists + human labels) -> train (the production recipe, through
``jobs.train``) -> round 2 (the model, behind calibrated acceptance and the audit
gate) -> train again -> round 3 ...  Every round attempt is scored against the
ground truth of all images (precision / recall / F1 per family), next to its
audit-slice scores and whether the gate published it.

    .venv/bin/python bench/flywheel.py --images 2000 --rounds 3 --train-minutes 10

The training is the learning report's best CPU recipe unless told otherwise: ``<OD>`` alone for the
first 60% of the budget (9 of 15 minutes, as in the learning report; a first phase that mixes in
``<REGION_TO_CATEGORY>`` stays image-blind), then the tasks the round's model answers (``--mixture``), one schedule,
lr 2e-3 with 150 warm-up steps, region prompts supervised as the box's label (``--set``).

Writes ``bench/results/flywheel.json`` and ``flywheel.png`` (F1 per family by round).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lakehouse.rounds import GateFailed, RoundConfig, round_history, run_round  # noqa: E402
from lakehouse.training import (LEARNED, ROUND_MIXTURE, TRUSTED_CLAIM_PRECISION, first_phase,  # noqa: E402
                                run_training)
from world import budget_config, world_at_round_one  # noqa: E402
from lakehouse.tables import read  # noqa: E402
from quality.audit import FAMILIES, score  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-minutes", type=float, default=10.0)
    p.add_argument("--first", default=None, metavar="TASK[,TASK]=MINUTES",
                   help="curriculum of each training (default: '<OD>=' 60%% of --train-minutes; 'none' for off)")
    p.add_argument("--mixture", default=json.dumps(ROUND_MIXTURE), help="JSON task weights of the training examples")
    p.add_argument("--set", nargs="*", action="extend", default=None, metavar="KEY=VALUE",
                   help=f"recipe overrides (default: {' '.join(LEARNED)})")
    p.add_argument("--min-claim-precision", type=float, default=TRUSTED_CLAIM_PRECISION,
                   help="train on a region label only where its claim was right this often on the audit slice "
                        "(negative: every label)")
    p.add_argument("--model", action="append", default=[], metavar="DIR",
                   help="skip a training and refine with this trained model instead (one per round after the "
                        "first, in order; e.g. an earlier run's HOME/runs/flywheel-round1/model): an acceptance "
                        "change replayed on the same model")
    p.add_argument("--home", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "flywheel"))
    args = p.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="fld-flywheel-"))
    t0 = time.time()
    s, spark = world_at_round_one(home, args.images, "fld-flywheel-bench")
    cfg = budget_config(args.train_minutes, LEARNED if args.set is None else args.set)
    first = first_phase(args.train_minutes, args.first)
    mixture = json.loads(args.mixture)
    claims = args.min_claim_precision if args.min_claim_precision >= 0 else None
    trainings = {}
    for n in range(2, args.rounds + 1):
        if n - 2 < len(args.model):
            model_dir = args.model[n - 2]
            trainings[n - 1] = {"model": model_dir}
        else:
            tr = run_training(s, cfg, round_=n - 1, mixture=mixture, run_name=f"flywheel-round{n - 1}", register=None,
                              first=first, min_claim_precision=claims)
            model_dir, trainings[n - 1] = tr["model_dir"], tr["result"]
        try:
            run_round(spark, s, RoundConfig(round=n, model=model_dir, specialists=[]))
        except GateFailed as e:
            print(f"round {n} refused by the gate; the next round refines the latest published one:\n{e}")

    root = s.tables
    truth = {json.loads(x)["image_id"]: json.loads(x) for x in open(s.synthetic_dir / "ground_truth.jsonl")}
    rounds = []
    for h in round_history(spark, root):
        entry = {"round": h["round"], "published": h["published"], "audit": h["audit"]}
        if h["published"]:
            gold = [r.asDict(recursive=True) for r in read(spark, root, "gold_fld").filter(f"round = {h['round']}").collect()]
            entry["truth"] = score(gold, truth)
        rounds.append(entry)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, local[2] Spark, CPU training",
           "images": args.images, "train_minutes": args.train_minutes, "first": first, "mixture": mixture,
           "min_claim_precision": claims,
           "config": vars(cfg), "training": trainings, "rounds": rounds,
           "wall_s": round(time.time() - t0, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    _plot(rounds, out.with_suffix(".png"))
    for r in rounds:
        f1 = {f: r.get("truth", {}).get(f, {}).get("f1") for f in FAMILIES}
        print(f"round {r['round']} {'published' if r['published'] else 'REFUSED'}: truth F1 {f1}")


def _plot(rounds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pub = [r for r in rounds if r["published"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for fam in FAMILIES:
        pts = [(r["round"], r["truth"][fam]["f1"]) for r in pub if fam in r.get("truth", {})]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=fam)
    ax.set_xlabel("published round")
    ax.set_ylabel("F1 against the synthetic truth")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("FLD quality by round")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
