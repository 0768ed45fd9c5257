"""Acceptance of model annotations: a model's output enters a round only where it is
trustworthy.

Per kind (region, word, caption level), the model's confidence threshold is
calibrated on the audit slice (``quality.audit``) to reach a target precision.
A model annotation is accepted when its confidence reaches that threshold, or
when another (non-model) annotator agrees with it on the same image (regions:
same label and IoU >= 0.5; words: same text and IoU >= 0.5).

Where a model region and a specialist region cover the same object (IoU >= 0.5)
with different labels, one label wins and the other is dropped.  The slice's
boxes where exactly these two annotators disagreed about that label decide
(``dispute_tally``): the model's label wins from the confidence on which it was
right more often than the specialist there (``overrule_threshold``), so a
relabeller that is wrong about most of the contour specialist's crosses still
takes the ones it is sure of, if it was right about those.  Where the slice has fewer
than ``min_support`` such boxes with a right answer, claims decide: a claim is an annotator saying a
label, and the one right more often on the slice wins (each label's precision is
shrunk towards the annotator's overall one, ``label_prior`` audited regions'
worth, so a rare label does not swing it).  A relabelling model
(``Florence2Labels``) names regions the published round already has, so only its
label is judged, and only where it is sure enough (``relabel_min_confidence``);
a human label is never replaced.  Every drop has a reason, counted in
``filter_log`` under the step ``acceptance``.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from florence2.geometry import iou
from florence2.vocabulary import singular

CAPTION_LEVELS = {"caption_brief": "brief", "caption_detailed": "detailed", "caption_more_detailed": "more_detailed"}


@dataclass(frozen=True)
class AcceptanceConfig:
    target_precision: float = 0.9   # per kind, on the audit slice
    min_support: int = 5            # fewer audited model annotations (or decided disputes) at a threshold: it
                                    # does not count
    caption_precision: float = 0.8  # a caption is right when this share of its words is in the reference's
    relabel_min_confidence: float = 0.5  # a model's label replaces a specialist's only this sure
    label_prior: float = 10.0       # a label's precision counts this many audited regions at the annotator's
                                    # overall precision (shrinkage: few audited claims stay near the overall)


def _words(s) -> list[str]:
    return re.findall(r"[a-z0-9]+", (s or "").lower())


def label_key(s) -> str:
    """A label as compared: lower case, singular (the vocabulary's own rule, so "crosses" is a "cross")."""
    return singular((s or "").strip())


def correct(ann: dict, ref: dict, cfg: AcceptanceConfig) -> bool:
    """Whether one annotation agrees with the reference of its image."""
    kind = ann["kind"]
    if kind == "region":
        return any(label_key(o["category"]) == label_key(ann["text"]) and iou(ann["bbox"], o["bbox"]) >= 0.5
                   for o in ref.get("objects", []))
    if kind == "word":
        return any((w["text"] or "").lower() == (ann["text"] or "").lower() and iou(ann["bbox"], w["bbox"]) >= 0.5
                   for w in ref.get("words", []))
    if kind in CAPTION_LEVELS:
        truth = ref.get("captions", {}).get(CAPTION_LEVELS[kind])
        p, t = _words(ann["text"]), set(_words(truth))
        return bool(p and t) and sum(w in t for w in p) / len(p) >= cfg.caption_precision
    return False


def calibrate(audited: list[tuple[float, bool]], cfg: AcceptanceConfig) -> float | None:
    """The lowest confidence whose accepted set reaches the target precision; None: no threshold does."""
    best, hits = None, 0
    for n, (conf, ok) in enumerate(sorted(audited, key=lambda x: -x[0]), 1):
        hits += ok
        if n >= cfg.min_support and hits / n >= cfg.target_precision:
            best = conf
    return best


def label_tally(anns: list[dict], refs: dict[str, dict]) -> dict[tuple[str, str], list[int]]:
    """Per (annotator, label claimed): of its regions that cover a reference object, [right, all]."""
    tally: dict[tuple[str, str], list[int]] = {}
    for a in anns:
        if a["kind"] != "region" or a["image_id"] not in refs or a["bbox"] is None:
            continue
        objs = [o for o in refs[a["image_id"]].get("objects", []) if iou(a["bbox"], o["bbox"]) >= 0.5]
        if objs:
            t = tally.setdefault((a["annotator"], label_key(a["text"])), [0, 0])
            t[0] += any(label_key(o["category"]) == label_key(a["text"]) for o in objs)
            t[1] += 1
    return tally


def dispute_tally(anns: list[dict], refs: dict[str, dict], models: set[str]) -> dict[tuple, list[tuple]]:
    """Per (model, specialist, the specialist's label): on the audit slice, where the model's region and the
    specialist's cover the same reference object with different labels, one (model confidence, model right,
    specialist right) per such box, surest first.  What a disagreement is decided on: a model's "diamond" that is
    right 40% of the time overall is still wrong where it renames the contour specialist's crosses if, on
    exactly those boxes, the crosses were right more often; and where it is sure, it may be right more often."""
    per_image: dict[str, list[dict]] = {}
    for a in anns:
        if a["kind"] == "region" and a["image_id"] in refs and a["bbox"] is not None:
            per_image.setdefault(a["image_id"], []).append(a)
    tally: dict[tuple, list[tuple]] = {}
    for image_id, regs in per_image.items():
        objs = refs[image_id].get("objects", [])
        for m in (r for r in regs if r["annotator"] in models):
            for o in regs:
                if (o["annotator"] in models or o["annotator"].startswith("human:") or iou(m["bbox"], o["bbox"]) < 0.5
                        or label_key(o["text"]) == label_key(m["text"])):
                    continue
                under = [g for g in objs if iou(m["bbox"], g["bbox"]) >= 0.5 and iou(o["bbox"], g["bbox"]) >= 0.5]
                if under:
                    tally.setdefault((m["annotator"], o["annotator"], label_key(o["text"])), []).append(
                        (float(m["confidence"] or 0.0),
                         int(any(label_key(g["category"]) == label_key(m["text"]) for g in under)),
                         int(any(label_key(g["category"]) == label_key(o["text"]) for g in under))))
    return {k: sorted(v, reverse=True) for k, v in tally.items()}


def overrule_threshold(cases: list[tuple], min_support: int = 1) -> tuple[float | None, int]:
    """(the confidence from which the model's label wins, its net gain on the slice): the threshold whose
    disputes at or above it have the most model-right minus specialist-right boxes, the surer one on a tie;
    (None, 0) where no threshold gains.  A threshold counts only with ``min_support`` disputes at or above it
    that either side got right: the best of many thresholds over a few boxes is noise.  ``cases``:
    ``dispute_tally``'s, surest first."""
    best, best_net, net, decided = None, 0, 0, 0
    for k, (conf, mine, theirs) in enumerate(cases):
        net += mine - theirs
        decided += bool(mine or theirs)
        if (net > best_net and decided >= min_support
                and (k + 1 == len(cases) or cases[k + 1][0] < conf)):  # a threshold takes all ties
            best, best_net = conf, net
    return best, best_net


def label_precision(tally: dict[tuple[str, str], list[int]]) -> dict[str, float]:
    """Per annotator: the share of right labels over all its claims."""
    per: dict[str, list[int]] = {}
    for (annotator, _), (hit, n) in tally.items():
        t = per.setdefault(annotator, [0, 0])
        t[0] += hit
        t[1] += n
    return {k: hit / n for k, (hit, n) in per.items() if n}


@dataclass
class Calibration:
    thresholds: dict            # (annotator, kind) -> threshold or None
    label_precision: dict       # annotator -> share of right labels on covered objects
    audited: dict               # (annotator, kind) -> number of audited annotations
    by_label: dict = dataclasses.field(default_factory=dict)  # (annotator, label) -> [right, all] on the slice
    label_prior: float = 10.0
    disputes: dict = dataclasses.field(default_factory=dict)  # dispute_tally of the slice
    min_support: int = 1        # decided disputes a threshold needs (overrule_threshold)

    def kept_by(self, model: str, label, confidence: float | None, specialist: str, their_label) -> str | None:
        """Why ``specialist``'s ``their_label`` stays where ``model`` says ``label`` on the same box (None: the
        model's label wins).  Where the slice has ``min_support`` disputes between exactly these two on that
        label with a right answer, they decide: the model wins from their ``overrule_threshold`` on; with fewer,
        the claims do."""
        cases = self.disputes.get((model, specialist, label_key(their_label)), [])
        if sum(bool(mine or theirs) for _, mine, theirs in cases) >= self.min_support:
            t, _ = overrule_threshold(cases, self.min_support)
            return None if t is not None and (confidence or 0.0) >= t else "label_kept_by_disputes"
        return None if self.claim(model, label) > self.claim(specialist, their_label) else "label_kept_by_specialist"

    def dispute_summary(self) -> str:
        parts = []
        for (m, sp, lab), cases in sorted(self.disputes.items()):
            t, net = overrule_threshold(cases, self.min_support)
            parts.append(f"{m} vs {sp} {lab} {sum(c[1] for c in cases)}/{sum(c[2] for c in cases)}/{len(cases)}"
                         + (f" (overrules from confidence {t:.3f}: +{net})" if t is not None else ""))
        return " ".join(parts) or "none on the slice"

    def claim(self, annotator: str, label) -> float:
        """How often ``annotator`` is right when it names a region ``label``, shrunk towards its overall rate."""
        overall = self.label_precision.get(annotator, 0.0)
        hit, n = self.by_label.get((annotator, label_key(label)), (0, 0))
        return (hit + self.label_prior * overall) / (n + self.label_prior)

    def summary(self) -> str:
        parts = [f"{a}/{k} >= {t:.3f}" if t is not None else f"{a}/{k}: none reaches the target"
                 for (a, k), t in sorted(self.thresholds.items())]
        return "; ".join(parts) or "no model annotations on the audit slice"


def calibrate_models(audit_anns: list[dict], refs: dict[str, dict], models: set[str],
                     cfg: AcceptanceConfig) -> Calibration:
    groups: dict[tuple, list] = {}
    for a in audit_anns:
        if a["annotator"] in models and a["image_id"] in refs:
            groups.setdefault((a["annotator"], a["kind"]), []).append((a["confidence"] or 0.0, correct(a, refs[a["image_id"]], cfg)))
    tally = label_tally(audit_anns, refs)
    return Calibration({k: calibrate(v, cfg) for k, v in groups.items()}, label_precision(tally),
                       {k: len(v) for k, v in groups.items()}, tally, cfg.label_prior,
                       dispute_tally(audit_anns, refs, models), cfg.min_support)


def _relabel(r, others, models: frozenset, cal: Calibration, cfg: AcceptanceConfig, reasons) -> str | None:
    """Why a relabelling model's region is dropped (None: kept), marking the specialist regions it overrules."""
    covering = [(j, o) for j, o in others if o["kind"] == "region" and iou(r["bbox"], o["bbox"]) >= 0.5]
    if any(label_key(o["text"]) == label_key(r["text"]) for _, o in covering):
        return "relabel_agrees"  # the region keeps its own row (and provenance)
    if any(o["annotator"].startswith("human:") for _, o in covering):
        return "label_kept_by_human"
    if not covering:
        # the specialist row this box came from was overruled in an earlier round: this model's label
        # replaces that round's only while the model is at least as precise as every specialist on the slice
        # (dropped, the box keeps the earlier label: rounds._keep_earlier_labels)
        rivals = [p for a, p in cal.label_precision.items() if a not in models and not a.startswith("human:")]
        if rivals and cal.claim(r["annotator"], r["text"]) < max(rivals):
            return "relabel_less_precise"
    for _, o in covering:
        if kept := cal.kept_by(r["annotator"], r["text"], r["confidence"], o["annotator"], o["text"]):
            return kept
    if (r["confidence"] or 0.0) < cfg.relabel_min_confidence:
        return "relabel_unsure"
    for j, _ in covering:
        reasons[j] = "label_overruled_by_model"
    return None


def _decide(models: frozenset, relabelers: frozenset, cal: Calibration, cfg: AcceptanceConfig, pdf):
    rows = pdf.to_dict("records")
    reasons, boxes = [None] * len(rows), list(pdf["bbox"])
    others = [(i, r) for i, r in enumerate(rows) if r["annotator"] not in models and r["bbox"] is not None]
    for i, r in enumerate(rows):  # first, so that an overruled specialist region is not also a rival below
        if r["annotator"] in relabelers and r["kind"] == "region" and r["bbox"] is not None:
            reasons[i] = _relabel(r, others, models, cal, cfg, reasons)
    others = [(i, r) for i, r in others if reasons[i] is None]

    def agrees(r):
        same = (lambda o: label_key(o["text"]) == label_key(r["text"])) if r["kind"] == "region" else \
            (lambda o: (o["text"] or "").lower() == (r["text"] or "").lower())
        return any(o["kind"] == r["kind"] and same(o) and iou(r["bbox"], o["bbox"]) >= 0.5 for _, o in others)

    for i, r in enumerate(rows):
        if r["annotator"] not in models or r["annotator"] in relabelers:
            continue
        thr = cal.thresholds.get((r["annotator"], r["kind"]))
        trusted = thr is not None and (r["confidence"] or 0.0) >= thr
        if r["kind"] in ("region", "word") and r["bbox"] is not None:
            if r["kind"] == "region":
                rivals = [(j, o) for j, o in others if o["kind"] == "region" and not o["annotator"].startswith("human:")
                          and label_key(o["text"]) != label_key(r["text"]) and iou(r["bbox"], o["bbox"]) >= 0.5]
                if rivals and not any(cal.kept_by(r["annotator"], r["text"], r["confidence"], o["annotator"], o["text"])
                                      for _, o in rivals):
                    for j, _ in rivals:
                        reasons[j] = "label_overruled_by_model"
                    # a label dispute says nothing about whose box is better: the specialist's stays, as relabelling
                    # keeps it (the dispute tally only scores boxes where both match the same object)
                    boxes[i] = max(rivals, key=lambda jo: iou(r["bbox"], jo[1]["bbox"]))[1]["bbox"]
                    continue
            if trusted or agrees(r):
                continue
            reasons[i] = "model_below_calibrated_confidence" if thr is not None else "model_uncalibrated_no_agreement"
        elif not trusted:
            reasons[i] = "model_below_calibrated_confidence" if thr is not None else "model_uncalibrated"
    return pdf.assign(bbox=boxes, drop_reason=reasons)


def apply_acceptance(df: DataFrame, models: set[str], cal: Calibration, cfg: AcceptanceConfig = AcceptanceConfig(),
                     relabelers: set[str] = frozenset()) -> DataFrame:
    """``df`` with a ``drop_reason`` column (null: accepted) for every annotation of the round; ``relabelers``:
    the models among ``models`` whose regions are the published round's, renamed."""
    schema = T.StructType(df.schema.fields + [T.StructField("drop_reason", T.StringType())])
    fn = functools.partial(_decide, frozenset(models), frozenset(relabelers), cal, cfg)
    return df.groupBy("image_id").applyInPandas(fn, schema)
