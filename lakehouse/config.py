"""Platform settings, defined once.

Every path the platform writes lives under ``$FLD_HOME`` (default ``./fld_home``),
so a user can see, back up or delete all of it.  Each default below can be
overridden by an environment variable of the same name in upper case with the
``FLD_`` prefix (for example ``FLD_SHUFFLE_PARTITIONS=8``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Settings:
    home: Path = Path("fld_home")
    # A filesystem path (tables stored by path) or ``catalog.schema`` (managed tables, Databricks).
    table_root: str = ""
    # Where bronze keeps image bytes, one file per distinct image named by its SHA-256 (content-addressed,
    # never rewritten): a path every worker can read and write, such as a Unity Catalog volume
    # (/Volumes/<catalog>/<schema>/<volume>/images) on Databricks.  Default: $FLD_HOME/images.
    image_store: str = ""
    spark_master: str = "local[2]"
    spark_driver_memory: str = "3g"
    spark_executor_memory: str = "2g"     # a cluster's executors (local mode runs in the driver)
    shuffle_partitions: int = 4
    # Decompression-bomb guard: images with more pixels are quarantined before decoding.
    max_image_pixels: int = 40_000_000
    # Files per micro-batch per source in streaming ingest.
    max_files_per_trigger: int = 50
    # Manifest rows per ingest micro-batch (fetch, validate, write): one landed manifest of millions of
    # lines is parsed into the landing_manifest table first and fetched this many rows at a time.
    max_rows_per_trigger: int = 20_000
    # Fetch http(s) URLs named by caption sources (Conceptual Captions / LAION style): off unless
    # set, and then only globally routable addresses plus the comma-separated allow-list
    # (networks or hosts, for private mirrors and tests).  See lakehouse.fetch.
    fetch_remote: bool = False
    fetch_allow: str = ""
    fetch_timeout_s: float = 10.0
    fetch_deadline_s: float = 30.0
    fetch_max_bytes: int = 64 << 20
    fetch_threads: int = 8

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def checkpoints(self) -> Path:
        return self.home / "checkpoints"

    @property
    def tables_root(self) -> str:
        return self.table_root or str(self.home / "tables")

    @property
    def image_store_path(self) -> str:
        return self.image_store or str(self.home / "images")

    @property
    def tables(self):
        """The ``lakehouse.tables.TableRoot`` of ``tables_root``."""
        from lakehouse.tables import TableRoot

        return TableRoot(self.tables_root)

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def synthetic_dir(self) -> Path:
        return self.home / "synthetic"

    def replace(self, **kw) -> "Settings":
        return dataclasses.replace(self, **kw)


def _coerce(field: dataclasses.Field, raw: str):
    if field.type in ("bool", bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if field.type in ("int", int):
        return int(raw)
    if field.type in ("float", float):
        return float(raw)
    if field.type in ("Path", Path):
        return Path(raw)
    return raw


def load_settings(**overrides) -> Settings:
    """Defaults, then ``FLD_*`` environment variables, then explicit overrides."""
    values = {}
    for f in dataclasses.fields(Settings):
        raw = os.environ.get("FLD_" + f.name.upper())
        if raw is not None and raw != "":
            values[f.name] = _coerce(f, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    s = Settings(**values)
    return s.replace(home=Path(s.home).absolute())
