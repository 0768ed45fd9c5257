"""The audit slice: a fixed, hash-chosen set of images whose reference annotations
are trusted, scored every round so that a round can be compared with the last
published one.

- Which images: ``sha256("audit|" + image_id)`` read as a number in [0, 1) below
  ``fraction``.  The rule depends on the image alone, so the slice is the same in
  every round and on every cluster.
- The reference: on the synthetic world, its ground truth; on real sources, the
  human labels the source carried.  Human labels of audit images are withheld
  from every round's merge (``lakehouse.rounds``), so the engine is scored on
  what it produces, not on the labels it copied.
- Families: ``regions`` (box + label), ``boxes``, ``words``, ``grounding`` (as in
  ``quality.annotation_metrics``) and ``captions`` (bag-of-words F1 of the brief
  caption).  A family with no reference items in the slice is not scored.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from florence2.geometry import bounding_box
from quality.annotation_metrics import score as score_annotations

FAMILIES = ("regions", "boxes", "words", "grounding", "captions")
_SALT = "audit|"
_SCALE = 16 ** 8  # the first 8 hex digits of the hash, as a fraction


@dataclass(frozen=True)
class AuditConfig:
    fraction: float = 0.1          # share of images in the audit slice
    max_f1_drop: float = 0.02      # a family may fall at most this far below the latest published round
    min_reference: int = 5         # fewer reference items than this in a family: not compared by the gate


def in_audit(image_id: str, fraction: float) -> bool:
    return int(hashlib.sha256((_SALT + image_id).encode()).hexdigest()[:8], 16) < fraction * _SCALE


def audit_column(fraction: float, image_id: str = "image_id") -> Column:
    """The same rule as ``in_audit``, as a Spark expression."""
    h = F.conv(F.substring(F.sha2(F.concat(F.lit(_SALT), F.col(image_id)), 256), 1, 8), 16, 10).cast("long")
    return h < F.lit(int(fraction * _SCALE))


def reference(spark, labels: DataFrame, audit_ids: set[str], synthetic_truth: Path | None) -> dict[str, dict]:
    """Trusted annotations of the audit images, in the synthetic ground-truth layout.

    The synthetic world's truth wins where it exists; other images use the human
    labels from ``bronze_labels`` (boxes with a label, words, captions).
    """
    ref: dict[str, dict] = {}
    if synthetic_truth is not None and synthetic_truth.exists():
        with open(synthetic_truth) as f:
            for line in f:
                t = json.loads(line)
                if t["image_id"] in audit_ids:
                    ref[t["image_id"]] = t
    rest = sorted(audit_ids - set(ref))
    if rest:
        rows = labels.filter(F.col("image_id").isin(rest)).select("image_id", "kind", "text", "bbox", "quad").collect()
        for r in rows:
            t = ref.setdefault(r["image_id"], {"image_id": r["image_id"], "objects": [], "words": [], "grounding": [],
                                               "captions": {}})
            if r["kind"] == "box" and r["bbox"] and r["text"]:
                t["objects"].append({"bbox": list(r["bbox"]), "category": r["text"].lower()})
            elif r["kind"] == "word" and r["text"] and (r["quad"] or r["bbox"]):
                box = bounding_box(list(r["quad"])) if r["quad"] else list(r["bbox"])
                t["words"].append({"text": r["text"], "bbox": box})
            elif r["kind"] == "caption" and r["text"]:
                t["captions"].setdefault("brief", r["text"])
    return ref


def _bag(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", (text or "").lower())


def caption_f1(pred: str | None, truth: str | None) -> tuple[float, float, int]:
    """(matched words, predicted words, reference words) of two captions as bags of words."""
    p, t = _bag(pred), _bag(truth)
    if not t:
        return 0.0, 0, 0
    left = list(t)
    hit = 0
    for w in p:
        if w in left:
            left.remove(w)
            hit += 1
    return hit, len(p), len(t)


def score(gold_rows: list[dict], ref: dict[str, dict]) -> dict:
    """Per-family precision/recall/F1 of FLD rows against the reference; images without a
    gold row count as predicting nothing."""
    rows = {g["image_id"]: g for g in gold_rows if g["image_id"] in ref}
    empty = {"regions": [], "words": [], "grounding": [], "caption_brief": None}
    out = score_annotations([rows.get(i) or {"image_id": i, **empty} for i in ref], ref)
    hit = npred = ntrue = 0
    for i, t in ref.items():
        h, p, n = caption_f1((rows.get(i) or {}).get("caption_brief"), t.get("captions", {}).get("brief"))
        hit, npred, ntrue = hit + h, npred + p, ntrue + n
    p = hit / npred if npred else 0.0
    r = hit / ntrue if ntrue else 0.0
    out["captions"] = {"precision": round(p, 4), "recall": round(r, 4),
                       "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0, "tp": hit, "predicted": npred,
                       "true": ntrue}
    out = {k: v for k, v in out.items() if v["true"] > 0}
    out["images"] = len(ref)
    return out


def regressions(current: dict, previous: dict | None, cfg: AuditConfig) -> list[dict]:
    """One row per family scored in both rounds: its F1 now, the published F1 and the floor."""
    if not previous:
        return []
    out = []
    for fam in FAMILIES:
        cur, prev = current.get(fam), previous.get(fam)
        if not cur or not prev or min(cur["true"], prev["true"]) < cfg.min_reference:
            continue
        out.append({"family": fam, "f1": float(cur["f1"]), "published_f1": float(prev["f1"]),
                    "floor": round(float(prev["f1"]) - cfg.max_f1_drop, 6)})
    return out
