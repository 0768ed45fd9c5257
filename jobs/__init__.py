"""Thin entry points, one per workflow task; the same ones run locally and on Databricks."""
