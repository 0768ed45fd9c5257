"""Data side of the Florence-2 platform: tables, Spark/Delta session, sources, ingest."""
