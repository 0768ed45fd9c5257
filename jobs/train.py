"""Train Florence-2 on FLD: pin examples to a Delta version, launch the recipe, track it in MLflow.

1. Build ``training_examples`` from gold at a round (default: the latest published) unless
   ``--examples-version`` pins an existing version.
2. Write ``data.json``: the parquet files of that version's train split, their row count
   and the tokenizer directory.
3. Open an MLflow run: params, the dataset input (table, Delta version, round), the round's
   Great Expectations result; then run the recipe: in this process (``--launcher local``),
   under ``horovodrun -np N`` or with ``horovod.spark.run`` on the Spark cluster.
   With ``--first '<OD>=3'`` a second pinned version holding only those tasks trains first, and the
   whole mixture resumes its checkpoint under the same learning-rate schedule.
4. Log the trained model as a pyfunc, register it, and point the ``candidate`` alias at it.
"""
from __future__ import annotations

import json

from jobs.common import base_parser, settings_from


def main(argv=None) -> dict:
    from lakehouse.training import DEFAULT_CONFIG, LAUNCHERS

    p = base_parser(__doc__)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--round", type=int, default=None)
    p.add_argument("--examples-version", type=int, default=None, help="reuse this training_examples version")
    p.add_argument("--mixture", default=None, help='JSON task weights, e.g. {"<OCR>": 0.5, "<OD>": 2}')
    p.add_argument("--first", default=None, metavar="TASK[,TASK]=MINUTES",
                   help="curriculum: these tasks alone for the first MINUTES of max_minutes, then the whole "
                        "mixture under the same schedule, e.g. '<OD>=3'")
    p.add_argument("--min-claim-precision", type=float, default=None,
                   help="teach a region label only where its claim (annotator, label) was right at least this often "
                        "on the round's audit slice")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--launcher", choices=LAUNCHERS, default="local")
    p.add_argument("--np", type=int, default=2, help="Horovod processes (horovodrun / spark)")
    p.add_argument("--run-name", default=None)
    p.add_argument("--register", default="florence2", help="registered model name ('' to skip)")
    p.add_argument("overrides", nargs="*", help="recipe config overrides key=value")
    args = p.parse_args(argv)

    from florence2.recipe import load_config
    from lakehouse.training import run_training

    return run_training(settings_from(args), load_config(args.config, args.overrides), args.round,
                        args.examples_version, json.loads(args.mixture) if args.mixture else None, args.val_fraction,
                        args.launcher, args.np, args.run_name, args.register or None, args.first,
                        args.min_claim_precision)


if __name__ == "__main__":
    main()
