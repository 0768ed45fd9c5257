"""How fast can the tiny vision side learn to tell the shapes apart?  (issue 9)

Trains a fresh tiny model on the region-cell term alone (each image token inside an <OD> box predicts
the box's label through the tied output layer; ``florence2.recipe.region_losses``), with no text loss,
and reports held-out cell label accuracy (8 classes, chance 0.125) every ``--every`` steps.  If this
is slow, no decoder-side lever can make <OD> labels right within a CPU budget.  ``--task
'<OCR_WITH_REGION>'`` asks the same of the words (each cell inside a word's quad names the word's last
token; 16 words): can the encoder read at this input size at all?

    .venv/bin/python bench/vision_probe.py --lr 1e-3 --steps 1200
    .venv/bin/python bench/vision_probe.py --task '<OCR_WITH_REGION>' --steps 800 [--set image_size=256]
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
    p.add_argument("--task", default="<OD>", choices=("<OD>", "<OCR_WITH_REGION>"), help="whose boxes the cells name")
    p.add_argument("--cnn", action="store_true",
                   help="calibration: a plain 4-layer CNN (stride 16, the same 8x8 cells) on the same targets")
    args = p.parse_args()
    import tempfile

    rows, val = synthetic_rows(args.images, 41, [args.task]), synthetic_rows(100, 42, [args.task])
    rows = [r for r in rows if r["target"]]  # scenes without words: nothing for the cells to name
    data = write_recipe_data(rows + val, Path(tempfile.mkdtemp(prefix="fld-probe-")))
    tok = load_tokenizer(data["tokenizer"])
    cfg = recipe.Config(region_attention=0.0, region_quads=args.task == "<OCR_WITH_REGION>")
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
    net = _cnn(len(tok), modeling.SIZES[size].image_size) if args.cnn else model
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    loc = modeling.loc_token_range(tok)

    def batch(rs):
        images = [Image.open(io.BytesIO(r["content"])).convert("RGB") for r in rs]
        return recipe.prepare_batch(proc, images, [r["prompt"] for r in rs], [r["target"] for r in rs], cfg,
                                    model.config, loc, "cpu")

    def accuracy() -> float:
        if args.cnn:
            inputs, regions = batch(val[:64])
            return _cnn_accuracy(net, regions["cells"], inputs["pixel_values"], tok.eos_token_id)
        model.eval()
        try:
            return cell_label_accuracy(model, proc, [r for r in val if r["target"]], cfg, args.task)
        finally:
            model.train()

    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        inputs, regions = batch(random.Random(step).sample(rows, args.batch))
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 20)
        if args.cnn:
            cell = torch.nn.functional.cross_entropy(net(inputs["pixel_values"]), regions["cells"], ignore_index=-100)
        else:
            cell, _, _, _ = recipe.region_losses(model, model(**inputs), regions, cfg)
        cell.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % args.every == 0:
            curve.append({"step": step, "seconds": round(time.time() - t0, 1), "cell_loss": round(float(cell), 4),
                          "val_cell_label_accuracy": round(accuracy(), 4)})
            print(json.dumps(curve[-1]), flush=True)
    ocr = "_ocr" if args.task != "<OD>" else ""
    out = Path(args.out or Path(__file__).parent / "results" / f"vision_probe{ocr}{'_cnn' if args.cnn else ''}_lr{args.lr:g}.json")
    out.write_text(json.dumps({"model": "plain CNN" if args.cnn else "florence2", "task": args.task, "size": dataclasses.asdict(modeling.SIZES[size]), "lr": args.lr, "batch": args.batch, "images": args.images,
                               "chance": 1 / 16 if ocr else 1 / 8,
                               "curve": curve}, indent=2) + "\n")


def _cnn(vocab: int, image_size: int):
    """Four 3x3 stride-2 convolutions to 1/16 of the image (the tiny preset's 8x8 cells at 128 px), then
    a 1x1 classifier over the vocabulary per cell: (B, V, cells)."""
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
                         nn.Conv2d(64, 96, 3, 2, 1), nn.GELU(), nn.Conv2d(96, 128, 3, 2, 1), nn.GELU(),
                         nn.AdaptiveAvgPool2d(image_size // 16), nn.Conv2d(128, vocab, 1), nn.Flatten(2))


def _cnn_accuracy(net, cells, pixels, eos: int) -> float:
    """``image_ablation.cell_label_accuracy``'s measure for the CNN: argmax over the labels, inside boxes."""
    import torch

    inside = (cells != -100) & (cells != eos)
    labels = sorted(set(cells[inside].tolist()))
    with torch.no_grad():
        guess = torch.tensor(labels)[net(pixels)[:, labels].argmax(1)]
    return float((guess[inside] == cells[inside]).float().mean())


if __name__ == "__main__":
    main()
