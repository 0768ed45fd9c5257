"""Argument plumbing shared by the job entry points."""
from __future__ import annotations

import argparse

from lakehouse.config import Settings, load_settings


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--home", help="state directory (default $FLD_HOME or ./fld_home)")
    p.add_argument("--table-root", help="a path, or catalog.schema on Databricks (default $FLD_HOME/tables)")
    return p


def settings_from(args: argparse.Namespace, **extra) -> Settings:
    return load_settings(home=args.home, table_root=args.table_root, **extra)
