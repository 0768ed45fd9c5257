"""Training throughput and MFU of the recipe's step, one efficiency option at a time (issue 11).

Every variant trains a fresh model of ``--size`` on the same few mixed-task batches
(synthetic scenes, real targets, padded per batch), side by side in one process:
warm-up steps (compilation included) first, then ``--steps`` timed steps.  FLOPs
are counted by ``torch.utils.flop_counter`` over one eager step of the same batch;
MFU is achieved FLOP/s over the card's dense bf16 peak.  The step is the recipe's
own pieces (``prepare_batch``, ``step_loss``, ``make_optimizer``), so what is
measured is what ``florence2.recipe.train`` runs.

    python3 bench/train_throughput.py --size base --batch 32            # on a GPU (bf16 autocast)
    .venv/bin/python bench/train_throughput.py --size tiny --batch 16   # CPU figures (fp32)

Also measures the input side at the model's image size: decoded images/s of the
CPU preprocessing (PIL) per core, and of the tensor path on the device.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from florence2 import modeling, recipe  # noqa: E402
from predictor_throughput import machine, sync  # noqa: E402  (bench/ is on sys.path when run as a script)
from florence2.tokenization import build_tokenizer  # noqa: E402
from lakehouse.synthetic import synthetic_rows  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense, per the vendors' datasheets
TASKS = ["<OD>", "<CAPTION>", "<DETAILED_CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>", "<OCR_WITH_REGION>", "<OCR>"]

# name -> (recipe overrides, plain step?)  Each adds one option to the one before, except "plain".
VARIANTS = [
    ("plain HF loss (sdpa, AdamW, item() every step)", {"fused_adamw": "false", "pad_multiple": 1}, True),
    ("recipe defaults before issue 11 (eager attention for the region terms)", {"fused_adamw": "false", "pad_multiple": 1}, False),
    ("+ fused AdamW, length buckets, no per-step sync", {"pad_multiple": 8}, False),
    ("+ torch.compile", {"compile": True}, False),
    ("+ compile, region attention off (SDPA everywhere)", {"compile": True, "region_attention": 0.0}, False),
]


def make_batches(rows, proc, n_batches, bs):
    from PIL import Image

    out = []
    for k in range(n_batches):
        part = rows[k * bs:(k + 1) * bs]
        out.append(([Image.open(io.BytesIO(r["content"])).convert("RGB") for r in part],
                    [r["prompt"] for r in part], [r["target"] for r in part]))
    return out


def run_variant(size, tok, batches, over, plain, args, device):
    cfg = recipe.Config(model_size=size, **over)
    torch.manual_seed(0)
    model, proc = modeling.create(size, tok)
    if cfg.region_attention > 0 and not plain:
        model.set_attn_implementation("eager")
    model.to(device).train()
    opt = recipe.make_optimizer(model, cfg, device)
    loc = modeling.loc_token_range(tok)
    bf16 = device == "cuda"
    if cfg.compile:
        model.compile(backend=cfg.compile_backend)
    prepared = [recipe.prepare_batch(proc, px, pr, tg, cfg, model.config, loc, device) for px, pr, tg in batches]

    def step(k):
        inputs, regions = prepared[k % len(prepared)]
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            if plain:
                total = model(**inputs).loss
            else:
                total, _ = recipe.step_loss(model, inputs, cfg, loc, regions, proc.tokenizer)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if plain:
            total.item()  # what the loop did every step
        return total

    t0 = time.perf_counter()
    first = float(step(0).detach())
    for k in range(1, args.warmup):
        step(k)
    sync(device)
    warm_s = time.perf_counter() - t0
    flops = None
    if not cfg.compile:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            step(0)
        flops = fc.get_total_flops()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    for k in range(args.steps):
        step(k)
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    out = {"first_step_loss": round(first, 6), "warmup_s": round(warm_s, 1), "step_s": round(dt, 4),
           "examples_per_s": round(args.batch / dt, 2)}
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out, flops  # the model and optimiser go with this frame; the caller empties the CUDA cache


def input_rates(proc, images, device, n=64):
    """Decoded images/s of the CPU preprocessing on one core, and of the tensor path on ``device``."""
    imgs = (images * (n // len(images) + 1))[:n]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    proc.preprocess(imgs)
    pil = n / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    proc.preprocess_tensor(imgs[:4], device)
    sync(device)
    t0 = time.perf_counter()
    proc.preprocess_tensor(imgs, device)
    sync(device)
    return {"image_size": proc.image_size, "pil_images_per_s_per_core": round(pil, 1),
            "tensor_path_images_per_s": round(n / (time.perf_counter() - t0), 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=4, help="distinct batches the steps cycle through")
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--variants", default=None, help="comma-separated indices into VARIANTS (default: all on "
                                                    "CUDA; without the compiled ones on CPU)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = args.device
    rows = synthetic_rows(max(8, args.batch * args.batches // 5 + 1), 3, TASKS)
    rows = sorted(rows, key=lambda r: r["example_id"][::-1])[: args.batch * args.batches]  # tasks mixed per batch
    tok = build_tokenizer([r["target"] for r in rows] + [r["prompt"] for r in rows], vocab_size=2000)
    _, proc = modeling.create(args.size, tok)
    batches = make_batches(rows, proc, args.batches, args.batch)
    chosen = ([int(i) for i in args.variants.split(",")] if args.variants else
              [i for i, v in enumerate(VARIANTS) if device == "cuda" or not v[1].get("compile")])
    out_path = Path(args.out or Path(__file__).parent / "results" / f"train_throughput_{args.size}_{device}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(device), "size": args.size, "batch": args.batch,
              "precision": "bf16 autocast" if device == "cuda" else "fp32",
              "input": input_rates(proc, [b for px, _, _ in batches for b in px], device), "variants": []}
    print(json.dumps(result["input"]), flush=True)
    eager_flops = {}
    for i in chosen:
        name, over, plain = VARIANTS[i]
        try:
            entry, flops = run_variant(args.size, tok, batches, over, plain, args, device)
        except Exception as e:  # one variant failing (a compiler on this box) must not lose the others
            entry, flops = {"error": f"{type(e).__name__}: {str(e)[:300]}"}, None
        if device == "cuda":
            torch.cuda.empty_cache()
        key = (plain, over.get("region_attention", 1.0))
        if flops:
            eager_flops[key] = flops
        flops = flops or eager_flops.get(key)
        if flops and "step_s" in entry:
            entry["tflops_per_step"] = round(flops / 1e12, 3)
            entry["achieved_tflops"] = round(flops / entry["step_s"] / 1e12, 2)
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if device == "cuda" and k in torch.cuda.get_device_name(0)), None)
            if peak:
                entry["mfu"] = round(flops / entry["step_s"] / 1e12 / peak, 4)
        result["variants"].append({"variant": name, "overrides": over} | entry)
        print(json.dumps(result["variants"][-1]), flush=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")  # each variant lands, even if a later one hangs
    base = next((v for v in result["variants"] if "step_s" in v), None)
    print(f"\n{result['machine']}, {args.size}, batch {args.batch}, {result['precision']}")
    print("| variant | examples/s | MFU | vs first |\n|---|---|---|---|")
    for v in result["variants"]:
        if "step_s" in v:
            print(f"| {v['variant']} | {v['examples_per_s']} | {v.get('mfu', '-')} | {base['step_s'] / v['step_s']:.2f}x |")
        else:
            print(f"| {v['variant']} | {v['error']} | | |")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
