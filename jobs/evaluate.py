"""Evaluate a Florence-2 model with the paper's protocols, next to trivial baselines; log to MLflow.

Data: the validation split of ``training_examples`` (a pinned version), and/or any
COCO-format folder (``images/`` + ``annotations/instances*.json`` / ``captions*.json``).
With ``--promote``, the ``champion`` alias moves to the evaluated model version when
its score beats the current champion's (score: the mean of mAP, grounding R@1, REC
accuracy, RES mIoU, OCR word F1, 1 - CER and CIDEr/(1 + CIDEr), over what was measured).
"""
from __future__ import annotations

import collections
import io
import json
from pathlib import Path

from florence2.geometry import bounding_box
from florence2.vocabulary import CAPTION_TASKS
from jobs.common import base_parser, settings_from



def _box_of(poly_sets):
    return bounding_box([v for polys in poly_sets for p in polys for v in p])


def evaluate_examples(predictor, examples: list[dict], baseline: bool = True) -> dict:
    """``examples``: dicts with image (bytes), width, height, task, text_input, region, target."""
    from florence2 import evaluation as ev
    from florence2.parsing import post_process_generation
    from florence2.predictor import Request

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
        metrics["cider"] = ev.cider({str(i): o["answer"] or "" for i, (_, o) in enumerate(caps)}, refs)
        common = collections.Counter(e["target"] for e, _ in caps).most_common(1)[0][0]
        base["cider"] = ev.cider({k: common for k in refs}, refs)
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
        metrics.update({f"od_{k}": v for k, v in ev.coco_map(gt, pr).items()})
        base.update({f"od_{k}": v for k, v in ev.coco_map(gt, whole).items()})
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
        metrics["grounding_r1"] = ev.grounding_recall_at_1(items)
        base["grounding_r1"] = ev.grounding_recall_at_1(bitems)
    if "<REFERRING_EXPRESSION_SEGMENTATION>" in preds:
        seg, rec, bseg, brec = [], [], [], []
        for e, o in preds["<REFERRING_EXPRESSION_SEGMENTATION>"]:
            g = post_process_generation(e["target"], "<REFERRING_EXPRESSION_SEGMENTATION>", (e["width"], e["height"]),
                                        as_int=False)["<REFERRING_EXPRESSION_SEGMENTATION>"]["polygons"]
            p = o["answer"]["polygons"]
            whole = [[0, 0, e["width"], 0, e["width"], e["height"], 0, e["height"]]]
            seg.append((p[0] if p else [], g[0] if g else []))
            bseg.append((whole, g[0] if g else []))
            rec.append((_box_of(p[:1]), _box_of(g[:1])))
            brec.append(([0, 0, e["width"], e["height"]], _box_of(g[:1])))
        metrics["res_miou"], base["res_miou"] = ev.res_miou(seg), ev.res_miou(bseg)
        metrics["rec_accuracy"] = ev.rec_accuracy([x for x in rec if x[1]])
        base["rec_accuracy"] = ev.rec_accuracy([x for x in brec if x[1]])
    if "<OCR_WITH_REGION>" in preds:
        agg, bagg = [0, 0, 0], [0, 0, 0]
        for e, o in preds["<OCR_WITH_REGION>"]:
            g = post_process_generation(e["target"], "<OCR_WITH_REGION>", (e["width"], e["height"]), as_int=False)
            g = g["<OCR_WITH_REGION>"]
            truth = [{"text": t, "bbox": _box_of([[q]])} for q, t in zip(g["quad_boxes"], g["labels"])]
            pred = [{"text": t, "bbox": _box_of([[q]])} for q, t in zip(o["answer"]["quad_boxes"], o["answer"]["labels"])]
            r = ev.word_f1(pred, truth)
            agg = [agg[0] + r["tp"], agg[1] + r["predicted"], agg[2] + r["true"]]
            bagg[2] += r["true"]
        p, r = agg[0] / max(agg[1], 1), agg[0] / max(agg[2], 1)
        metrics["ocr_word_f1"] = 2 * p * r / (p + r) if p + r else 0.0
        base["ocr_word_f1"] = 0.0
    if "<OCR>" in preds:
        metrics["ocr_cer"] = sum(ev.cer(o["answer"] or "", e["target"]) for e, o in preds["<OCR>"]) / len(preds["<OCR>"])
        base["ocr_cer"] = 1.0
    return {"model": metrics, "baseline": base, "examples": {t: len(v) for t, v in by_task.items()}}


