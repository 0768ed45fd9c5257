"""From silver annotations to FLD: human labels as annotations, and the per-image
merge into the three families (text, region-text, text-phrase-region)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from florence2.geometry import iou
from florence2.vocabulary import CAPTION_LEVELS, singular
from quality.gate import word_count
from lakehouse.tables import TABLES, TableRoot, delta_table, read

HUMAN_CONFIDENCE = 1.0


def human_annotations(spark, root: TableRoot, round_: int) -> DataFrame:
    """The labels the sources carried, as silver annotations at confidence 1."""
    labels = read(spark, root, "bronze_labels")
    n_words = word_count(F.col("text"))
    kind = (F.when(F.col("kind") == "box", "region").when(F.col("kind") == "class", "class")
            .when(F.col("kind") == "word", "word"))
    for level in CAPTION_LEVELS:  # a human caption's level is the first whose length fits
        kind = kind.when(n_words <= level.human_up_to, level.kind)
    annotator = F.concat(F.lit("human:"), F.col("source_kind"))
    out = labels.filter(F.col("kind").isin("box", "class", "caption", "word")).select(
        F.sha2(F.concat_ws("|", "label_id", F.lit("human")), 256).alias("annotation_id"), "image_id",
        F.lit(round_).alias("round"), kind.alias("kind"), annotator.alias("annotator"),
        F.col("source_name").alias("annotator_version"), F.lit(HUMAN_CONFIDENCE).alias("confidence"), "text",
        F.when(F.col("kind") == "box", F.col("text")).alias("description"), "bbox", "polygons", "quad",
        F.col("ingest_time").alias("created_at"))
    return out.select(*TABLES["silver_annotations"].schema.fieldNames())


def ground_phrases(caption: str, regions: list[dict]) -> list[dict]:
    """spaCy noun phrases of a caption, each grounded to the regions whose label is its head
    noun (and whose description holds its colour/size words, when it names any)."""
    from florence2.parsing import BANNED_GROUNDING_TOKENS
    from lakehouse.filters import nlp

    banned = set(BANNED_GROUNDING_TOKENS)
    out = []
    for chunk in nlp()(caption).noun_chunks:
        phrase = chunk.text.strip()
        if not phrase or phrase in banned or phrase.lower() in banned:
            continue
        head = chunk.root.lemma_.lower()
        mods = {t.lower_ for t in chunk if t.pos_ == "ADJ"}
        boxes = [r["bbox"] for r in regions
                 if r.get("label") and singular(r["label"]) in (head, singular(chunk.root.text))
                 and mods <= set((r.get("description") or "").lower().split())]
        if boxes:
            out.append({"phrase": phrase, "start": chunk.start_char, "boxes": boxes})
    return out


def _best(rows, kind):
    cands = [r for r in rows if r["kind"] == kind and r["text"]]
    if not cands:
        return None
    # human first, then confidence, then annotator name for a stable choice
    return max(cands, key=lambda r: (r["annotator"].startswith("human:"), r["confidence"] or 0.0, r["annotator"]))["text"]


def _merge_image(round_: int, pdf):
    import pandas as pd

    rows = pdf.to_dict("records")
    iid = rows[0]["image_id"]
    regions = sorted(({"bbox": list(r["bbox"]), "label": r["text"], "description": r["description"] or r["text"],
                       "polygons": None if r["polygons"] is None else [list(p) for p in r["polygons"]],
                       "confidence": r["confidence"], "annotator": r["annotator"]}
                      for r in rows if r["kind"] == "region" and r["bbox"] is not None),
                     key=lambda g: (g["bbox"][1], g["bbox"][0], g["label"]))
    # Human boxes win: a machine region overlapping a human one (IoU >= 0.5) is the same object, maybe mislabelled.
    human = [g["bbox"] for g in regions if g["annotator"].startswith("human:")]
    regions = [g for g in regions if g["annotator"].startswith("human:") or all(iou(g["bbox"], h) < 0.5 for h in human)]
    words = sorted(({"text": r["text"], "quad": list(r["quad"]), "confidence": r["confidence"], "annotator": r["annotator"]}
                    for r in rows if r["kind"] == "word" and r["quad"] is not None),
                   key=lambda g: (g["quad"][1], g["quad"][0]))
    caps = {k: _best(rows, k) for k in ("caption_brief", "caption_detailed", "caption_more_detailed")}
    grounding = ground_phrases(caps["caption_brief"], regions) if caps["caption_brief"] else []
    classes = sorted({r["text"] for r in rows if r["kind"] == "class" and r["text"]})
    body = {"caps": caps, "regions": regions, "words": words, "grounding": grounding, "classes": classes}
    h = hashlib.sha256(json.dumps(body, sort_keys=True, default=float).encode()).hexdigest()
    return pd.DataFrame([{"image_id": iid, "round": round_, **caps, "regions": regions, "words": words,
                          "grounding": grounding, "classes": classes, "n_regions": len(regions), "content_hash": h,
                          "published_at": None}])


def build_gold(annotations: DataFrame, round_: int) -> DataFrame:
    """Candidate FLD rows for a round: one per image, the three families merged."""
    import functools

    return annotations.groupBy("image_id").applyInPandas(functools.partial(_merge_image, round_),
                                                         TABLES["gold_fld"].schema)


def publish_gold(spark, root: TableRoot, candidate: DataFrame, round_: int) -> bool:
    """MERGE into gold; rows whose content did not change are left alone, so a rerun changes nothing.
    Both the comparison and the MERGE name the round as a literal: Delta reads only that round's
    partition, so publishing round N costs the same whatever earlier rounds hold (issue 10)."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    round_ = int(round_)
    same = read(spark, root, "gold_fld").filter(F.col("round") == round_).select("image_id", "round", "content_hash")
    changed = candidate.join(same, ["image_id", "round", "content_hash"], "left_anti")
    if changed.limit(1).count() == 0:
        return False  # nothing new: no commit at all
    src = changed.withColumn("published_at", F.lit(now))
    target = delta_table(spark, root, "gold_fld")
    spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", json.dumps({"fld_round": round_, "stage": "publish"}))
    try:
        (target.alias("t").merge(src.alias("s"), f"t.round = {round_} AND t.image_id = s.image_id AND t.round = s.round")
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    finally:
        spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")
    return True
