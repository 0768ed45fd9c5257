"""Calibration for issue 9's OD target: what a purpose-built detector reaches on the same data, input
and budget as the learning report (the synthetic world's scenes, squashed to the `tiny` preset's 128 px,
2 CPU cores, a fixed number of minutes), scored with the same COCO AP50 (``florence2.evaluation.coco_map``).

The detector is a small CenterNet (a plain CNN to a 16x16 grid of per-class centre heatmaps, box sizes and
offsets; peaks are the detections, their heatmap values the scores).  It is not part of the platform:
it answers how much of the gap between Florence-2's OD AP50 and the 0.5 target the budget itself explains.

    .venv/bin/python bench/detector_calibration.py --images 3000 --minutes 15
    .venv/bin/python bench/detector_calibration.py --backbone florence2-tiny   # the same head on tiny's vision side

``--backbone florence2-tiny`` puts the same heads on the `tiny` preset's own vision tower and projector
(``florence2.modeling.create``, scratch initialisation, its 8x8 grid of visual tokens), to tell whether the
vision side or the text decoder's read-out is what holds Florence-2's OD back.

``--warmup``, ``--init``, ``--lr``, ``--vision`` and ``--cnn-grid`` are the levers of the 3-minute sweep in
bench/results/detector_calibration_sweep.json (each run's command is recorded there): the tower's warm-up
was the one that mattered (AP50 0.16 without, 0.48 with 150 steps; the CNN on tiny's 8x8 grid: 0.75).

Writes bench/results/detector_calibration_<backbone>.json (AP50 / mAP on the validation scenes at each checkpoint).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE, STRIDE = 128, 8
GRID = SIZE // STRIDE


def render(n: int, seed: int):
    """(uint8 images N x 3 x S x S, scenes) of the synthetic world, squashed to S x S as the processor does."""
    import numpy as np
    from PIL import Image

    from lakehouse.synthetic import generate

    imgs, scenes = [], []
    for sc, img in generate(n, seed):
        imgs.append(np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)).transpose(2, 0, 1))
        scenes.append(sc)
    return np.stack(imgs), scenes


def targets(scenes, categories):
    """CenterNet targets on the grid: heatmaps (C x G x G), and per object its cell, size and offset."""
    import numpy as np

    c = len(categories)
    heat = np.zeros((len(scenes), c, GRID, GRID), np.float32)
    cells, sizes, offs, mask = (np.zeros((len(scenes), 8), np.int64), np.zeros((len(scenes), 8, 2), np.float32),
                                np.zeros((len(scenes), 8, 2), np.float32), np.zeros((len(scenes), 8), np.float32))
    yy, xx = np.mgrid[0:GRID, 0:GRID]
    for i, sc in enumerate(scenes):
        sx, sy = SIZE / sc.width, SIZE / sc.height
        for k, o in enumerate(sc.objects[:8]):
            x0, y0, x1, y1 = o.bbox[0] * sx, o.bbox[1] * sy, o.bbox[2] * sx, o.bbox[3] * sy
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            ix, iy = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
            sigma = max(0.5, 0.15 * ((x1 - x0) * (y1 - y0)) ** 0.5 / STRIDE)
            g = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma ** 2))
            ci = categories.index(o.category)
            heat[i, ci] = np.maximum(heat[i, ci], g)
            cells[i, k], sizes[i, k], offs[i, k], mask[i, k] = iy * GRID + ix, ((x1 - x0) / SIZE, (y1 - y0) / SIZE), (cx - ix, cy - iy), 1
    return heat, cells, sizes, offs, mask


def vision_tower_detector(c: int, size: str, init: str = "hf"):
    """The heads on Florence-2's projected visual tokens (the ones the encoder and decoder see).

    ``init="torch"`` re-initialises the vision tower's convolutions and linear layers with PyTorch's
    defaults (Kaiming-uniform) instead of transformers' N(0, 0.02)."""
    import torch
    import torch.nn as nn

    from florence2 import modeling
    from florence2.tokenization import build_tokenizer

    model, proc = modeling.create(size, build_tokenizer(["a circle"], vocab_size=300))
    if init == "torch":
        for m in model.model.vision_tower.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (proc.image_mean, proc.image_std))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision, self.projector = model.model.vision_tower, model.model.multi_modal_projector
            self.head = nn.Conv2d(model.config.text_config.d_model, c + 4, 1)
            self.head.bias.data[:c] = -2.19

        def forward(self, x):
            feats = self.projector(self.vision((x - mean) / std).last_hidden_state)[:, 1:]  # drop the pooled token
            b, n, d = feats.shape
            g = int(n ** 0.5)
            return self.head(feats.transpose(1, 2).reshape(b, d, g, g))

    return Net()