def score(m: dict) -> float:
    parts = [m[k] for k in ("od_mAP", "grounding_r1", "rec_accuracy", "res_miou", "ocr_word_f1") if k in m]
    if "ocr_cer" in m:
        parts.append(max(0.0, 1 - m["ocr_cer"]))
    if "cider" in m:
        parts.append(m["cider"] / (1 + m["cider"]))
    return sum(parts) / len(parts) if parts else 0.0


def synthetic_referring_examples(truth_dir: Path, images, image_ids: set, limit: int) -> list[dict]:
    """Referring-expression segmentation examples from the synthetic ground truth of the given images."""
    from florence2.targets import build_examples, from_synthetic

    truth = [json.loads(x) for x in open(Path(truth_dir) / "ground_truth.jsonl")]
    truth = [t for t in truth if t["image_id"] in image_ids]
    content = {r.image_id: bytes(r.content) for r in images.filter(images.image_id.isin([t["image_id"] for t in truth])).collect()}
    out = []
    for t in truth:
        if t["image_id"] not in content:
            continue
        for e in build_examples(from_synthetic(t), ["<REFERRING_EXPRESSION_SEGMENTATION>"]):
            out.append({"image": content[t["image_id"]], "width": t["width"], "height": t["height"], "task": e.task,
                        "text_input": e.text, "region": None, "target": e.target})
    return out[:limit]


def coco_folder_examples(folder: Path, limit: int | None = None) -> list[dict]:
    """A COCO-format folder as OD and caption examples."""
    from florence2.locations import box_tokens
    from PIL import Image

    folder = Path(folder)
    imgs, boxes, caps, cats = {}, collections.defaultdict(list), collections.defaultdict(list), {}
    for f in sorted((folder / "annotations").glob("*.json")):
        doc = json.loads(f.read_text())
        cats.update({c["id"]: c["name"] for c in doc.get("categories", [])})
        imgs.update({i["id"]: i for i in doc.get("images", [])})
        for a in doc.get("annotations", []):
            if "caption" in a:
                caps[a["image_id"]].append(a["caption"].strip())
            elif "bbox" in a and not a.get("iscrowd"):
                boxes[a["image_id"]].append(a)
    out = []
    for iid, im in list(sorted(imgs.items()))[:limit]:
        data = (folder / "images" / im["file_name"]).read_bytes()
        w, h = Image.open(io.BytesIO(data)).size
        if boxes[iid]:
            target = "".join(cats[a["category_id"]] + box_tokens([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                                  a["bbox"][1] + a["bbox"][3]], (w, h)) for a in boxes[iid])
            out.append({"image": data, "width": w, "height": h, "task": "<OD>", "target": target})
        for c in caps[iid][:1]:
            out.append({"image": data, "width": w, "height": h, "task": "<CAPTION>", "target": c})
    return out


