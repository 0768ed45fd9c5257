"""Which lever makes a from-scratch Florence-2 look at the image?  (issue 9)

Trains the tiny model with the production recipe (``florence2.recipe.train``) on
<CAPTION> and <OD> examples built from the synthetic world's ground truth, once per
variant, each for the same wall-clock budget on this machine, adding one lever at a
time.  For each it reports the held-out loss with each example's own image and with
the images shuffled across the batch (gap > 0: the model uses the image), and OD AP50
on held-out scenes (scores from the predictor).

    .venv/bin/python bench/image_ablation.py --images 1500 --minutes 2
    .venv/bin/python bench/image_ablation.py --steps 600 --variants 4,5,6 --out bench/results/image_ablation_600

``--steps`` gives every variant the same number of steps instead of the same time (the region
terms only show after a few hundred steps, and a step-budgeted run is not skewed by a busy machine).

Writes ``bench/results/image_ablation.{json,md}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from florence2 import modeling, recipe  # noqa: E402
from florence2.evaluation import coco_map, image_ablation  # noqa: E402
from florence2.parsing import post_process_generation  # noqa: E402
from florence2.predictor import Predictor, Request  # noqa: E402
from lakehouse.synthetic import synthetic_rows, write_recipe_data  # noqa: E402

TASKS = ["<CAPTION>", "<OD>"]
GRID_4x4 = (4, 2, 2, 2)
NO_REGIONS = dict(region_cells=0.0, region_attention=0.0)
# each variant adds one lever to the one before; the last is the recipe's default
VARIANTS = [
    ("before (issue 9)", dict(image_variance=0.0, loc_sigma=0.0, scratch_init=False) | NO_REGIONS, GRID_4x4),
    ("+ anti-collapse term", dict(image_variance=1.0, loc_sigma=0.0, scratch_init=False) | NO_REGIONS, GRID_4x4),
    ("+ scratch init (grid positions, ordinal <loc>)", dict(image_variance=1.0, loc_sigma=0.0, scratch_init=True) | NO_REGIONS, GRID_4x4),
    ("+ soft location targets", dict(image_variance=1.0, loc_sigma=8.0, scratch_init=True) | NO_REGIONS, GRID_4x4),
    ("+ 8x8 grid", NO_REGIONS, None),
    ("+ region cells", dict(region_attention=0.0), None),
    ("+ region attention (the default)", dict(), None),
]


def od_ap50(model, proc, rows) -> dict:
    """OD AP50 on held-out scenes, and the same with every label replaced by one (class-agnostic: does
    the model find the objects, whatever it calls them?)."""
    od = [r for r in rows if r["task"] == "<OD>"]
    outs = Predictor(model, proc, batch_size=32, max_new_tokens=64).predict([Request(r["content"], "<OD>") for r in od])
    gt, pred = [], []
    for k, (r, o) in enumerate(zip(od, outs)):
        g = post_process_generation(r["target"], "<OD>", (r["width"], r["height"]), as_int=False)["<OD>"]
        gt += [{"image_id": k, "bbox": b, "label": lab} for b, lab in zip(g["bboxes"], g["labels"])]
        ans = o["answer"]
        pred += [{"image_id": k, "bbox": b, "label": lab, "score": s}
                 for b, lab, s in zip(ans["bboxes"], ans["labels"], ans["scores"])]
    agnostic = coco_map([g | {"label": "object"} for g in gt], [p | {"label": "object"} for p in pred])["AP50"]
    return {"od_ap50": coco_map(gt, pred)["AP50"], "od_ap50_class_agnostic": agnostic}


def cell_label_accuracy(model, proc, rows, cfg, task: str = "<OD>") -> float:
    """How often an image token inside a held-out box names the box's label (argmax of the region-cell
    classifier over the label vocabulary): can the vision side tell the classes apart at all?  ``task``:
    whose boxes (``<OCR_WITH_REGION>`` with ``cfg.region_quads``: the words, each named by its last token)."""
    import io

    import torch
    from PIL import Image

    od = [r for r in rows if r["task"] == task][:64]
    loc = modeling.loc_token_range(proc.tokenizer)
    inputs, regions = recipe.prepare_batch(proc, [Image.open(io.BytesIO(r["content"])).convert("RGB") for r in od],
                                           [r["prompt"] for r in od], [r["target"] for r in od], cfg, model.config,
                                           loc, "cpu")
    cells = regions["cells"]
    inside = (cells != -100) & (cells != model.config.text_config.eos_token_id)
    labels = sorted(set(cells[inside].tolist()))
    with torch.no_grad():
        out = model(**inputs)
        first, n = regions["first"], regions["grid"] ** 2
        logits = model.lm_head(out.encoder_last_hidden_state[:, first:first + n])[..., labels]
    guess = torch.tensor(labels)[logits.argmax(-1)]
    return float((guess[inside] == cells[inside]).float().mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--minutes", type=float, default=2.0, help="training budget per variant")
    p.add_argument("--steps", type=int, default=None, help="a step budget per variant instead of --minutes")
    p.add_argument("--variants", default=None, help="comma-separated indices into VARIANTS (default: all)")
    p.add_argument("--image-size", type=int, default=None, help="the tiny preset's input size (default: its own)")
    p.add_argument("--tasks", default=",".join(TASKS), help="training tasks (the report scores <OD> and <CAPTION>)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "image_ablation"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fld-ablation-"))
    tasks = args.tasks.split(",")
    data = write_recipe_data(synthetic_rows(args.images, 41, tasks), work / "data")
    val = synthetic_rows(args.val_images, 42, TASKS)
    default_tiny = modeling.SIZES["tiny"]
    if args.image_size:
        default_tiny = dataclasses.replace(default_tiny, image_size=args.image_size)
    results = []
    chosen = [VARIANTS[int(i)] for i in args.variants.split(",")] if args.variants else VARIANTS
    for name, over, stride in chosen:
        modeling.SIZES["tiny"] = dataclasses.replace(default_tiny, patch_stride=stride) if stride else default_tiny
        cfg = recipe.Config(source="files", max_steps=args.steps or 10**6, epochs=10**6,
                            max_minutes=None if args.steps else args.minutes, batch_size=16,
                            lr=1e-3, warmup_steps=20, checkpoint_every=0, log_every=100,
                            output_dir=str(work / f"run{len(results)}"), **over)
        print(f"== {name}", flush=True)
        tr = recipe.train(cfg, data)
        model, proc = modeling.load(Path(cfg.output_dir) / "model")
        gaps = {}
        for task in TASKS:
            sel = [r for r in val if r["task"] == task][:64]
            gaps[task] = image_ablation(model, proc, [r["content"] for r in sel], [r["prompt"] for r in sel],
                                        [r["target"] for r in sel], cfg.loc_sigma)
        results.append({"variant": name, "config": over, "grid": proc.num_image_tokens - 1, "steps": tr["steps"], "seconds": round(tr["seconds"], 1),
                        "image_size": proc.image_size, "ablation": gaps, **od_ap50(model, proc, val),
                        "cell_label_accuracy": cell_label_accuracy(model, proc, val, cfg)})
        print(json.dumps(results[-1]), flush=True)
    modeling.SIZES["tiny"] = default_tiny
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only", "images": args.images,
           "minutes_per_variant": None if args.steps else args.minutes, "steps_per_variant": args.steps,
           "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    lines = [f"# Image ablation\n\n{args.images} synthetic scenes ({', '.join(tasks)}), tiny, {budget} "
             f"per variant on {res['machine']}. Gap = held-out loss with shuffled images minus with own images.\n",
             "| variant | input px | visual tokens | steps | train s | CAPTION gap | OD gap | OD AP50 | class-agnostic AP50 | cell label acc. |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r.get('image_size', '-')} | {r['grid']}+1 | {r['steps']} | {r.get('seconds', '-')} | "
              f"{r['ablation']['<CAPTION>']['gap']:.4f} | {r['ablation']['<OD>']['gap']:.4f} | {r['od_ap50']:.4f} | "
              f"{r.get('od_ap50_class_agnostic', float('nan')):.4f} | {r.get('cell_label_accuracy', float('nan')):.3f} |"
              for r in results]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
