"""Learning report: train the tiny model on the synthetic world for a fixed CPU budget,
then evaluate it on the validation split next to trivial baselines (the most frequent
caption; a whole-image box / polygon; no OCR).

    .venv/bin/python bench/learning_report.py --images 200 --minutes 10

``--direct`` skips the lakehouse (no Spark, Delta or specialists: what a GPU box without
Java can run): training examples come straight from the synthetic truth of ``--images``
scenes, validation from other scenes, and the same recipe and the same scoring
(``florence2.evaluation.evaluate_examples``) run on them, with any ``--size``:

    python3 bench/learning_report.py --direct --size small --images 3000 --minutes 6 --batch 64

``--curve STEPS`` (with ``--direct``) keeps a checkpoint every STEPS steps and scores each the same way
afterwards: the learning curve, metric against training minutes, of one run (one schedule).

``--model DIR`` trains nothing and scores a model trained elsewhere (a flywheel round's) the same way.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from florence2.recipe import parse_first  # noqa: E402
from lakehouse.training import LEARNING_MIXTURE  # noqa: E402

MIXTURE = dict(LEARNING_MIXTURE)  # --weight changes it
VAL_SEED = 42  # the validation scenes: other scenes than any training world's (seeds 0 and 41)
# scored whatever the mixture: referring segmentation (RES mIoU) and open-vocabulary detection (REC accuracy)
SCORED = ["<REFERRING_EXPRESSION_SEGMENTATION>", "<OPEN_VOCABULARY_DETECTION>"]


def val_tasks(mixture: dict, extra=()) -> list[str]:
    return list(dict.fromkeys([t for t, w in mixture.items() if w > 0] + list(extra) + SCORED))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--home", default=None)
    p.add_argument("--out", default=None, help="default: bench/results/learning_report[_direct_SIZE_DEVICE]")
    p.add_argument("--direct", action="store_true", help="no lakehouse: examples from the synthetic truth")
    p.add_argument("--size", default="tiny", help="model preset (--direct)")
    p.add_argument("--batch", type=int, default=16, help="batch size (--direct)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (--direct)")
    p.add_argument("--val-images", type=int, default=150, help="validation scenes (--direct)")
    p.add_argument("--set", nargs="*", action="extend", default=[], help="more recipe overrides, key=value (--direct)")
    p.add_argument("--score", default=None, help="score the predictions a --direct run saved where the scoring "
                                                 "tools (Java, pycocotools) were missing, e.g. on a GPU box")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="train nothing: score this trained model directory (e.g. FLD_HOME/runs/flywheel-round1/model) "
                        "on fresh scenes, the relabeller's <REGION_TO_CATEGORY> included")
    p.add_argument("--checkpoint", default=None, metavar="STATE_PT",
                   help="with --model: that run's checkpoint (RUN/checkpoints/step-N/state.pt) instead of its final "
                        "weights, e.g. the end of a curriculum's first phase")
    p.add_argument("--weight", nargs="*", default=[], metavar="TASK=N",
                   help="mixture weights over the default, as the lakehouse's (2: each example twice; 0.5: about half), e.g. '<OD>=4' (--direct)")
    p.add_argument("--first", default=None, metavar="TASK[,TASK]=MINUTES",
                   help="curriculum (--direct): train on these tasks' examples alone for MINUTES, then on the whole "
                        "mixture from that model for the rest of --minutes (same tokenizer, fresh optimizer)")
    p.add_argument("--one-schedule", action="store_true",
                   help="with --first: one warm-up and one decay over all of --minutes; the mixture phase resumes "
                        "the first phase's checkpoint (its optimizer, step and clock) instead of starting afresh")
    p.add_argument("--curve", type=int, default=0, metavar="STEPS",
                   help="(--direct) a checkpoint every STEPS steps, each scored afterwards: the learning curve")
    args = p.parse_args()
    if args.curve and not args.direct:
        raise SystemExit("--curve needs --direct: it scores the checkpoints of the run the report trains")
    if args.first:
        args.first = parse_first(args.first, args.minutes, MIXTURE)
    if args.one_schedule and not args.first:
        raise SystemExit("--one-schedule needs --first: it joins the curriculum's two phases into one schedule")
    for w in args.weight:
        task, _, n = w.partition("=")
        if task not in MIXTURE or not n.replace(".", "", 1).isdigit():
            raise SystemExit(f"--weight {w!r}: expected TASK=N (N >= 0, 0.5 keeps about half) with TASK one of "
                             f"{', '.join(MIXTURE)}")
        MIXTURE[task] = float(n)
    if args.score:
        return score_saved(Path(args.score))
    if args.model:
        return probe(args)
    if args.direct:
        return direct(args)
    from lakehouse.evaluation import evaluate
    from lakehouse.training import run_training
    from world import budget_config, world_at_round_one

    args.out = args.out or str(Path(__file__).parent / "results" / "learning_report")
    home = args.home or tempfile.mkdtemp(prefix="fld-learn-")
    t0 = time.time()
    s, _ = world_at_round_one(home, args.images, "fld-learning-report")
    tr = run_training(s, budget_config(args.minutes), run_name="learning-report", mixture=MIXTURE)
    ev = evaluate(s, tr["model_dir"], tr["examples_version"], limit=400, synthetic_referring=True)
    ablation = _ablation(home, tr)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only", "images": args.images,
           "train_minutes_budget": args.minutes, "training": tr["result"], "evaluation": ev["val"],
           "image_ablation": ablation, "wall_s": round(time.time() - t0, 1)}
    _write(Path(args.out), res, f"{args.images} synthetic images, tiny model, {tr['result']['steps']} steps "
                                f"({tr['result']['seconds'] / 60:.1f} min, {tr['result']['examples_per_s']:.1f} examples/s) on "
                                f"{res['machine']}; validation examples per task: {ev['val']['examples']}")


def direct(args):
    """The report without the lakehouse: same mixture, recipe and scoring, truth as the training set."""
    import torch

    from florence2 import modeling, recipe
    from florence2.evaluation import evaluate_examples  # the scoring tools themselves load lazily
    from lakehouse.examples import mixture_copies
    from lakehouse.synthetic import synthetic_rows, write_recipe_data

    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.home or tempfile.mkdtemp(prefix="fld-learn-direct-"))
    tasks = [t for t, w in MIXTURE.items() if w > 0]
    rows = []
    for r in synthetic_rows(args.images, 41, tasks):  # the lakehouse's weighting: 2 is each example twice
        rows += [r | {"example_id": f"{r['example_id']}-{k}"}
                 for k in range(mixture_copies(r["example_id"], MIXTURE[r["task"]]))]
    data = write_recipe_data(rows, work / "data")
    val = synthetic_rows(args.val_images, VAL_SEED, val_tasks(MIXTURE))
    overrides = [f"model_size={args.size}", "source=files", f"max_minutes={args.minutes}", "max_steps=1000000",
                 "epochs=1000000", f"batch_size={args.batch}", f"lr={args.lr}", f"checkpoint_every={args.curve}", "log_every=100",
                 f"output_dir={work / 'run'}"] + args.set
    phases = []
    if args.first:  # phase 1 on a subset, with the whole mixture's tokenizer so the model carries over
        first_tasks, first_min = args.first
        sub = [r for r in rows if r["task"] in first_tasks]
        first = write_recipe_data(sub, work / "data_first") | {"tokenizer": data["tokenizer"]}
        # one schedule: phase 1 stops early in the same run directory and phase 2 resumes it
        phase1 = ([f"stop_minutes={first_min}"] if args.one_schedule else
                  [f"max_minutes={first_min}", f"output_dir={work / 'run_first'}"])
        cfg1 = recipe.load_config(None, overrides + phase1)
        print(f"[learning] phase 1: {len(sub)} examples of {','.join(first_tasks)} for {first_min:g} min", flush=True)
        phases.append({"tasks": first_tasks, "minutes": first_min, "training": recipe.train(cfg1, first)})
        if not args.one_schedule:
            overrides += [f"max_minutes={args.minutes - first_min}", f"init_from={work / 'run_first' / 'model'}"]
    cfg = recipe.load_config(None, overrides)
    print(f"[learning] {len(rows)} training examples from {args.images} scenes, {device}, {overrides}", flush=True)
    tr = recipe.train(cfg, data)
    if phases:
        first_steps = phases[0]["training"]["steps"]
        own_steps = tr["steps"] - first_steps if args.one_schedule else tr["steps"]  # a resumed run counts on
        tr = tr | {"phases": phases + [{"tasks": tasks, "minutes": args.minutes - args.first[1],
                                        "training": dict(tr, steps=own_steps)}],
                   "steps": own_steps + first_steps, "seconds": tr["seconds"] + phases[0]["training"]["seconds"]}
    model, proc = modeling.load(work / "run" / "model")
    preds, ablation = _answers(model, proc, val, device, cfg.loc_sigma)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.machine()}, {os.cpu_count()} cores, CPU only"
    res = {"machine": name, "mode": "direct (synthetic truth, no lakehouse)", "size": args.size, "images": args.images,
           "val_images": args.val_images, "batch": args.batch, "lr": args.lr,
           "train_minutes_budget": args.minutes, "mixture": MIXTURE, "val_tasks": val_tasks(MIXTURE), "first": args.first,
           "one_schedule": args.one_schedule, "config": dataclasses.asdict(cfg), "training": tr,
           "image_ablation": ablation, "wall_s": round(time.time() - t0, 1),
           "predictions": [{"example_id": r["example_id"]} | o for r, o in zip(val, preds)]}
    out = Path(args.out or Path(__file__).parent / "results" / f"learning_report_direct_{args.size}_{device}")
    res |= diagnostics(val, preds, proc.image_size)
    try:
        res["evaluation"] = evaluate_examples(_Replay(val, preds), [{"image": r["content"], **r} for r in val])
        if args.curve:
            res["curve"] = _curve(work / "run" / "checkpoints", model, proc, val, device)
    except (ImportError, OSError) as e:  # no Java / pycocotools here: score the saved predictions elsewhere
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, default=str) + "\n")
        print(f"[learning] cannot score here ({type(e).__name__}: {e}); predictions saved: "
              f"bench/learning_report.py --score {out.with_suffix('.json')}", flush=True)
        return
    _write_direct(out, res)


def _answers(model, proc, val, device: str, loc_sigma: float):
    """(greedy outputs for ``val``, image ablation of the tasks that have one) of a trained model."""
    from florence2.evaluation import image_ablation
    from florence2.predictor import Predictor

    preds = Predictor(model, proc, device=device, batch_size=64, max_new_tokens=256).predict([_request(r) for r in val])
    ablation = {}
    for task in ("<OD>", "<CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>", "<REGION_TO_CATEGORY>", "<OCR_WITH_REGION>"):
        sel = [r for r in val if r["task"] == task][:32]
        if not sel:  # a mixture without this task
            continue
        ablation[task] = image_ablation(model.to("cpu"), proc, [r["content"] for r in sel], [r["prompt"] for r in sel],
                                        [r["target"] for r in sel], loc_sigma)
    return preds, ablation


CURVE = ("od_AP50", "cider", "grounding_r1", "rec_accuracy", "ocr_word_f1", "region_category_accuracy")


def _curve(ckpt_dir: Path, model, proc, val, device: str) -> list[dict]:
    """Each kept checkpoint of a run scored on ``val``: (step, training minutes, the report's metrics)."""
    import torch

    from florence2.evaluation import evaluate_examples
    from florence2.predictor import Predictor

    points = []
    for ck in sorted(ckpt_dir.glob("step-*"), key=lambda c: int(c.name.split("-")[1])):
        state = torch.load(ck / "state.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        preds = Predictor(model.to(device), proc, device=device, batch_size=64,
                          max_new_tokens=256).predict([_request(r) for r in val])
        m = evaluate_examples(_Replay(val, preds), [{"image": r["content"], **r} for r in val], baseline=False)["model"]
        points.append({"step": state["step"], "minutes": round(state["seconds"] / 60, 2)}
                      | {k: round(m[k], 4) for k in CURVE if k in m})
        print(f"[learning] curve {points[-1]}", flush=True)
    return points


def probe(args) -> None:
    """What a model trained elsewhere (a flywheel round's, ``FLD_HOME/runs/RUN/model``) knows: the report's
    scoring on fresh synthetic scenes (the validation seed), with ``<REGION_TO_CATEGORY>``, the task the
    relabelling specialist asks."""
    import torch

    from florence2 import modeling
    from florence2.evaluation import evaluate_examples
    from florence2.recipe import Config
    from lakehouse.synthetic import synthetic_rows

    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    val = synthetic_rows(args.val_images, VAL_SEED, val_tasks(MIXTURE, ["<REGION_TO_CATEGORY>"]))
    model, proc = modeling.load(args.model)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"])
    preds, ablation = _answers(model, proc, val, device, Config().loc_sigma)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {device}", "mode": "probe", "model": args.model,
           "checkpoint": args.checkpoint,
           "size": "probed",
           "val_images": args.val_images, "image_ablation": ablation, **diagnostics(val, preds, proc.image_size),
           "encoder_spread": encoder_spread(model, proc, val),
           "evaluation": evaluate_examples(_Replay(val, preds), [{"image": r["content"], **r} for r in val]),
           "wall_s": round(time.time() - t0, 1)}
    out = Path(args.out or Path(__file__).parent / "results" / "model_probe")
    _write(out, res, f"{args.model}{' at ' + args.checkpoint if args.checkpoint else ''} on {args.val_images} fresh synthetic scenes (validation seed {VAL_SEED}), {res['machine']}; "
                     f"examples per task: {res['evaluation']['examples']}")