def main(argv=None) -> dict:
    p = base_parser(__doc__)
    p.add_argument("--model", default="models:/florence2@candidate", help="model directory or MLflow model URI")
    p.add_argument("--examples-version", type=int, default=None, help="training_examples version (default: latest)")
    p.add_argument("--coco", default=None, help="a COCO-format folder to evaluate on as well")
    p.add_argument("--limit", type=int, default=200, help="examples per source at most")
    p.add_argument("--synthetic-referring", action="store_true",
                   help="also score referring expressions (REC accuracy, RES mIoU) on the synthetic world's "
                        "ground truth ($FLD_HOME/synthetic), which FLD's three families do not contain")
    p.add_argument("--promote", action="store_true", help="move the champion alias if this model beats it")
    p.add_argument("--registered-name", default="florence2")
    args = p.parse_args(argv)
    s = settings_from(args)

    import mlflow

    from florence2.predictor import Predictor
    from lakehouse.specialists.florence import resolve_model_dir
    from lakehouse.tracking import configure_mlflow

    configure_mlflow(s)
    model_dir = resolve_model_dir(args.model)
    predictor = Predictor.from_pretrained(model_dir, max_new_tokens=256)
    results = {}
    if args.coco is None or args.examples_version is not None:
        from lakehouse.spark import get_spark
        from lakehouse.tables import current_version, read

        spark = get_spark(s, "fld-evaluate")
        root = s.tables
        version = args.examples_version if args.examples_version is not None else current_version(spark, root, "training_examples")
        rows = (read(spark, root, "training_examples", version=version).filter("split = 'val'")
                .orderBy("example_id").limit(args.limit).collect())
        exs = [dict(r.asDict(), image=bytes(r.content)) for r in rows]
        val_images = {r.image_id for r in rows}
        if args.synthetic_referring:
            exs += synthetic_referring_examples(s.synthetic_dir, read(spark, root, "bronze_images"), val_images, args.limit)
        results["val"] = evaluate_examples(predictor, exs) | {"examples_version": version}
    if args.coco:
        results["coco"] = evaluate_examples(predictor, coco_folder_examples(Path(args.coco), args.limit)) | {"folder": args.coco}
    with mlflow.start_run(run_name=f"evaluate {args.model}") as run:
        mlflow.set_tag("fld.evaluates", args.model)
        for name, r in results.items():
            mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in r["model"].items()})
            mlflow.log_metrics({f"{name}.baseline.{k}": float(v) for k, v in r["baseline"].items()})
        primary = score(results.get("val", results.get("coco", {})).get("model", {}))
        mlflow.log_metric("score", primary)
        mlflow.log_dict(results, "evaluation.json")
        results["score"] = primary
        results["run_id"] = run.info.run_id
    for name, r in results.items():
        if isinstance(r, dict) and "model" in r:
            print(f"[evaluate] {name}:")
            for k in sorted(r["model"]):
                print(f"  {k:16s} model {r['model'][k]:.4f}   baseline {r['baseline'].get(k, float('nan')):.4f}")
    print(f"[evaluate] score {primary:.4f}")
    if args.promote:
        results["promoted"] = promote(args.registered_name, args.model, primary)
    return results


def promote(name: str, model_uri: str, new_score: float) -> bool:
    """Point ``champion`` at the evaluated version if it beats the current champion's score."""
    import mlflow

    client = mlflow.MlflowClient()
    if not model_uri.startswith("models:/"):
        raise ValueError("--promote needs a registered model URI (models:/name@alias or models:/name/version)")
    ref = model_uri[len("models:/"):]
    mv = client.get_model_version_by_alias(*ref.split("@", 1)) if "@" in ref else client.get_model_version(*ref.split("/", 1))
    try:
        champ = client.get_model_version_by_alias(name, "champion")
        best = float(champ.tags.get("fld.eval_score", "-inf"))
    except Exception:  # no champion yet
        champ, best = None, float("-inf")
    if champ is None or champ.version != mv.version:
        client.set_model_version_tag(name, mv.version, "fld.eval_score", f"{new_score:.6f}")
    if new_score > best:
        client.set_registered_model_alias(name, "champion", mv.version)
        print(f"[evaluate] champion -> version {mv.version} (score {new_score:.4f} > {best:.4f})")
        return True
    print(f"[evaluate] champion stays version {champ.version} (score {best:.4f} >= {new_score:.4f})")
    return False


if __name__ == "__main__":
    main()
