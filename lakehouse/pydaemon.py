"""Spark's Python worker daemon, minus a per-task cost (``spark.python.daemon.module``, set by
``lakehouse.spark.get_spark`` outside Databricks).

Spark 3.5's worker calls ``importlib.invalidate_caches()`` before every task, and Python 3.10+ answers by
re-reading an archive's whole directory once per package imported from it: with pyspark imported from
``pyspark.zip`` and spark-core's jar on the path, ~60-120 ms of CPU per task on this machine, more than
many tasks' work.  A pip-installed pyspark ships those archives inside its own package folder, next to
the same code unpacked, so the daemon drops them from the path and its workers (forked from it) import
pyspark and py4j from folders.  A Spark whose pyspark exists only as archives keeps them.  Spark 4.1 calls
invalidate_caches only when the path changed (SPARK-54744).
"""
import os
import sys
from importlib.machinery import PathFinder


def _unpacked(name: str) -> str | None:
    folders = [p for p in sys.path if not p.endswith((".zip", ".jar"))]
    spec = PathFinder.find_spec(name, folders)
    return os.path.realpath(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


pyspark_dir = _unpacked("pyspark")
if pyspark_dir and _unpacked("py4j"):
    archives = {p for p in set(sys.path) | set(sys.path_importer_cache)
                if p.endswith((".zip", ".jar")) and os.path.realpath(p).startswith(pyspark_dir + os.sep)}
    sys.path[:] = [p for p in sys.path if p not in archives]
    for p in archives:  # invalidate_caches() visits every cached importer, not only those on the path
        sys.path_importer_cache.pop(p, None)

if __name__ == "__main__":
    from pyspark import daemon

    daemon.manager()