def make_model(c: int):
    import torch.nn as nn

    def block(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    body = nn.Sequential(*block(3, 32, 2), *block(32, 32, 1), *block(32, 64, 2), *block(64, 64, 1),
                         *block(64, 128, 2), *block(128, 128, 1), *block(128, 128, 1))
    if STRIDE == 16:  # tiny's 8x8 grid
        body.extend(block(128, 128, 2))
    head = nn.Conv2d(128, c + 4, 1)
    head.bias.data[:c] = -2.19  # CenterNet's prior: heatmaps start near 0.1
    return nn.Sequential(body, head)


def loss_fn(out, heat, cells, sizes, offs, mask, c: int):
    import torch

    hm = out[:, :c].sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    neg = (1 - heat) ** 4
    focal = -(pos * (1 - hm) ** 2 * hm.log() + (1 - pos) * neg * hm ** 2 * (1 - hm).log()).sum() / pos.sum().clamp(min=1)
    reg = out[:, c:].flatten(2)  # B x 4 x G*G
    picked = torch.gather(reg, 2, cells[:, None, :].expand(-1, 4, -1)).transpose(1, 2)  # B x 8 x 4
    box = (torch.abs(picked[..., :2] - sizes) + torch.abs(picked[..., 2:] - offs)).sum(-1)
    return focal + (box * mask).sum() / mask.sum().clamp(min=1)


def detect(model, images, scenes, categories, k: int = 20):
    import torch
    import torch.nn.functional as F

    c = len(categories)
    preds = []
    with torch.no_grad():
        for s in range(0, len(images), 64):
            out = model(torch.from_numpy(images[s:s + 64]).float() / 255)
            hm = out[:, :c].sigmoid()
            hm = hm * (F.max_pool2d(hm, 3, 1, 1) == hm)
            scores, idx = hm.flatten(1).topk(k)
            for b in range(len(scores)):
                sc = scenes[s + b]
                for v, j in zip(scores[b].tolist(), idx[b].tolist()):
                    ci, cell = divmod(j, GRID * GRID)
                    iy, ix = divmod(cell, GRID)
                    w, h, ox, oy = out[b, c:, iy, ix].tolist()
                    cx, cy = (ix + ox) * STRIDE, (iy + oy) * STRIDE
                    sx, sy = sc.width / SIZE, sc.height / SIZE
                    bw, bh = max(w, 0) * SIZE, max(h, 0) * SIZE
                    preds.append({"image_id": sc.scene_id, "label": categories[ci], "score": v,
                                  "bbox": [(cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy]})
    return preds


def main():
    import numpy as np
    import torch

    from florence2.evaluation import coco_map
    from lakehouse.synthetic import CATEGORIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--val-images", type=int, default=150)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=float, default=2.5, help="minutes between evaluations")
    p.add_argument("--backbone", default="cnn", help="cnn | florence2-tiny (or any preset: florence2-SIZE)")
    p.add_argument("--vision", nargs="*", default=[],
                   help="overrides of the preset's vision side, e.g. depths=2,2,2,2 embed_dim=32,64,128,256")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear warm-up before the cosine")
    p.add_argument("--init", choices=["hf", "torch"], default="hf", help="vision tower initialisation (florence2 backbones)")
    p.add_argument("--cnn-grid", type=int, choices=[8, 16], default=16, help="the CNN's output grid (tiny's is 8)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    global GRID, STRIDE
    if args.backbone == "cnn":
        GRID, STRIDE = args.cnn_grid, SIZE // args.cnn_grid
    else:
        import dataclasses

        from florence2.modeling import SIZES, make_config
        from florence2.processing import num_image_tokens

        size = args.backbone.split("-", 1)[1]
        if args.vision:  # a variant of the preset, registered under its own name for this process only
            over = {k: tuple(int(x) for x in v.split(",")) if "," in v else int(v)
                    for k, v in (kv.split("=", 1) for kv in args.vision)}
            SIZES[f"{size}+"] = dataclasses.replace(SIZES[size], **over)
            size = f"{size}+"
            args.backbone = f"florence2-{size}"
        GRID = int((num_image_tokens(SIZE, make_config(size, 300, 299).vision_config) - 1) ** 0.5)
        STRIDE = SIZE // GRID
        assert SIZES[size].image_size == SIZE, "the calibration runs at 128 px, tiny's input"
    out_path = Path(args.out or ROOT / "bench" / "results" / f"detector_calibration_{args.backbone.replace('+', '_variant')}.json")
    torch.manual_seed(0)
    cats = list(CATEGORIES)
    # the learning report's scenes: training seed 41, validation seed 42
    tr_img, tr_sc = render(args.images, 41)
    va_img, va_sc = render(args.val_images, 42)
    heat, cells, sizes, offs, mask = (torch.from_numpy(a) for a in targets(tr_sc, cats))
    gt = [{"image_id": sc.scene_id, "label": o.category, "bbox": o.bbox} for sc in va_sc for o in sc.objects]
    model = make_model(len(cats)) if args.backbone == "cnn" else vision_tower_detector(len(cats), args.backbone.split("-", 1)[1], args.init)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60
    rng = np.random.default_rng(0)
    curve, step, t0, next_eval = [], 0, time.perf_counter(), args.eval_every * 60
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= next_eval or elapsed >= budget:
            model.eval()
            m = coco_map(gt, detect(model, va_img, va_sc, cats))
            model.train()
            curve.append({"minutes": round(elapsed / 60, 2), "steps": step, **{k: round(v, 4) for k, v in m.items()}})
            print(f"[calibration] {curve[-1]}", flush=True)
            next_eval += args.eval_every * 60
            t0 += time.perf_counter() - t0 - elapsed  # evaluation time is not training time
            if elapsed >= budget:
                break
        idx = torch.from_numpy(rng.choice(len(tr_img), args.batch, replace=False))
        for g in opt.param_groups:  # cosine over the time budget, as the recipe's max_minutes
            g["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * min(elapsed / budget, 1.0))) * min(1.0, (step + 1) / (args.warmup + 1))
        out = model(torch.from_numpy(tr_img[idx.numpy()]).float() / 255)
        loss = loss_fn(out, heat[idx], cells[idx], sizes[idx], offs[idx], mask[idx], len(cats))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
           "backbone": args.backbone, "vision_overrides": args.vision, "images": args.images, "val_images": args.val_images, "input": f"{SIZE}x{SIZE}, grid {GRID}x{GRID}",
           "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "init": args.init, "minutes": args.minutes, "curve": curve}
    out_path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
