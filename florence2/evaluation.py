"""Evaluation protocols, using the reference tools where they exist.

- captions: CIDEr (pycocoevalcap, with its PTB tokenizer, which needs Java);
- detection: COCO mAP@[.5:.95] and AP50 (pycocotools).  Florence-2 emits no scores;
  ours come from the predictor (geometric mean of a box's location-token probabilities);
- phrase grounding: Recall@1 at IoU >= 0.5 (the first box predicted for a phrase);
- referring expressions: accuracy at IoU >= 0.5 of the first box that ``<OPEN_VOCABULARY_DETECTION>``
  ("Locate {input} in the image.") answers for a referring expression (examples marked ``refers``: one
  object; RefCOCO's protocol in the task language, an expression in, a box out);
- referring segmentation: mean IoU of polygon masks (shapely);
- OCR: word precision / recall / F1 (same text and IoU >= 0.5) and character error rate.

``evaluate_examples`` runs a predictor over examples of any tasks and scores each family next to
its trivial baseline (the most frequent caption; a whole-image box / polygon; no OCR).
"""
from __future__ import annotations

import collections

from florence2.geometry import bounding_box, iou


def cider(candidates: dict, references: dict) -> float:
    """CIDEr-D as pycocoevalcap computes it; ``candidates`` id -> str, ``references`` id -> [str]."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tok.tokenize({k: [{"caption": candidates[k]}] for k in references})
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def coco_map(gt: list[dict], pred: list[dict]) -> dict:
    """``gt``: {image_id, bbox [x0,y0,x1,y1], label}; ``pred``: the same plus ``score``.  Returns mAP and AP50."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = sorted({g["label"] for g in gt} | {p["label"] for p in pred})
    cat = {lab: i + 1 for i, lab in enumerate(labels)}
    imgs = sorted({g["image_id"] for g in gt} | {p["image_id"] for p in pred})
    img = {iid: i + 1 for i, iid in enumerate(imgs)}

    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    ds = {"images": [{"id": img[i]} for i in imgs], "categories": [{"id": c} for c in cat.values()],
          "annotations": [{"id": k + 1, "image_id": img[g["image_id"]], "category_id": cat[g["label"]],
                           "bbox": xywh(g["bbox"]), "area": (g["bbox"][2] - g["bbox"][0]) * (g["bbox"][3] - g["bbox"][1]),
                           "iscrowd": 0} for k, g in enumerate(gt)]}
    if not pred:
        return {"mAP": 0.0, "AP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = ds
        cg.createIndex()
        cd = cg.loadRes([{"image_id": img[p["image_id"]], "category_id": cat[p["label"]], "bbox": xywh(p["bbox"]),
                          "score": float(p["score"])} for p in pred])
        ev = COCOeval(cg, cd, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": max(0.0, float(ev.stats[0])), "AP50": max(0.0, float(ev.stats[1]))}


def grounding_recall_at_1(items: list[tuple[list, list]]) -> float:
    """``items``: (predicted boxes for a phrase, best first; ground-truth boxes of that phrase)."""
    hits = sum(1 for pred, gt in items if pred and any(iou(pred[0], g) >= 0.5 for g in gt))
    return hits / len(items) if items else 0.0


def rec_accuracy(items: list[tuple[list | None, list]]) -> float:
    """``items``: (predicted box or None, ground-truth box)."""
    hits = sum(1 for pred, gt in items if pred is not None and iou(pred, gt) >= 0.5)
    return hits / len(items) if items else 0.0


def _shape(polygons):
    from shapely.geometry import Polygon
    from shapely.ops import unary_union

    parts = [Polygon(list(zip(p[0::2], p[1::2]))).buffer(0) for p in polygons if len(p) >= 6]
    return unary_union(parts) if parts else None


def mask_iou(pred_polygons, gt_polygons) -> float:
    a, b = _shape(pred_polygons), _shape(gt_polygons)
    if a is None or b is None:
        return 0.0
    union = a.union(b).area
    return a.intersection(b).area / union if union else 0.0


def res_miou(items: list[tuple[list, list]]) -> float:
    """Mean IoU over expressions; ``items``: (predicted polygons, ground-truth polygons)."""
    return sum(mask_iou(p, g) for p, g in items) / len(items) if items else 0.0


def match_one_to_one(preds, truths, ok) -> int:
    used, tp = set(), 0
    for p in preds:
        best = max(((i, iou(p[0], t[0])) for i, t in enumerate(truths) if i not in used and ok(p, t)),
                   key=lambda x: x[1], default=(None, 0.0))
        if best[0] is not None and best[1] >= 0.5:
            used.add(best[0])
            tp += 1
    return tp


def word_f1(pred: list[dict], truth: list[dict]) -> dict:
    """Word-level precision/recall/F1: same text (case-insensitive) and box IoU >= 0.5.
    Items have ``text`` and ``bbox`` (truth may use ``box``)."""
    p = [(w["bbox"], w["text"].lower()) for w in pred]
    t = [(w.get("bbox") or w["box"], w["text"].lower()) for w in truth]
    tp = match_one_to_one(p, t, lambda a, b: a[1] == b[1])
    prec, rec = (tp / len(p) if p else 0.0), (tp / len(t) if t else 0.0)
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "tp": tp, "predicted": len(p), "true": len(t)}


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(pred: str, truth: str) -> float:
    """Character error rate: edits to turn ``pred`` into ``truth`` over ``len(truth)``."""
    return edit_distance(pred, truth) / max(1, len(truth))


def image_ablation(model, processor, images, prompts: list[str], targets: list[str], loc_sigma: float = 0.0) -> dict:
    """Teacher-forced loss with each example's own image and with the images shuffled
    across the batch (rolled by one).  A model that uses the image has ``gap`` > 0; a
    model whose visual features collapsed has exactly 0."""
    import torch

    from florence2.modeling import loc_token_range
    from florence2.recipe import example_loss

    pixels = torch.from_numpy(processor.preprocess(images))
    batch = processor.batch([], prompts, targets)
    loc = loc_token_range(processor.tokenizer)
    model.eval()
    out = []
    with torch.no_grad():
        for pix in (pixels, pixels[torch.roll(torch.arange(len(prompts)), 1)]):
            logits = model(**(batch | {"pixel_values": pix.to(next(model.parameters()).dtype)})).logits
            out.append(float(example_loss(logits, batch["labels"], loc, loc_sigma)))
    return {"loss_true_images": out[0], "loss_shuffled_images": out[1], "gap": out[1] - out[0]}


def _box_of(poly_sets):
    return bounding_box([v for polys in poly_sets for p in polys for v in p])


def evaluate_examples(predictor, examples: list[dict], baseline: bool = True) -> dict:
    """``examples``: dicts with image (bytes), width, height, task, text_input, region, target (and refers:
    the input is a referring expression)."""
    from florence2.parsing import post_process_generation
    from florence2.predictor import Request
    from florence2.vocabulary import CAPTION_TASKS

    by_task = collections.defaultdict(list)
    for e in examples:
        by_task[e["task"]].append(e)
    metrics, base = {}, {}
    preds = {}
    for task, exs in by_task.items():
        out = predictor.predict([Request(e["image"], task, e.get("text_input"),
                                         None if e.get("region") is None else tuple(e["region"])) for e in exs])
        preds[task] = list(zip(exs, out))
    caps = [(e, o) for t in CAPTION_TASKS.values() for e, o in preds.get(t, [])]
    if caps:
        refs = {str(i): [e["target"]] for i, (e, _) in enumerate(caps)}
        metrics["cider"] = cider({str(i): o["answer"] or "" for i, (_, o) in enumerate(caps)}, refs)
        common = collections.Counter(e["target"] for e, _ in caps).most_common(1)[0][0]
        base["cider"] = cider({k: common for k in refs}, refs)
    if "<OD>" in preds:
        gt, pr, whole = [], [], []
        labels = collections.Counter()
        for i, (e, o) in enumerate(preds["<OD>"]):
            g = post_process_generation(e["target"], "<OD>", (e["width"], e["height"]), as_int=False)["<OD>"]
            gt += [{"image_id": i, "bbox": b, "label": lab} for b, lab in zip(g["bboxes"], g["labels"])]
            labels.update(g["labels"])
            a = o["answer"]
            pr += [{"image_id": i, "bbox": b, "label": lab, "score": s}
                   for b, lab, s in zip(a["bboxes"], a["labels"], a["scores"]) if b[2] > b[0] and b[3] > b[1]]
        top = labels.most_common(1)[0][0] if labels else ""
        whole = [{"image_id": i, "bbox": [0, 0, e["width"], e["height"]], "label": top, "score": 1.0}
                 for i, (e, _) in enumerate(preds["<OD>"])]
        metrics.update({f"od_{k}": v for k, v in coco_map(gt, pr).items()})
        base.update({f"od_{k}": v for k, v in coco_map(gt, whole).items()})
    if "<CAPTION_TO_PHRASE_GROUNDING>" in preds:
        items, bitems = [], []
        for e, o in preds["<CAPTION_TO_PHRASE_GROUNDING>"]:
            g = post_process_generation(e["target"], "<CAPTION_TO_PHRASE_GROUNDING>", (e["width"], e["height"]), as_int=False)
            g = g["<CAPTION_TO_PHRASE_GROUNDING>"]
            for phrase in dict.fromkeys(g["labels"]):
                gt_boxes = [b for b, lab in zip(g["bboxes"], g["labels"]) if lab == phrase]
                mine = [b for b, lab in zip(o["answer"]["bboxes"], o["answer"]["labels"]) if lab == phrase]
                items.append((mine, gt_boxes))
                bitems.append(([[0, 0, e["width"], e["height"]]], gt_boxes))
        metrics["grounding_r1"] = grounding_recall_at_1(items)
        base["grounding_r1"] = grounding_recall_at_1(bitems)
    if "<REFERRING_EXPRESSION_SEGMENTATION>" in preds:
        seg, bseg = [], []
        for e, o in preds["<REFERRING_EXPRESSION_SEGMENTATION>"]:
            g = post_process_generation(e["target"], "<REFERRING_EXPRESSION_SEGMENTATION>", (e["width"], e["height"]),
                                        as_int=False)["<REFERRING_EXPRESSION_SEGMENTATION>"]["polygons"]
            p = o["answer"]["polygons"]
            whole = [[0, 0, e["width"], 0, e["width"], e["height"], 0, e["height"]]]
            seg.append((p[0] if p else [], g[0] if g else []))
            bseg.append((whole, g[0] if g else []))
        metrics["res_miou"], base["res_miou"] = res_miou(seg), res_miou(bseg)
    ovd = "<OPEN_VOCABULARY_DETECTION>"
    referred = [(e, o, post_process_generation(e["target"], ovd, (e["width"], e["height"]), as_int=False)[ovd]
                 ["bboxes"][0]) for e, o in preds.get(ovd, []) if e.get("refers")]
    if referred:
        metrics["rec_accuracy"] = rec_accuracy([((o["answer"]["bboxes"] or [None])[0], g) for _, o, g in referred])
        base["rec_accuracy"] = rec_accuracy([([0, 0, e["width"], e["height"]], g) for e, _, g in referred])
    if "<OCR_WITH_REGION>" in preds:
        agg, bagg = [0, 0, 0], [0, 0, 0]
        for e, o in preds["<OCR_WITH_REGION>"]:
            g = post_process_generation(e["target"], "<OCR_WITH_REGION>", (e["width"], e["height"]), as_int=False)
            g = g["<OCR_WITH_REGION>"]
            truth = [{"text": t, "bbox": _box_of([[q]])} for q, t in zip(g["quad_boxes"], g["labels"])]
            pred = [{"text": t, "bbox": _box_of([[q]])} for q, t in zip(o["answer"]["quad_boxes"], o["answer"]["labels"])]
            r = word_f1(pred, truth)
            agg = [agg[0] + r["tp"], agg[1] + r["predicted"], agg[2] + r["true"]]
            bagg[2] += r["true"]
        p, r = agg[0] / max(agg[1], 1), agg[0] / max(agg[2], 1)
        metrics["ocr_word_f1"] = 2 * p * r / (p + r) if p + r else 0.0
        base["ocr_word_f1"] = 0.0
    if "<REGION_TO_CATEGORY>" in preds:  # what the model specialist's relabelling rests on
        pairs = [((o["answer"] or "").strip().lower(), e["target"].strip().lower()) for e, o in preds["<REGION_TO_CATEGORY>"]]
        common = collections.Counter(t for _, t in pairs).most_common(1)[0][0]
        metrics["region_category_accuracy"] = sum(p == t for p, t in pairs) / len(pairs)
        base["region_category_accuracy"] = sum(common == t for _, t in pairs) / len(pairs)
    if "<OCR>" in preds:
        metrics["ocr_cer"] = sum(cer(o["answer"] or "", e["target"]) for e, o in preds["<OCR>"]) / len(preds["<OCR>"])
        base["ocr_cer"] = 1.0
    return {"model": metrics, "baseline": base, "examples": {t: len(v) for t, v in by_task.items()}}


def score(m: dict) -> float:
    """One number to rank models by: the mean of mAP, grounding R@1, REC accuracy, RES mIoU, OCR word F1,
    1 - CER and CIDEr/(1 + CIDEr), over what was measured."""
    parts = [m[k] for k in ("od_mAP", "grounding_r1", "rec_accuracy", "res_miou", "ocr_word_f1") if k in m]
    if "ocr_cer" in m:
        parts.append(max(0.0, 1 - m["ocr_cer"]))
    if "cider" in m:
        parts.append(m["cider"] / (1 + m["cider"]))
    return sum(parts) / len(parts) if parts else 0.0
