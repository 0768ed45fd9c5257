"""One refinement round: annotate -> filter -> merge -> quality gate -> publish.

Exits non-zero with a readable summary when the gate fails; the published data is then untouched.
"""
from __future__ import annotations

import json
import sys

from jobs.common import base_parser, settings_from
from lakehouse.reporting import print_table
from lakehouse.rounds import GateFailed, RoundBusy, RoundConfig, audit_table, round_history, run_round
from lakehouse.spark import get_spark


def main(argv=None) -> dict:
    p = base_parser(__doc__)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--model", help="round > 1: Florence-2 model directory or MLflow URI (models:/name@alias)")
    p.add_argument("--specialists", help='JSON list, e.g. [{"type": "tesseract"}, {"type": "contours"}]')
    p.add_argument("--no-relabel", action="store_true",
                   help="do not ask the model to name the published round's regions (<REGION_TO_CATEGORY>)")
    p.add_argument("--image-limit", type=int, default=None)
    args = p.parse_args(argv)
    s = settings_from(args)
    cfg = RoundConfig(round=args.round, model=args.model, relabel=not args.no_relabel, image_limit=args.image_limit)
    if args.specialists:
        cfg.specialists = json.loads(args.specialists)
    elif args.round > 1:
        cfg.specialists = []
    spark = get_spark(s, f"fld-round-{args.round}")
    try:
        res = run_round(spark, s, cfg)
    except GateFailed as e:
        print(str(e), file=sys.stderr)
        print_table(*audit_table(round_history(spark, s.tables)))
        sys.exit(1)
    except RoundBusy as e:
        print(str(e), file=sys.stderr)
        sys.exit(3)
    st = {k: v for k, v in res["stats"].items() if k != "annotations_by_annotator"}
    print_table(("statistic", f"round {args.round}"), sorted(st.items()))
    print_table(*audit_table(round_history(spark, s.tables)))
    print(f"published round {args.round} as gold_fld version {res['gold_version']}")
    return res


if __name__ == "__main__":
    main()
