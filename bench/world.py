"""What the learning benches start from: the synthetic world landed, ingested and refined once, and
the recipe config of a time-budgeted training run."""
from __future__ import annotations


def world_at_round_one(home, images: int, app: str):
    """(settings, spark) of a home where ``images`` synthetic scenes are in bronze and round 1 is published;
    a home that already has them (an earlier run's ``--home``) is reused as it is."""
    from lakehouse.config import load_settings
    from lakehouse.ingest import run_ingest
    from lakehouse.rounds import RoundConfig, latest_published_round, run_round
    from lakehouse.spark import get_spark
    from lakehouse.synthetic import write_world
    from lakehouse.tables import ensure_tables

    s = load_settings(home=home)
    spark = get_spark(s, app)
    ensure_tables(spark, s.tables)
    if latest_published_round(spark, s.tables) is not None:
        print(f"[world] reusing {home}: round {latest_published_round(spark, s.tables)} is published")
        return s, spark
    write_world(s.landing, s.synthetic_dir, images, 0)
    run_ingest(spark, s)
    run_round(spark, s, RoundConfig(round=1))
    return s, spark


def budget_config(minutes: float, overrides=()):
    """The tiny recipe for ``minutes`` of training (cosine over the budget), batch 16, then ``overrides``."""
    from florence2.recipe import load_config
    from lakehouse.training import DEFAULT_CONFIG, budget_overrides

    return load_config(DEFAULT_CONFIG, [*budget_overrides(minutes), *overrides])
