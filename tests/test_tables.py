import pytest

from lakehouse.tables import TABLES, TableRoot, current_version, ensure_tables, read


def test_table_root_kinds(tmp_path):
    assert TableRoot("main.fld").is_catalog
    assert TableRoot("main.fld").ident("bronze_images") == "main.fld.bronze_images"
    r = TableRoot(str(tmp_path))
    assert not r.is_catalog and r.ident("quarantine") == f"delta.`{tmp_path}/quarantine`"
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        r.ident("nope")


def test_ensure_tables_idempotent_with_constraints(spark, tmp_path):
    root = TableRoot(str(tmp_path / "tables"))
    ensure_tables(spark, root)
    versions = {n: current_version(spark, root, n) for n in TABLES}
    ensure_tables(spark, root)
    assert {n: current_version(spark, root, n) for n in TABLES} == versions
    for name, t in TABLES.items():
        assert read(spark, root, name).schema.fieldNames() == t.schema.fieldNames()
    props = {r["key"] for r in spark.sql(f"SHOW TBLPROPERTIES {root.ident('quarantine')}").collect()}
    assert "delta.constraints.known_reason" in props
    with pytest.raises(Exception, match="(?i)check constraint"):
        spark.sql(f"INSERT INTO {root.ident('quarantine')} VALUES "
                  "('q', 'coco', 'x', null, null, 'because', null, 0, current_timestamp(), null, null)")


def test_a_table_with_a_required_column_this_version_does_not_write_is_refused_by_name(spark, tmp_path):
    """A bronze_images made before the image store holds a NOT NULL ``content`` column: every append would
    fail deep inside Delta, so ``ensure_tables`` says which table, which column and what to do."""
    from delta.tables import DeltaTable
    from pyspark.sql import types as T

    root = TableRoot(str(tmp_path / "tables"))
    old = T.StructType([T.StructField("content", T.BinaryType(), False), *TABLES["bronze_images"].schema.fields])
    DeltaTable.createIfNotExists(spark).addColumns(old).location(root.path("bronze_images")).execute()
    with pytest.raises(ValueError, match=r"table bronze_images .* required column\(s\) \['content'\].*new FLD_HOME"):
        ensure_tables(spark, root, ["bronze_images"])


def test_python_workers_do_not_reread_pysparks_archives_every_task(spark):
    """``lakehouse.pydaemon``: the workers import pyspark from its folder, so the per-task
    ``importlib.invalidate_caches()`` has no archive directory to read again."""
    def importers(_):
        import sys
        import zipimport
        yield from (k for k, v in sys.path_importer_cache.items()
                    if isinstance(v, zipimport.zipimporter) and "pyspark" in k)

    assert spark.conf.get("spark.python.daemon.module") == "lakehouse.pydaemon"
    assert spark.sparkContext.parallelize(range(4), 2).mapPartitions(importers).collect() == []
