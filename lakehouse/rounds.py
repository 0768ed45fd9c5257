"""A refinement round: annotate -> filter -> merge -> gate -> publish.

Round 1 annotates bronze images with the offline specialists and takes the
sources' human labels.  Round N > 1 starts from round N-1's filtered annotations
and adds a model specialist's predictions (the model trained on round N-1), so
the next round's data is refined by the model: the flywheel.  The round's
annotations land in silver; the merged FLD rows are published to gold only if
the Great Expectations gate passes.  Every attempt is a row in ``rounds``.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.filters import FilterConfig, apply_filters
from lakehouse.fld import build_gold, human_annotations, publish_gold
from lakehouse.specialists import from_config, run_specialists
from lakehouse.statistics import round_statistics
from lakehouse.tables import TABLES, TableRoot, current_version, ensure_tables, merge_insert, read
from quality.gate import GateConfig, annotations_view, gold_view, run_gate

DEFAULT_SPECIALISTS = ({"type": "tesseract"}, {"type": "rapidocr"}, {"type": "contours"})


class GateFailed(RuntimeError):
    """The round's data failed its quality gate; nothing was published."""


@dataclass
class RoundConfig:
    round: int
    specialists: list = field(default_factory=lambda: [dict(s) for s in DEFAULT_SPECIALISTS])
    model: str | None = None           # round > 1: the Florence-2 model (directory or MLflow URI) that refines
    filters: FilterConfig = field(default_factory=FilterConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    image_limit: int | None = None     # annotate only this many images (smoke runs)


def latest_published_round(spark, root: TableRoot) -> int | None:
    r = read(spark, root, "rounds").filter("published").agg(F.max("round").alias("r")).collect()[0]["r"]
    return r


def _annotate(spark, root: TableRoot, cfg: RoundConfig, log):
    images = read(spark, root, "bronze_images")
    if cfg.image_limit:
        images = images.orderBy("image_id").limit(cfg.image_limit)
    if cfg.round == 1:
        specialists = from_config(cfg.specialists)
        log(f"[round 1] specialists: {', '.join(f'{s.name}@{s.version}' for s in specialists)} + human labels")
        anns = run_specialists(images, specialists, 1).unionByName(
            human_annotations(spark, root, 1).join(images.select("image_id"), "image_id", "left_semi"))
        return anns, specialists
    if not cfg.model and not cfg.specialists:
        raise ValueError(f"round {cfg.round} needs --model (the Florence-2 model trained on round {cfg.round - 1}) "
                         "or specialists to refine with")
    prev = read(spark, root, "silver_annotations").filter(F.col("round") == cfg.round - 1)
    if prev.limit(1).count() == 0:
        raise ValueError(f"round {cfg.round - 1} has no annotations in silver; run it first")
    specialists = from_config(([{"type": "florence2", "model": cfg.model}] if cfg.model else []) + list(cfg.specialists or []))
    log(f"[round {cfg.round}] refining round {cfg.round - 1} with {', '.join(s.name for s in specialists)}")
    fresh = run_specialists(images, specialists, cfg.round)
    # an annotator that runs again replaces what it said last round
    carried = (prev.filter(~F.col("annotator").isin([sp.name for sp in specialists]))
               .withColumn("round", F.lit(cfg.round)).join(images.select("image_id"), "image_id", "left_semi"))
    return carried.unionByName(fresh), specialists


def _replace_round(root: TableRoot, name: str, df, round_: int) -> None:
    w = df.write.format("delta").mode("overwrite").option("replaceWhere", f"round = {int(round_)}")
    w.saveAsTable(root.ident(name)) if root.is_catalog else w.save(root.path(name))


def run_round(spark, settings: Settings, cfg: RoundConfig, log=print) -> dict:
    root = TableRoot(settings.tables_root)
    ensure_tables(spark, root)
    t0 = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    anns, specialists = _annotate(spark, root, cfg, log)
    anns = anns.persist()
    log(f"[round {cfg.round}] annotate: {anns.count()} annotations")
    kept, removed = apply_filters(anns, cfg.filters)
    kept = kept.persist()
    removed_rows = removed.collect()
    log(f"[round {cfg.round}] filter: kept {kept.count()}, removed {sum(r['removed'] for r in removed_rows)}")
    # silver holds the round's filtered annotations; one atomic replace of the round's slice (rerun-safe)
    _replace_round(root, "silver_annotations", kept, cfg.round)
    flog = spark.createDataFrame(
        [(cfg.round, r["step"], r["kind"], r["annotator"], r["reason"], int(r["removed"]), t0) for r in removed_rows],
        TABLES["filter_log"].schema)
    _replace_round(root, "filter_log", flog, cfg.round)

    silver = read(spark, root, "silver_annotations").filter(F.col("round") == cfg.round)
    candidate = build_gold(silver, cfg.round).persist()
    log(f"[round {cfg.round}] merge: {candidate.count()} FLD rows; running the quality gate")
    gate = run_gate(spark, root, settings.home, cfg.round, {
        "annotations": annotations_view(silver, read(spark, root, "bronze_images")),
        "gold": gold_view(candidate)}, cfg.gate)
    log(gate.summary())
    stats = round_statistics(candidate, silver)
    if gate.success:
        publish_gold(spark, root, candidate, cfg.round)
    row = (cfg.round, t0, gate.success, gate.success, current_version(spark, root, "silver_annotations"),
           current_version(spark, root, "gold_fld"), current_version(spark, root, "bronze_images"), cfg.model,
           json.dumps([f"{s.name}@{s.version}" for s in specialists]), json.dumps(stats), json.dumps(gate.per_suite, default=str))
    merge_insert(spark, root, "rounds", spark.createDataFrame([row], TABLES["rounds"].schema), ["round", "attempt_at"])
    anns.unpersist()
    kept.unpersist()
    candidate.unpersist()
    result = {"round": cfg.round, "published": gate.success, "gate": gate, "stats": stats,
              "gold_version": row[5], "silver_version": row[4]}
    if not gate.success:
        raise GateFailed(f"round {cfg.round} not published; latest published round stays "
                         f"{latest_published_round(spark, root)}\n{gate.summary()}")
    return result
