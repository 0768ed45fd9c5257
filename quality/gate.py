"""Great Expectations suites for the round's tables, run as one checkpoint per round.

Suites are defined once here.  They validate views that expose what the checks
need (box corners and image size next to each annotation; word counts per caption
granularity; a caption key), not copies of the tables.  Results go to the
``quality_results`` Delta table and to Great Expectations data docs (HTML) under
``$FLD_HOME/gx``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from florence2.vocabulary import ANNOTATION_KINDS, CAPTION_KINDS, CAPTION_LEVELS, MAX_REGIONS_PER_IMAGE
from quality.audit import AuditConfig


@dataclass(frozen=True)
class GateConfig:
    # words per caption level; by default the filters' own ranges
    caption_words: dict = field(default_factory=lambda: {c.kind: c.words for c in CAPTION_LEVELS})
    max_regions_per_image: int | None = None   # None: the filters' limit (lakehouse.rounds.gate_config)
    min_mean_regions_per_image: float = 0.5
    # share of a round's images on which one specialist may raise or time out (annotation_errors)
    max_specialist_error_rate: float = 0.05
    audit: AuditConfig = field(default_factory=AuditConfig)


def word_count(col) -> Column:
    """``florence2.vocabulary.count_words`` as a Spark expression."""
    t = F.trim(col)
    return F.when(t == "", 0).otherwise(F.size(F.split(t, r"\s+")))


def annotations_view(silver: DataFrame, images: DataFrame) -> DataFrame:
    """Silver annotations of one round with image size, box corners, word counts and a caption key."""
    words = word_count(F.col("text"))
    v = silver.join(images.select("image_id", "width", "height"), "image_id", "left")
    cols = [F.col("bbox")[i].alias(n) for i, n in enumerate(("x0", "y0", "x1", "y1"))]
    cols += [F.when(F.col("kind") == k, words).alias(f"words_{k}") for k in CAPTION_KINDS]
    # one caption per image, granularity and specialist; human sources may carry several (COCO has five)
    cols.append(F.when(F.col("kind").isin(*CAPTION_KINDS) & ~F.col("annotator").startswith("human:"),
                       F.concat_ws("|", "image_id", "kind", "annotator")).alias("caption_key"))
    return v.select("annotation_id", "image_id", "round", "kind", "annotator", "confidence", "width", "height", *cols)


def gold_view(gold: DataFrame) -> DataFrame:
    return gold.select("image_id", "round", "n_regions", "caption_brief",
                       F.concat_ws("|", "image_id", F.col("round").cast("string")).alias("image_round"))


def suites(cfg: GateConfig) -> dict[str, list]:
    import great_expectations.expectations as gxe

    ann = [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("annotation_id", "image_id", "kind", "annotator")]
    ann += [
        gxe.ExpectColumnValuesToNotBeNull(column="width"),  # every annotated image exists in bronze
        gxe.ExpectColumnValuesToBeUnique(column="annotation_id"),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(ANNOTATION_KINDS)),
        gxe.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeBetween(column="x0", min_value=0.0),
        gxe.ExpectColumnValuesToBeBetween(column="y0", min_value=0.0),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="x1", column_B="x0", or_equal=False,
                                                    ignore_row_if="either_value_is_missing"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="y1", column_B="y0", or_equal=False,
                                                    ignore_row_if="either_value_is_missing"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="width", column_B="x1", or_equal=True,
                                                    ignore_row_if="either_value_is_missing"),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="height", column_B="y1", or_equal=True,
                                                    ignore_row_if="either_value_is_missing"),
        gxe.ExpectColumnValuesToBeUnique(column="caption_key"),
    ]
    ann += [gxe.ExpectColumnValuesToBeBetween(column=f"words_{k}", min_value=lo, max_value=hi)
            for k, (lo, hi) in cfg.caption_words.items()]
    gold = [
        gxe.ExpectColumnValuesToNotBeNull(column="image_id"),
        gxe.ExpectColumnValuesToBeUnique(column="image_round"),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="n_regions", min_value=0, max_value=cfg.max_regions_per_image or MAX_REGIONS_PER_IMAGE),
        gxe.ExpectColumnMeanToBeBetween(column="n_regions", min_value=cfg.min_mean_regions_per_image),
    ]
    # one row per annotation family scored in this round and the latest published one (quality.audit)
    audit = [gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="f1", column_B="floor", or_equal=True)]
    errors = [gxe.ExpectColumnValuesToBeBetween(column="error_rate", min_value=0.0,
                                                max_value=cfg.max_specialist_error_rate)]
    return {"annotations": ann, "gold": gold, "audit": audit, "errors": errors}


def audit_view(spark, rows: list[dict]) -> DataFrame:
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("family", T.StringType()), T.StructField("f1", T.DoubleType()),
                           T.StructField("published_f1", T.DoubleType()), T.StructField("floor", T.DoubleType()),
                           T.StructField("published_round", T.IntegerType()), T.StructField("images", T.IntegerType())])
    return spark.createDataFrame([(r["family"], r["f1"], r["published_f1"], r["floor"], r["published_round"],
                                   r.get("images")) for r in rows], schema)


def errors_view(spark, annotators: list[str], images: int, errors: dict[str, int]) -> DataFrame:
    """One row per specialist of the round: images it was given, how many failed, the rate."""
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("annotator", T.StringType()), T.StructField("images", T.LongType()),
                           T.StructField("errors", T.LongType()), T.StructField("error_rate", T.DoubleType())])
    names = list(dict.fromkeys(list(annotators) + sorted(errors)))  # "decode" errors are not a specialist
    return spark.createDataFrame([(a, int(images), int(errors.get(a, 0)), errors.get(a, 0) / max(images, 1))
                                  for a in names], schema)


@dataclass
class GateResult:
    success: bool
    per_suite: dict
    docs: str | None

    def summary(self) -> str:
        lines = [f"quality gate: {'PASSED' if self.success else 'FAILED'}"]
        for name, r in self.per_suite.items():
            lines.append(f"  {name}: {r['evaluated'] - len(r['failed'])}/{r['evaluated']} expectations met")
            lines += [f"    FAILED {f}" for f in r["failed"]]
            lines += [f"    {d}" for d in r.get("details", [])]
        if self.docs:
            lines.append(f"  data docs: {self.docs}")
        return "\n".join(lines)


def _context(home: Path):
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="file", project_root_dir=str(home))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def run_gate(home: Path, views: dict[str, DataFrame], cfg: GateConfig = GateConfig()) -> GateResult:
    """Validate each view with its suite in one checkpoint and build data docs.  The caller (the round)
    records the result: this package defines suites over DataFrames and writes no tables."""
    import great_expectations as gx

    ctx = _context(Path(home))
    try:
        ds = ctx.data_sources.get("fld_spark")
    except (KeyError, ValueError):
        ds = ctx.data_sources.add_spark("fld_spark")
    defs, batches = [], {}
    for name, expectations in suites(cfg).items():
        if name not in views:
            continue
        try:
            asset = ds.get_asset(name)
        except (LookupError, ValueError):
            asset = ds.add_dataframe_asset(name)
        try:
            bd = asset.get_batch_definition("whole")
        except (KeyError, ValueError):
            bd = asset.add_batch_definition_whole_dataframe("whole")
        suite = gx.ExpectationSuite(name=f"fld_{name}")
        for e in expectations:
            suite.add_expectation(e)
        suite = ctx.suites.add_or_update(suite)
        vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=f"fld_{name}", data=bd, suite=suite))
        defs.append(vd)
        batches[name] = views[name]
    per_suite, docs = {}, None
    # One validation definition per view; each needs its own dataframe, so each runs as a checkpoint of one.
    for vd, (name, df) in zip(defs, batches.items()):
        cp = ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=f"fld_round_{name}", validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")], result_format="SUMMARY"))
        res = cp.run(batch_parameters={"dataframe": df}, run_id=None)
        vr = next(iter(res.run_results.values()))
        failed = [f"{r.expectation_config.type}({_kwargs(r.expectation_config.kwargs)})"
                  for r in vr.results if not r.success]
        details = []
        if name == "audit" and not vr.success:
            # name the family and both numbers, not just the expectation
            details = [f"audit F1 of {r['family']} fell to {r['f1']:.4f} from {r['published_f1']:.4f} in published round "
                       f"{r['published_round']} (allowed down to {r['floor']:.4f}"
                       + (f"; on the {r['images']} audit images both rounds cover)" if r["images"] else ")")
                       for r in df.filter("f1 < floor").collect()]
        if name == "errors" and not vr.success:
            details = [f"specialist {r['annotator']} failed on {r['errors']} of {r['images']} images "
                       f"(rate {r['error_rate']:.3f}, allowed {cfg.max_specialist_error_rate:.3f}; see annotation_errors)"
                       for r in df.filter(F.col("error_rate") > cfg.max_specialist_error_rate).collect()]
        per_suite[name] = {"success": bool(vr.success), "evaluated": len(vr.results), "failed": failed,
                           "details": details, "statistics": dict(vr.statistics)}
    sites = ctx.get_docs_sites_urls()
    if sites:
        docs = sites[0].get("site_url")
    return GateResult(all(r["success"] for r in per_suite.values()), per_suite, docs)


def _kwargs(kw) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items() if k not in ("batch_id",))