def score_saved(path: Path) -> None:
    """Score a --direct run's saved predictions (the validation scenes are regenerated from their seed)."""
    from florence2.evaluation import evaluate_examples
    from lakehouse.synthetic import synthetic_rows

    res = json.loads(path.read_text())
    # runs before REC moved to open-vocabulary detection scored the mixture and referring segmentation
    tasks = res.get("val_tasks") or [t for t, w in res.get("mixture", MIXTURE).items() if w > 0] + SCORED[:1]
    val = synthetic_rows(res["val_images"], VAL_SEED, tasks)
    by_id = {p["example_id"]: p for p in res["predictions"]}
    if [r["example_id"] for r in val] != [p["example_id"] for p in res["predictions"]]:
        raise SystemExit(f"{path}: its predictions are not those of the regenerated validation scenes")
    res["evaluation"] = evaluate_examples(_Replay(val, [by_id[r["example_id"]] for r in val]),
                                          [{"image": r["content"], **r} for r in val])
    res |= diagnostics(val, [by_id[r["example_id"]] for r in val],
                       res.get("config", {}).get("image_size") or _side(res.get("size", "tiny")))
    _write_direct(path.with_suffix(""), res)


def encoder_spread(model, proc, val, per_task: int = 16) -> dict:
    """Per task, how much the text encoder's states differ across images, layer by layer (std across the
    batch, mean over positions and features; input embeddings first): a last layer near 0 is an encoder
    that has collapsed, and the decoder then sees neither the image nor the prompt."""
    import io

    import torch
    from PIL import Image

    from florence2 import recipe

    out = {}
    model.eval()
    for task in ("<OD>", "<OCR_WITH_REGION>"):
        sel = [r for r in val if r["task"] == task and r["target"]][:per_task]
        if len(sel) < 2:
            continue
        inputs, _ = recipe.prepare_batch(proc, [Image.open(io.BytesIO(r["content"])).convert("RGB") for r in sel],
                                         [r["prompt"] for r in sel], [r["target"] for r in sel], recipe.Config(),
                                         model.config, None, "cpu")
        with torch.no_grad():
            hidden = model.to("cpu")(**inputs, output_hidden_states=True).encoder_hidden_states
        out[task] = [round(float(h.float().std(0).mean()), 4) for h in hidden]
    return out


