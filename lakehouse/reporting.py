"""Small helpers for the summaries jobs print."""
from __future__ import annotations

from lakehouse.tables import TABLES, TableRoot, current_version


def print_table(header, rows) -> None:
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))


def table_versions(spark, root: TableRoot, names=None) -> dict[str, int]:
    return {n: current_version(spark, root, n) for n in names or TABLES}
