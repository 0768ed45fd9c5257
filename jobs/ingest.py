"""Streaming ingest of the landing area into bronze Delta tables (and quarantine)."""
from __future__ import annotations

from jobs.common import base_parser, settings_from
from lakehouse.ingest import run_ingest, totals
from lakehouse.reporting import print_table, table_versions
from lakehouse.spark import get_spark


def main(argv=None) -> dict:
    p = base_parser(__doc__)
    p.add_argument("--mode", choices=("available-now", "continuous"), default="available-now",
                   help="available-now: process what has landed, then stop; continuous: keep polling")
    p.add_argument("--timeout", type=float, default=None, help="stop a continuous run after this many seconds")
    p.add_argument("--max-files-per-trigger", type=int, default=None)
    args = p.parse_args(argv)
    s = settings_from(args, max_files_per_trigger=args.max_files_per_trigger)
    spark = get_spark(s, "fld-ingest")
    res = run_ingest(spark, s, mode=args.mode, timeout_s=args.timeout)
    t = totals(spark, s)
    rows = [(k, v["inputs"], v["new_images"], v["duplicates"], v["quarantined"], v["labels"])
            for k, v in sorted(t["per_source"].items())]
    rows.append(("total", *(sum(r[i] for r in rows) for i in range(1, 6))))
    print(f"[ingest] {len(res.batches)} micro-batches in {res.seconds:.1f}s")
    print_table(("source", "inputs", "new images", "duplicates", "quarantined", "labels"), rows)
    print("quarantine by reason:", t["quarantine"])
    print_table(("table", "delta version"), sorted(table_versions(spark, s.tables).items()))
    return t


if __name__ == "__main__":
    main()