def diagnostics(val, preds, side: int) -> dict:
    """What the metrics hide, per family (``side``: the model's input size in pixels)."""
    return {"od_boxes": od_boxes(val, preds), "grounding_phrases": grounding_phrases(val, preds),
            "rec_expressions": rec_expressions(val, preds), "ocr_words": ocr_words(val, preds, side)}


def _side(size: str) -> int:
    from florence2.modeling import SIZES

    return SIZES[size].image_size


def rec_expressions(val, preds) -> dict:
    """REC by the expression's kind ('the X', 'the colour X', longer): accuracy, answers that copy the
    expression, answers that hold a whole box."""
    from florence2.geometry import iou
    from florence2.parsing import post_process_generation

    task, kinds = "<OPEN_VOCABULARY_DETECTION>", {}
    for r, p in zip(val, preds):
        if r["task"] != task or not r.get("refers"):
            continue
        truth = post_process_generation(r["target"], task, (r["width"], r["height"]), as_int=False)[task]["bboxes"][0]
        a = p.get("answer") or {}
        boxes = a.get("bboxes") or []
        k = kinds.setdefault({2: "the X", 3: "the colour X"}.get(len(r["text_input"].split()), "longer"),
                             {"n": 0, "accuracy": 0, "copied": 0, "whole_box": 0})
        k["n"] += 1
        k["accuracy"] += bool(boxes) and iou(boxes[0], truth) >= 0.5
        k["copied"] += (a.get("bboxes_labels") or [])[:1] == [r["text_input"]]
        k["whole_box"] += bool(boxes)
    return {name: {"n": k["n"]} | {m: round(k[m] / k["n"], 3) for m in ("accuracy", "copied", "whole_box")}
            for name, k in kinds.items()}


