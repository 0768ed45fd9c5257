"""Annotation quality against ground truth (the synthetic world knows it): precision,
recall and F1 per annotation kind.  A prediction matches at most one truth item.

- ``regions``: box IoU >= 0.5 and the same label;  ``boxes``: IoU >= 0.5, any label;
- ``words``: same text (case-insensitive) and box IoU >= 0.5;
- ``grounding``: a grounded phrase box matching (IoU >= 0.5) a box of a truth phrase with the same head word.
"""
from __future__ import annotations

from florence2.evaluation import match_one_to_one
from florence2.geometry import bounding_box
from florence2.vocabulary import head_noun


def score(gold_rows: list[dict], truth: dict[str, dict]) -> dict:
    """``gold_rows``: FLD rows (dicts); ``truth``: image_id -> synthetic ground truth."""
    acc = {k: [0, 0, 0] for k in ("regions", "boxes", "words", "grounding")}   # tp, predicted, true
    for g in gold_rows:
        t = truth.get(g["image_id"])
        if t is None:
            continue
        objs = [(o["bbox"], o["category"]) for o in t["objects"]]
        regs = [(r["bbox"], (r["label"] or "").lower()) for r in g["regions"] or []]
        for k, ok in (("regions", lambda p, q: p[1] == q[1]), ("boxes", lambda p, q: True)):
            acc[k][0] += match_one_to_one(regs, objs, ok)
            acc[k][1] += len(regs)
            acc[k][2] += len(objs)
        words = [(bounding_box(w["quad"]), w["text"].lower()) for w in g["words"] or []]
        twords = [(w["bbox"], w["text"].lower()) for w in t["words"]]
        acc["words"][0] += match_one_to_one(words, twords, lambda p, q: p[1] == q[1])
        acc["words"][1] += len(words)
        acc["words"][2] += len(twords)
        gp = [(b, head_noun(x["phrase"])) for x in g["grounding"] or [] for b in x["boxes"]]
        tp_ = [(t["objects"][i]["bbox"], head_noun(x["phrase"])) for x in t["grounding"] if x["level"] == "brief"
               for i in x["object_ids"]]
        acc["grounding"][0] += match_one_to_one(gp, tp_, lambda p, q: p[1] == q[1])
        acc["grounding"][1] += len(gp)
        acc["grounding"][2] += len(tp_)
    out = {}
    for k, (tp, npred, ntrue) in acc.items():
        p = tp / npred if npred else 0.0
        r = tp / ntrue if ntrue else 0.0
        out[k] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
                  "tp": tp, "predicted": npred, "true": ntrue}
    return out

