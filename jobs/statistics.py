"""Dataset statistics per published round: Delta table fld_statistics + markdown + PNG report."""
from __future__ import annotations

from jobs.common import base_parser, settings_from
from lakehouse.spark import get_spark
from lakehouse.statistics import write_report
from lakehouse.tables import ensure_tables


def main(argv=None) -> dict:
    p = base_parser(__doc__)
    p.add_argument("--out", help="report folder (default $FLD_HOME/reports)")
    args = p.parse_args(argv)
    s = settings_from(args)
    spark = get_spark(s, "fld-statistics")
    root = s.tables
    ensure_tables(spark, root)
    rep = write_report(spark, root, args.out or s.home / "reports")
    print(open(rep["markdown"]).read())
    print("report:", rep["markdown"], rep["png"])
    return rep


if __name__ == "__main__":
    main()
