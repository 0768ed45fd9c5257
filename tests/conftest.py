"""Shared fixtures: one real local SparkSession with Delta per test run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lakehouse.config import load_settings

REAL_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_dev"


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from lakehouse.spark import get_spark

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    home = tmp_path_factory.mktemp("spark_home")
    s = get_spark(load_settings(home=home, spark_driver_memory="2g"), "fld-tests")
    yield s
    s.stop()


@pytest.fixture
def settings(tmp_path):
    """A fresh $FLD_HOME per test."""
    return load_settings(home=tmp_path / "fld_home", max_files_per_trigger=1000)


@pytest.fixture(scope="session")
def real_dev() -> Path:
    if not REAL_DEV.exists():
        pytest.skip(f"real dev images not present at {REAL_DEV} (they are not shipped with the repo)")
    return REAL_DEV
