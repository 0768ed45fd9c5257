"""The main job on the embedded default: synthetic world -> streaming ingest ->
refinement round 1 behind its quality gate -> dataset statistics.

Training, round 2 with the trained model, evaluation and registration join this
pipeline as they land; each stage is its own job in ``jobs/`` as well.
"""
from __future__ import annotations

import time

from jobs import generate, ingest, refine_round, statistics
from jobs.common import base_parser, settings_from


def main(argv=None) -> None:
    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    s = settings_from(args)
    t0 = time.time()
    common = [f"--home={s.home}"] + ([f"--table-root={args.table_root}"] if args.table_root else [])
    print(f"== 1/4 generate the synthetic world ({args.images} scenes, seed {args.seed}) under {s.home}")
    generate.main(common + [f"--images={args.images}", f"--seed={args.seed}"])
    print("== 2/4 streaming ingest (available-now) into bronze Delta tables")
    ingest.main(common)
    print("== 3/4 refinement round 1: specialists + human labels -> filters -> FLD -> quality gate -> publish")
    refine_round.main(common + ["--round=1"])
    print("== 4/4 dataset statistics per published round")
    statistics.main(common)
    print(f"== done in {time.time() - t0:.0f}s; everything the platform wrote is under {s.home}")


if __name__ == "__main__":
    main()
