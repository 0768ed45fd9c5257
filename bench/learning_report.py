"""Learning report: train the tiny model on the synthetic world for a fixed CPU budget,
then evaluate it on the validation split next to trivial baselines (the most frequent
caption; a whole-image box / polygon; no OCR).

    .venv/bin/python bench/learning_report.py --images 200 --minutes 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from florence2.tasks import TASKS  # noqa: E402
from jobs import evaluate, generate, ingest, refine_round, train  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--home", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "learning_report"))
    args = p.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="fld-learn-")
    common = [f"--home={home}"]
    t0 = time.time()
    generate.main(common + [f"--images={args.images}"])
    ingest.main(common)
    refine_round.main(common + ["--round=1"])
    # concentrate the small CPU budget on the tasks the report scores
    mixture = {t: 0.0 for t in TASKS} | {"<OD>": 2.0, "<CAPTION>": 1.0, "<DETAILED_CAPTION>": 1.0,
                                         "<CAPTION_TO_PHRASE_GROUNDING>": 2.0, "<OCR_WITH_REGION>": 2.0, "<OCR>": 1.0}
    tr = train.main(common + ["--run-name=learning-report", f"--mixture={json.dumps(mixture)}", f"max_minutes={args.minutes}", "max_steps=1000000",
                              "epochs=1000", "batch_size=16", "checkpoint_every=500", "log_every=100"])
    ev = evaluate.main(common + [f"--examples-version={tr['examples_version']}", "--model", tr["model_dir"],
                                 "--limit=400", "--synthetic-referring"])
    ablation = _ablation(home, tr)
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only", "images": args.images,
           "train_minutes_budget": args.minutes, "training": tr["result"], "evaluation": ev["val"],
           "image_ablation": ablation, "wall_s": round(time.time() - t0, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    m, b = ev["val"]["model"], ev["val"]["baseline"]
    lines = ["| metric | tiny model | trivial baseline |", "|---|---|---|"]
    lines += [f"| {k} | {m[k]:.4f} | {b.get(k, float('nan')):.4f} |" for k in sorted(m)]
    lines += ["", "Image ablation (validation loss with own vs shuffled images; gap > 0 means the model looks):", "",
              "| task | own images | shuffled | gap |", "|---|---|---|---|"]
    lines += [f"| {t} | {a['loss_true_images']:.4f} | {a['loss_shuffled_images']:.4f} | {a['gap']:.4f} |"
              for t, a in sorted(ablation.items())]
    out.with_suffix(".md").write_text(
        f"# Learning report\n\n{args.images} synthetic images, tiny model, {tr['result']['steps']} steps "
        f"({tr['result']['seconds'] / 60:.1f} min, {tr['result']['examples_per_s']:.1f} examples/s) on "
        f"{res['machine']}; validation examples per task: {ev['val']['examples']}\n\n" + "\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


def _ablation(home, tr, per_task: int = 32) -> dict:
    from florence2 import modeling
    from florence2.evaluation import image_ablation
    from florence2.recipe import Config
    from lakehouse.config import load_settings
    from lakehouse.spark import get_spark
    from lakehouse.tables import TableRoot, read

    s = load_settings(home=home)
    rows = (read(get_spark(s), TableRoot(s.tables_root), "training_examples", version=tr["examples_version"])
            .filter("split = 'val'").select("task", "prompt", "target", "content").orderBy("example_id").collect())
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