def ocr_words(val, preds, side: int) -> dict:
    """What OCR word F1 hides: the words the <OCR_WITH_REGION> answers name (anywhere) against the true ones, and
    how tall the true words are at the model's input (pixels)."""
    import collections

    from florence2.parsing import post_process_generation

    task, said, right, true, heights = "<OCR_WITH_REGION>", collections.Counter(), 0, 0, []
    for r, p in zip(val, preds):
        if r["task"] != task:
            continue
        g = post_process_generation(r["target"], task, (r["width"], r["height"]), as_int=False)[task]
        words = (p.get("answer") or {}).get("labels") or []
        said.update(words)
        true += len(g["labels"])
        right += len(set(words) & set(g["labels"]))
        heights += [(max(q[1::2]) - min(q[1::2])) * side / r["height"] for q in g["quad_boxes"]]
    if not true:
        return {}
    heights.sort()
    return {"true_words": true, "kinds": len({w for r in val if r["task"] == task for w in
                                               post_process_generation(r["target"], task, (1, 1))[task]["labels"]}),
            "named_right": right, "most_named": said.most_common(3),
            "height_px": [round(heights[0], 1), round(heights[len(heights) // 2], 1), round(heights[-1], 1)]}


def od_boxes(val, preds) -> dict:
    """What AP hides while it is ~0: the greedy <OD> answers' boxes against the truth (``od_levers``' measures)."""
    from od_levers import answer_scores

    od = [(r, p) for r, p in zip(val, preds) if r["task"] == "<OD>"]
    return answer_scores([r for r, _ in od], [p["text"] for _, p in od])


def grounding_phrases(val, preds) -> dict:
    """What caps grounding R@1 (phrases are matched word for word): the share of the caption's phrases the
    answer copies exactly, and of those it names at least with the right last word (head noun)."""
    from florence2.parsing import post_process_generation

    task = "<CAPTION_TO_PHRASE_GROUNDING>"
    n = copied = head = 0
    for r, p in zip(val, preds):
        if r["task"] != task:
            continue
        said = (p.get("answer") or {}).get("labels") or []
        for phrase in dict.fromkeys(post_process_generation(r["target"], task, (r["width"], r["height"]))[task]["labels"]):
            n += 1
            copied += phrase in said
            head += any(s.split()[-1:] == phrase.split()[-1:] for s in said)
    return {"phrases": n, "copied": copied / n, "head_noun": head / n} if n else {}


def _request(r):
    from florence2.predictor import Request

    return Request(r["content"], r["task"], r["text_input"], None if r["region"] is None else tuple(r["region"]))


class _Replay:
    """A predictor that answers with outputs computed before (same requests, any order)."""

    def __init__(self, rows, outputs):
        self.answers = {self._key(_request(r)): o for r, o in zip(rows, outputs)}

    @staticmethod
    def _key(req):
        import hashlib

        return req.task, hashlib.sha1(bytes(req.image)).hexdigest(), req.text, req.region and tuple(req.region)

    def predict(self, requests):
        return [self.answers[self._key(q)] for q in requests]


def _write_direct(out: Path, res: dict) -> None:
    tr, ev = res["training"], res["evaluation"]
    _write(out, res, f"{res['images']} synthetic scenes (truth, no lakehouse), {res['size']} model, "
                     f"{tr['steps']} steps ({tr['seconds'] / 60:.1f} min, {tr['examples_per_s']:.1f} examples/s, "
                     f"batch {res['batch']}, lr {res['lr']:g}) on {res['machine']}; "
                     f"validation examples per task: {ev['examples']}; training mixture (examples per scene): "
                     f"{ {t: w for t, w in res.get('mixture', MIXTURE).items() if w} }"
                     + (f"; curriculum: {','.join(res['first'][0])} alone for the first {res['first'][1]:g} min"
                        + (", one schedule over both phases" if res.get("one_schedule") else "")
                        if res.get("first") else ""))


def _write(out: Path, res: dict, headline: str) -> None:
    m, b = res["evaluation"]["model"], res["evaluation"]["baseline"]
    lines = [f"| metric | {res.get('size', 'tiny')} model | trivial baseline |", "|---|---|---|"]
    lines += [f"| {k} | {m[k]:.4f} | {b.get(k, float('nan')):.4f} |" for k in sorted(m)]
    lines += ["", "Image ablation (validation loss with own vs shuffled images; gap > 0 means the model looks):", "",
              "| task | own images | shuffled | gap |", "|---|---|---|---|"]
    lines += [f"| {t} | {a['loss_true_images']:.4f} | {a['loss_shuffled_images']:.4f} | {a['gap']:.4f} |"
              for t, a in sorted(res["image_ablation"].items())]
    if res.get("encoder_spread"):
        lines += ["", "Text encoder states' spread across images, layer by layer (input embeddings first; ~0 at the "
                      "last layer: the encoder has collapsed): " + "; ".join(f"{t} {v}" for t, v in res["encoder_spread"].items())]
    if res.get("curve"):
        keys = [k for k in CURVE if k in res["curve"][0]]
        lines += ["", "Learning curve (the run's checkpoints, scored the same way):", "",
                  "| step | minutes | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        lines += [f"| {c['step']} | {c['minutes']:.1f} | " + " | ".join(f"{c[k]:.4f}" for k in keys) + " |"
                  for c in res["curve"]]
    if res.get("od_boxes"):
        lines += ["", "<OD> answers against the truth: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in res["od_boxes"].items())]
    if res.get("grounding_phrases"):
        g = res["grounding_phrases"]
        lines += ["", f"<CAPTION_TO_PHRASE_GROUNDING> answers: of {g['phrases']} phrases, {g['copied']:.3f} copied word "
                      f"for word (R@1 matches them so), {g['head_noun']:.3f} with the right last word"]
    if res.get("rec_expressions"):
        lines += ["", "REC (<OPEN_VOCABULARY_DETECTION> on referring expressions) by kind: " + "; ".join(
            f"{k}: n {v['n']}, accuracy {v['accuracy']:.3f}, expression copied {v['copied']:.3f}, whole box "
            f"{v['whole_box']:.3f}" for k, v in res["rec_expressions"].items())]
    if res.get("ocr_words"):
        o = res["ocr_words"]
        lines += ["", f"<OCR_WITH_REGION> answers: {o['named_right']} of {o['true_words']} true words ({o['kinds']} kinds) "
                      f"named anywhere in the answer; most named {o['most_named']}; true words' height at the model's "
                      f"input min / median / max {o['height_px']} px"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(f"# Learning report\n\n{headline}\n\n" + "\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text(), flush=True)


def _ablation(home, tr, per_task: int = 32) -> dict:
    from florence2 import modeling
    from florence2.evaluation import image_ablation
    from florence2.recipe import Config
    from lakehouse.config import load_settings
    from lakehouse.spark import get_spark
    from lakehouse.examples import example_rows
    from lakehouse.tables import read

    s = load_settings(home=home)
    rows = (example_rows(read(get_spark(s), s.tables, "training_examples", version=tr["examples_version"])
                         .filter("split = 'val'"), True)
            .select("task", "prompt", "target", "content").orderBy("example_id").collect())
    model, proc = modeling.load(tr["model_dir"])
    out = {}
    for task in sorted({r.task for r in rows}):
        sel = [r for r in rows if r.task == task][:per_task]
        if len(sel) >= 2:
            out[task] = image_ablation(model, proc, [r.content for r in sel], [r.prompt for r in sel],
                                       [r.target for r in sel], Config().loc_sigma)
    return out


if __name__ == "__main__":
    main()
