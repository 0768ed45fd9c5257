"""Batched predictor vs a one-image-at-a-time generate loop, and training throughput.

For each configuration (default: tiny and base, random weights), the same images
and requests go through ``Predictor.predict`` (batched, padded prompts with
attention masks) and ``one_by_one`` (one generate call per image), side by side
in one process.  Every image decodes exactly ``--new-tokens`` tokens, so both do
equal work; the greedy outputs are compared.  With ``--train-steps`` it also
measures training examples/s and, on a GPU, MFU from FLOPs counted by
``torch.utils.flop_counter`` over one real step.

    .venv/bin/python bench/predictor_throughput.py --device cpu
    python3 bench/predictor_throughput.py --device cuda --images 64 --batch-size 32 --train-steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from florence2 import modeling  # noqa: E402
from florence2.predictor import Predictor, Request, one_by_one  # noqa: E402
from florence2.targets import build_examples, from_synthetic  # noqa: E402
from florence2.tasks import build_prompt  # noqa: E402
from florence2.tokenization import build_tokenizer  # noqa: E402
from lakehouse.synthetic import generate  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}   # dense, per the vendors' datasheets
TASKS = ("<CAPTION>", "<OD>", "<OCR>", "<DETAILED_CAPTION>")


def machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench_inference(model, proc, scenes, args, device):
    reqs = [Request(img, TASKS[i % len(TASKS)]) for i, (_, img) in enumerate(scenes[: args.images])]
    pred = Predictor(model, proc, device=device, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                     batch_size=args.batch_size)
    pred.predict(reqs[: min(2, len(reqs))])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    batched = pred.predict(reqs)
    sync(device)
    t1 = time.perf_counter()
    single = one_by_one(pred, reqs)
    sync(device)
    t2 = time.perf_counter()
    same = sum(a["text"] == b["text"] for a, b in zip(batched, single))
    return {"images": len(reqs), "batch_size": args.batch_size, "new_tokens_per_image": args.new_tokens,
            "batched_images_per_s": round(len(reqs) / (t1 - t0), 3), "loop_images_per_s": round(len(reqs) / (t2 - t1), 3),
            "speedup_batched_over_loop": round((t2 - t1) / (t1 - t0), 2), "outputs_equal": f"{same}/{len(reqs)}"}


def bench_training(model, proc, scenes, args, device):
    from torch.utils.flop_counter import FlopCounterMode

    exs = []
    for s, img in scenes:
        for e in build_examples(from_synthetic(s.to_dict())):
            exs.append((img, e))
    bs = args.train_batch
    exs = exs[: bs]
    batch = proc.batch([i for i, _ in exs], [build_prompt(e.task, e.text, e.region, i.size) for i, e in exs],
                       [e.target for _, e in exs])
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_bf16 = device == "cuda"

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / args.train_steps
    out = {"batch": bs, "steps": args.train_steps, "encoder_len": int(batch["input_ids"].shape[1]),
           "decoder_len": int(batch["labels"].shape[1]), "examples_per_s": round(bs / dt, 2),
           "tflops_per_step": round(flops / 1e12, 3), "achieved_tflops": round(flops / dt / 1e12, 2),
           "precision": "bf16 autocast" if use_bf16 else "fp32"}
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak:
            out["mfu"] = round(flops / dt / 1e12 / peak, 4)
            out["peak_tflops_assumed"] = peak
    model.eval()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--train-steps", type=int, default=0)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="inference dtype on cuda")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    scenes = list(generate(max(args.images, 32), seed=3))
    corpus = [c for s, _ in scenes for c in s.captions.values()]
    tok = build_tokenizer(corpus, vocab_size=2000)
    result = {"machine": machine(args.device), "device": args.device, "configs": {}}
    for size in args.sizes.split(","):
        model, proc = modeling.create(size, tok)
        if args.device == "cuda":
            model = model.to("cuda")
        params = sum(x.numel() for x in model.parameters())
        entry = {"params_M": round(params / 1e6, 1), "image_size": proc.image_size,
                 "image_tokens": proc.num_image_tokens, "vocab": len(tok)}
        if args.device == "cuda" and args.dtype == "bf16":
            model = model.to(torch.bfloat16)
        if args.device == "cuda" and args.dtype == "fp32":  # true fp32, for the equality check
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        if args.device == "cuda":
            entry["inference_dtype"] = args.dtype
        entry["inference"] = bench_inference(model, proc, scenes, args, args.device)
        if args.train_steps:
            model = model.float()
            entry["training"] = bench_training(model, proc, scenes, args, args.device)
        result["configs"][size] = entry
        print(json.dumps({size: entry}, indent=1), flush=True)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out or Path(__file__).parent / "results" / f"predictor_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
