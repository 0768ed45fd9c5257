"""The one SparkSession factory: Delta configured, local by default, Databricks' session when there."""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import logging
import os
from pathlib import Path

from lakehouse.config import Settings, load_settings

_SCALA = "2.12"


def _delta_coordinates() -> str:
    return f"io.delta:delta-spark_{_SCALA}:{importlib.metadata.version('delta-spark')}"


def ivy_dir() -> Path:
    """Shared Ivy cache outside the clone, filled once by ``scripts/setup.sh``."""
    return Path(os.environ.get("FLD_IVY_DIR") or Path(os.environ.get("FLD_CACHE", Path.home() / ".cache/fld")) / "ivy")


def _cached_delta_jars() -> list[str]:
    version = importlib.metadata.version("delta-spark")
    jars = sorted(glob.glob(str(ivy_dir() / "jars" / "*.jar")))
    if any(Path(j).name == f"io.delta_delta-spark_{_SCALA}-{version}.jar" for j in jars):
        return jars
    return []


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(settings: Settings | None = None, app_name: str = "fld"):
    """Return a SparkSession with Delta Lake enabled.

    On Databricks the running session is returned unchanged.  Locally the Delta
    jars come from the shared cache when present (no network), else from Maven.
    """
    from pyspark.sql import SparkSession

    if on_databricks():
        return SparkSession.builder.getOrCreate()
    settings = settings or load_settings()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON") or __import__("sys").executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.default.parallelism", str(settings.shuffle_partitions))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.warehouse.dir", str(settings.home / "warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={settings.home / 'derby'}")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
    )
    jars = _cached_delta_jars()
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    else:
        builder = builder.config("spark.jars.packages", _delta_coordinates()).config(
            "spark.jars.ivy", str(ivy_dir())
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.ERROR)
    return spark


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fetch-jars", action="store_true", help="resolve the Delta jars into the shared Ivy cache")
    args = p.parse_args(argv)
    if args.fetch_jars:
        from pyspark.sql import SparkSession

        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        spark = (
            SparkSession.builder.master("local[1]")
            .config("spark.jars.packages", _delta_coordinates())
            .config("spark.jars.ivy", str(ivy_dir()))
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )
        spark.stop()
        print("delta jars:", *(_cached_delta_jars() or ["MISSING"]), sep="\n  ")
        if not _cached_delta_jars():
            raise SystemExit("Delta jars were not resolved into " + str(ivy_dir()))


if __name__ == "__main__":
    main()
