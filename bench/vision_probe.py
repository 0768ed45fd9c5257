"""How fast can the tiny vision side learn to tell the shapes apart?  (issue 9)

Trains a fresh tiny model on the region-cell term alone (each image token inside an <OD> box predicts
the box's label through the tied output layer; ``florence2.recipe.region_losses``), with no text loss,
and reports held-out cell label accuracy (8 classes, chance 0.125) every ``--every`` steps.  If this
is slow, no decoder-side lever can make <OD> labels right within a CPU budget.

    .venv/bin/python bench/vision_probe.py --lr 1e-3 --steps 1200
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    import torch
    from PIL import Image

    from florence2 import modeling, recipe
    from florence2.tokenization import load_tokenizer
    from image_ablation import cell_label_accuracy  # the same measure as the ablation table's
    from lakehouse.synthetic import synthetic_rows, write_recipe_data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--every", type=int, default=150)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default=None, help="default: bench/results/vision_probe_lr<lr>.json")
    p.add_argument("--size", default="tiny", help="model preset the probe starts from")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the preset, e.g. image_size=256 or patch_stride=4,2,2,2")
    args = p.parse_args()
    import tempfile

    rows, val = synthetic_rows(args.images, 41, ["<OD>"]), synthetic_rows(100, 42, ["<OD>"])
    data = write_recipe_data(rows + val, Path(tempfile.mkdtemp(prefix="fld-probe-")))
    tok = load_tokenizer(data["tokenizer"])
    cfg = recipe.Config(region_attention=0.0)
    size = args.size
    if args.set:
        overrides = {}
        for kv in args.set:
            k, v = kv.split("=", 1)
            overrides[k] = tuple(int(x) for x in v.split(",")) if "," in v else int(v)
        modeling.SIZES["probe"] = dataclasses.replace(modeling.SIZES[args.size], **overrides)
        size = "probe"
    model, proc = modeling.create(size, tok)
    print(f"{size}: {modeling.SIZES[size]}; {proc.num_image_tokens - 1} grid tokens", flush=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    loc = modeling.loc_token_range(tok)

    def batch(rs):
        images = [Image.open(io.BytesIO(r["content"])).convert("RGB") for r in rs]
        return recipe.prepare_batch(proc, images, [r["prompt"] for r in rs], [r["target"] for r in rs], cfg,
                                    model.config, loc, "cpu")

    def accuracy() -> float:
        model.eval()
        try:
            return cell_label_accuracy(model, proc, val, cfg)
        finally:
            model.train()

    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        inputs, regions = batch(random.Random(step).sample(rows, args.batch))
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 20)
        cell, _ = recipe.region_losses(model, model(**inputs), regions, cfg)
        cell.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % args.every == 0:
            curve.append({"step": step, "seconds": round(time.time() - t0, 1), "cell_loss": round(float(cell), 4),
                          "val_cell_label_accuracy": round(accuracy(), 4)})
            print(json.dumps(curve[-1]), flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / f"vision_probe_lr{args.lr:g}.json")
    out.write_text(json.dumps({"size": dataclasses.asdict(modeling.SIZES[size]), "lr": args.lr, "batch": args.batch, "images": args.images, "chance": 1 / 8,
                               "curve": curve}, indent=2) + "\n")


if __name__ == "__main__":
    main()
