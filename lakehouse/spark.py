"""The one SparkSession factory: Delta configured, local by default, Databricks' session when there."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
from pathlib import Path

from lakehouse.config import Settings, load_settings

_SCALA = "2.12"
MAVEN = "https://repo1.maven.org/maven2"


def delta_jar_coordinates() -> list[tuple[str, str, str]]:
    """delta-spark and its runtime dependencies (its POM's compile scope), for the installed version."""
    v = importlib.metadata.version("delta-spark")
    return [("io.delta", f"delta-spark_{_SCALA}", v), ("io.delta", "delta-storage", v),
            ("org.antlr", "antlr4-runtime", "4.9.3")]


def _delta_coordinates() -> str:
    return ",".join(":".join(c) for c in delta_jar_coordinates()[:1])


def jar_dir() -> Path:
    """Shared jar cache outside the clone, filled once by ``scripts/setup.sh``."""
    return Path(os.environ.get("FLD_JAR_DIR") or Path(os.environ.get("FLD_CACHE", Path.home() / ".cache/fld")) / "jars")


def ivy_dir() -> Path:
    return jar_dir().parent / "ivy"


def _cached_delta_jars() -> list[str]:
    jars = [jar_dir() / f"{a}-{v}.jar" for _, a, v in delta_jar_coordinates()]
    return [str(j) for j in jars] if all(j.exists() for j in jars) else []


def fetch_jars() -> list[str]:
    """Download the Delta jars straight from Maven Central, checking each one's SHA-1.
    (Ivy resolution also tries other repositories and was seen to hang on a closed network.)"""
    import hashlib
    import urllib.request

    jar_dir().mkdir(parents=True, exist_ok=True)
    for g, a, v in delta_jar_coordinates():
        dest = jar_dir() / f"{a}-{v}.jar"
        if dest.exists():
            continue
        url = f"{MAVEN}/{g.replace('.', '/')}/{a}/{v}/{a}-{v}.jar"
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
        with urllib.request.urlopen(url + ".sha1", timeout=60) as r:
            want = r.read().decode().split()[0].strip()
        if hashlib.sha1(data).hexdigest() != want:
            raise RuntimeError(f"checksum mismatch for {url}")
        tmp = dest.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.rename(dest)
    return _cached_delta_jars()


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


# Quiet from the JVM's first line (setLogLevel("ERROR") comes after the startup warnings): warn, the level
# Spark's shell logic expects (any other makes it print a banner), and no native-Hadoop warning
LOG4J2 = """rootLogger.level = warn
logger.nativecode.name = org.apache.hadoop.util.NativeCodeLoader
logger.nativecode.level = error
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def _log4j2_file(home: Path) -> Path:
    path = home / "log4j2.properties"
    if not path.exists() or path.read_text() != LOG4J2:
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(LOG4J2)
    return path


# the checkout this code was imported from: the packages jobs, lakehouse, quality and florence2 sit in it
CODE_ROOT = str(Path(__file__).resolve().parents[1])


def with_code_root(env: dict) -> dict:
    """``env`` with this checkout first on PYTHONPATH.  The virtualenv is shared between clones and holds
    an editable install of whichever clone ran setup last; processes this one starts (Spark's Python
    workers, Horovod ranks) must import the driver's clone, not that one."""
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != CODE_ROOT]
    return dict(env, PYTHONPATH=os.pathsep.join([CODE_ROOT, *parts]))


# pyarrow 14 (pinned for Petastorm) crashes the Python worker, a segfault in its Arrow -> pandas
# conversion, on a batch whose array<struct<..., array<array<...>>>> column holds no struct at all
# (every row null or empty): a manifest chunk of unlabelled rows, gold rows without grounding.  A
# crashed worker fails its micro-batch on every retry, so such columns cross into pandas UDFs as JSON.
def json_columns(df, cols):
    """``df`` with ``cols`` as JSON text, for a pandas UDF that reads them with ``parse_json_columns``."""
    from pyspark.sql import functions as F

    keep_nulls = {"ignoreNullFields": "false"}  # every field present, as the Arrow path gives them
    return df.select(*[F.to_json(c, keep_nulls).alias(c) if c in cols else c for c in df.columns])


def parse_json_columns(pdf, cols):
    """Inside the UDF: the ``json_columns`` text back as lists of dicts."""
    for c in cols:
        pdf[c] = [None if v is None else json.loads(v) for v in pdf[c]]
    return pdf


# Parquet first checks a page's size after 100 rows: 100 camera images of a few MB each are one page,
# buffered and compressed on the heap, and a 1 GiB executor ran out of memory writing bronze.  Checking
# after every 10 rows bounds a page by the data's size, not the row count.
PARQUET_SIZE_CHECKS = {"parquet.page.size.row.check.min": "10"}


def _bounded_parquet_pages(spark):
    """Session SQL settings reach every write's Hadoop configuration (also on a running Databricks
    session, where cluster settings cannot be changed from here)."""
    for k, v in PARQUET_SIZE_CHECKS.items():
        spark.conf.set(k, v)
    return spark


def get_spark(settings: Settings | None = None, app_name: str = "fld", conf: dict | None = None):
    """Return a SparkSession with Delta Lake enabled.

    On Databricks the running session is returned unchanged.  Locally the Delta
    jars come from the shared cache when present (no network), else from Maven;
    ``conf`` overrides any Spark setting made here (benchmarks compare with it).
    """
    from pyspark.sql import SparkSession

    if on_databricks():
        return _bounded_parquet_pages(SparkSession.builder.getOrCreate())
    settings = settings or load_settings()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYTHONPATH"] = with_code_root(os.environ)["PYTHONPATH"]  # the JVM and its workers inherit it
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON") or __import__("sys").executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.executor.memory", settings.spark_executor_memory)
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
        .config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
        .config("spark.python.daemon.module", "lakehouse.pydaemon")  # ~60-120 ms less per Python task
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={settings.home / 'derby'} "
                f"-Dlog4j2.configurationFile={_log4j2_file(settings.home).as_uri()}")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
        # Delta rebuilds a table's snapshot from its log after every commit with this many tasks (default
        # 50): on a few local cores that fixed cost, not the data, was most of a small write (issue 10)
        .config("spark.databricks.delta.snapshotPartitions", str(settings.shuffle_partitions))
    )
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    jars = _cached_delta_jars()
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    else:
        builder = builder.config("spark.jars.packages", _delta_coordinates()).config(
            "spark.jars.ivy", str(ivy_dir())
        )
    spark = _bounded_parquet_pages(builder.getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.ERROR)
    return spark


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fetch-jars", action="store_true", help="download the Delta jars into the shared cache")
    p.add_argument("--which-code", action="store_true",
                   help="print the checkout the driver and a Spark Python worker import lakehouse from")
    args = p.parse_args(argv)
    if args.which_code:
        spark = get_spark(load_settings(), "fld-which-code")
        worker = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("lakehouse.spark").spark.CODE_ROOT)
        print(json.dumps({"driver": CODE_ROOT, "worker": worker.collect()[0]}))
        return
    if args.fetch_jars:
        print("delta jars:", *fetch_jars(), sep="\n  ")


if __name__ == "__main__":
    main()
