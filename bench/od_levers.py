"""OD-only lever probe for issue 9: the production recipe trained for a few CPU minutes on `<OD>` alone
(synthetic truth of 2,000 scenes, warm-up 150), then, on 120 validation scenes:
- greedy `<OD>` answers: recall at IoU 0.5 with the right label, median best IoU per true box, the share
  of true boxes with a predicted box at IoU >= 0.5 (any label), and label agreement of that best box;
- teacher-forced diagnostics: the region terms' values, the decoder's attention mass inside the
  supervised cells, label accuracy at label positions, and the encoder's per-cell label accuracy
  on object cells (through the tied output layer, as ``region_cells`` trains it).

    .venv/bin/python bench/od_levers.py --tag base
    .venv/bin/python bench/od_levers.py --tag edges+bins region_edges=true scratch_positions=bins

Each run appends one line to bench/results/od_levers.jsonl (machine, overrides, figures).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOX = re.compile(r"([^<>]+)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")


def boxes(text: str):
    return [(m[0].strip(), tuple(int(v) for v in m[1:])) for m in BOX.findall(text)]


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / u if u > 0 else 0.0


def answer_scores(val, texts) -> dict:
    ious, same_label, hits, n_pred = [], 0, 0, 0
    for r, text in zip(val, texts):
        truth, pred = boxes(r["target"]), boxes(text)
        n_pred += len(pred)
        for label, b in truth:
            if not pred:
                ious.append(0.0)
                continue
            best = max(pred, key=lambda q: iou(q[1], b))
            ious.append(iou(best[1], b))
            same_label += best[0] == label
            hits += best[0] == label and ious[-1] >= 0.5
    n = len(ious)
    if not n:  # no <OD> examples (a mixture without <OD>): nothing to describe
        return {"true_boxes": 0, "pred_boxes": n_pred}
    return {"true_boxes": n, "pred_boxes": n_pred, "recall50_labelled": hits / n, "iou_median": statistics.median(ious),
            "boxes_iou50_any_label": sum(i >= 0.5 for i in ious) / n, "label_of_best_box": same_label / n}


def teacher_forced(model, proc, val, cfg) -> dict:
    import torch

    from florence2 import modeling, recipe
    from florence2.tokenization import head_tokens

    tok, loc = proc.tokenizer, modeling.loc_token_range(proc.tokenizer)
    inputs = proc.batch([], [r["prompt"] for r in val], [r["target"] for r in val]) | {
        "pixel_values": torch.from_numpy(proc.preprocess([r["content"] for r in val]))}
    reg = recipe.region_targets(inputs["input_ids"], inputs["labels"], loc, model.config.text_config,
                                model.config.image_token_id, cfg.region_edges, head_tokens(tok))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
        cell, att, pool, _ = recipe.region_losses(model, out, reg, cfg)
    first, n = reg["first"], reg["grid"] ** 2
    a = torch.stack([c[..., first:first + n] for c in out.cross_attentions]).float().mean((0, 2))
    written = reg["where"].any(-1)
    pred = out.logits.argmax(-1)
    starts = [(i, span[0]) for i, bs in enumerate(recipe.target_boxes(inputs["labels"], loc, {
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id})) for _, _, span in bs]
    label_acc = sum(int(pred[i, p] == inputs["labels"][i, p]) for i, p in starts) / max(1, len(starts))
    cells = reg["cells"]
    obj = (cells != -100) & (cells != tok.eos_token_id)
    enc = out.encoder_last_hidden_state[:, first:first + n]
    cell_pred = model.lm_head(enc).argmax(-1)
    box_labels = reg["box_labels"]
    pool_pred = model.lm_head(recipe.box_means(enc, reg["boxes"])).argmax(-1)
    real = box_labels != -100
    return {"cell_term": float(cell), "attention_term": float(att), "pool_term": float(pool),
            "encoder_box_mean_accuracy": float((pool_pred[real] == box_labels[real]).float().mean()),
            "attention_in_cells": float((a * reg["where"].float()).sum(-1)[written].mean()),
            "label_accuracy_teacher_forced": label_acc,
            "encoder_object_cell_accuracy": float((cell_pred[obj] == cells[obj]).float().mean())}


def main():
    from florence2 import modeling, recipe
    from florence2.predictor import Predictor, Request
    from lakehouse.synthetic import synthetic_rows, write_recipe_data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    p.add_argument("--tag", required=True)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=120)
    p.add_argument("--home", default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "od_levers.jsonl"))
    args = p.parse_args()
    work = Path(args.home or tempfile.mkdtemp(prefix="fld-od-levers-"))
    data = write_recipe_data(synthetic_rows(args.images, 41, ["<OD>"]), work / "data")
    val = synthetic_rows(args.val_images, 42, ["<OD>"])
    cfg = recipe.load_config(None, ["source=files", f"max_minutes={args.minutes}", "max_steps=1000000",
                                    "epochs=1000000", "batch_size=16", "checkpoint_every=0", "log_every=100",
                                    f"output_dir={work / 'run'}", "warmup_steps=150"] + args.overrides)
    tr = recipe.train(cfg, data)
    model, proc = modeling.load(work / "run" / "model")
    texts = [o["text"] for o in Predictor(model, proc, batch_size=64, max_new_tokens=200).predict(
        [Request(r["content"], "<OD>") for r in val])]
    res = {"tag": args.tag, "overrides": args.overrides, "minutes": args.minutes, "steps": tr["steps"],
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
           **answer_scores(val, texts), **teacher_forced(model, proc, val[:64], cfg),
           "examples": [{"truth": r["target"], "answer": t} for r, t in zip(val[:3], texts)]}
    print(json.dumps(res), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
