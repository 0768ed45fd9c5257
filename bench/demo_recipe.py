"""What a training recipe gives at ``make demo``'s scale: retrain a finished demo's round 1 with ``jobs.train``
(the production path: pinned Delta versions, Petastorm, MLflow) under another curriculum or mixture, then probe
the final model and the first phase's last checkpoint on 50 fresh validation scenes (``learning_report --model``).

    .venv/bin/python bench/demo_recipe.py --home DEMO_HOME --run NAME --minutes 8 --first '<OD>=3' \\
        --mixture '{"<OD>": 12}'        # default: lakehouse.training.DEMO_MIXTURE

The probes land in ``bench/results/demo_recipe_NAME{,_first}.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    from lakehouse.training import DEMO_FIRST, DEMO_MIXTURE, flywheel_train_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="FLD_HOME of a finished `jobs.demo` (its round 1 is retrained)")
    p.add_argument("--run", required=True, help="run name (FLD_HOME/runs/NAME)")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--first", default=DEMO_FIRST, help="TASK[,TASK]=MINUTES, or 'none'")
    p.add_argument("--mixture", default=None, help="JSON task weights over ROUND_MIXTURE (default DEMO_MIXTURE)")
    p.add_argument("--val-images", type=int, default=50)
    args = p.parse_args(argv)
    mixture = json.loads(args.mixture) if args.mixture else DEMO_MIXTURE
    from jobs import train

    out = train.main([f"--home={args.home}", "--round=1", f"--run-name={args.run}", "--register=",
                      *flywheel_train_args(args.minutes, args.first, mixture)])
    run = Path(out["model_dir"]).parent
    probes = [("", None)]
    first = out["result"].get("first_phase", {}).get("steps")
    if first:  # the first phase's last checkpoint: what the mixture phase started from
        probes.append(("_first", run / "checkpoints" / f"step-{first:07d}" / "state.pt"))
    for suffix, ckpt in probes:
        subprocess.run([sys.executable, "bench/learning_report.py", "--model", str(run / "model"),
                        "--val-images", str(args.val_images),
                        "--out", str(ROOT / "bench" / "results" / f"demo_recipe_{args.run}{suffix}"),
                        *(["--checkpoint", str(ckpt)] if ckpt else [])], cwd=ROOT, check=True)
    print(f"[demo_recipe] {args.run}: first phase {first} steps, {out['result']['steps']} in all; probes in bench/results/demo_recipe_{args.run}*.md")


if __name__ == "__main__":
    main()
