"""The OCR specialists on real-size images (issue 10, item 5): per-image time and word F1 on the real
FUNSD forms and ICDAR 2015 photos, one process, for each specialist setting; then the annotate stage
inside Spark (local[2], the round's default specialists) over all real images, images/s per core.

    .venv/bin/python bench/specialists_real.py --real-dev ../shared/data/real_dev

The real images are not shipped (non-commercial licences); point --real-dev at them.
Writes bench/results/specialists_real.json.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OCR_SETS = ("funsd_train", "icdar2015_train")


def _load(real_dev: Path, dataset: str, limit: int):
    from PIL import Image

    if dataset == "synthetic":  # the embedded world's rendered words, to check a change does not cost them
        from lakehouse.synthetic import generate

        return [(sc.scene_id, img, [{"text": w.text, "bbox": w.bbox} for w in sc.words])
                for sc, img in generate(limit * 3, seed=7)]

    doc = json.loads((real_dev / dataset / "annotations.json").read_text())
    out = []
    for im in doc["images"][:limit]:
        img = Image.open(real_dev / dataset / "images" / im["file_name"]).convert("RGB")
        truth = [w for w in im["words"] if not w.get("illegible") and w["text"] != "###"]
        out.append((im["file_name"], img, truth))
    return out


def _f1(tp: int, pred: int, true: int) -> dict:
    p, r = tp / max(pred, 1), tp / max(true, 1)
    return {"word_f1": round(2 * p * r / (p + r) if p + r else 0.0, 3), "precision": round(p, 3), "recall": round(r, 3)}


def measure(entry: dict, images, regions: dict | None = None) -> dict:
    """One specialist setting, one process: seconds per image (model load excluded) and pooled word F1;
    with ``regions`` (image name -> the contour specialist's boxes) also the F1 after the round's
    ``shapes`` filter step, which drops short words read off shapes."""
    from florence2.evaluation import word_f1
    from lakehouse.filters import FilterConfig, shape_word
    from lakehouse.specialists import from_config

    sp = from_config([dict(entry)])[0]
    sp.model()
    raw, kept = [0, 0, 0], [0, 0, 0]
    secs = 0.0
    for name, img, truth in images:
        t0 = time.perf_counter()
        words = [a for a in sp.annotate(img, name) if a["kind"] == "word"]
        secs += time.perf_counter() - t0
        for acc, ws in ((raw, words), (kept, [w for w in words if not shape_word(
                w["text"], w["bbox"], (regions or {}).get(name, []), FilterConfig())])):
            r = word_f1(ws, truth)
            acc[0], acc[1], acc[2] = acc[0] + r["tp"], acc[1] + r["predicted"], acc[2] + r["true"]
    out = {"s_per_image": round(secs / len(images), 3)} | _f1(*raw)
    if regions is not None:
        out["after_shapes_filter"] = _f1(*kept)
    return out


def contour_boxes(images) -> dict:
    from lakehouse.specialists import from_config

    sp = from_config([{"type": "contours", "captions": False}])[0]
    return {name: [a["bbox"] for a in sp.annotate(img, name)] for name, img, _ in images}


def tesseract_batches(real_dev: Path, batch: int = 8) -> dict:
    """Tesseract over every real image, one process per image vs one per batch (a list file): seconds and
    whether the words are the same."""
    from lakehouse.images import decode_rgb
    from lakehouse.specialists import from_config

    sp = from_config([{"type": "tesseract"}])[0]
    files = [f for ds in ("coco_train2017_det_caption", *OCR_SETS) for f in sorted((real_dev / ds / "images").iterdir())]
    images = [decode_rgb(f.read_bytes()) for f in files]
    t0 = time.perf_counter()
    one = [sp.annotate(im, f.name) for im, f in zip(images, files)]
    t1 = time.perf_counter()
    many = [w for k in range(0, len(images), batch)
            for w in sp.annotate_batch(images[k:k + batch], [f.name for f in files[k:k + batch]])]
    t2 = time.perf_counter()
    return {"images": len(images), "batch": batch, "one_by_one_s": round(t1 - t0, 1), "batched_s": round(t2 - t1, 1),
            "same_words": sum(a == b for a, b in zip(one, many)), "words": sum(map(len, one))}


def spark_stage(real_dev: Path, specialists: list[dict], repeat: int) -> dict:
    """The round's annotate stage as Spark runs it: every real image (COCO, FUNSD, ICDAR) ``repeat`` times."""
    from lakehouse.config import load_settings
    from lakehouse.images import inspect_image
    from lakehouse.specialists import from_config, run_specialists
    from lakehouse.spark import get_spark

    rows = []
    for ds in ("coco_train2017_det_caption", *OCR_SETS):
        for f in sorted((real_dev / ds / "images").iterdir()):
            b = f.read_bytes()
            w, h = inspect_image(b, 10**8)[1:3]
            rows += [(f"{ds}/{f.name}#{k}", str(f), w, h) for k in range(repeat)]
    s = load_settings(home=tempfile.mkdtemp(prefix="fld-spec-"))
    spark = get_spark(s, "bench-specialists")
    df = spark.createDataFrame(rows, "image_id string, content_path string, width int, height int").repartition(
        s.shuffle_partitions * 4).cache()
    df.count()
    cores = os.cpu_count() or 1  # local[N] on this machine: N = its cores
    t0 = time.perf_counter()
    out = run_specialists(df, from_config(specialists), 1).groupBy("annotator").count().collect()
    secs = time.perf_counter() - t0
    return {"images": len(rows), "cores": cores, "seconds": round(secs, 1),
            "images_per_s_per_core": round(len(rows) / secs / cores, 3),
            "rows": {r["annotator"]: r["count"] for r in out}, "specialists": specialists}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real-dev", default=str(ROOT.parent / "shared" / "data" / "real_dev"))
    p.add_argument("--limit", type=int, default=20, help="images per dataset for the per-setting table")
    p.add_argument("--repeat", type=int, default=1, help="copies of each real image in the Spark stage")
    p.add_argument("--settings", default="before,padded,unpadded,after", help="which specialist settings to compare")
    p.add_argument("--entry", action="append", default=[], help="extra specialist setting as JSON (table only)")
    p.add_argument("--skip-spark", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "specialists_real.json"))
    args = p.parse_args()
    real_dev = Path(args.real_dev)
    from lakehouse.rounds import DEFAULT_SPECIALISTS

    # "before": each engine as it ran up to issue 10; "padded": one thread each, with RapidOCR's recogniser
    # padding every line to >= 320 px in batches of 6 (the engine's own rule); "unpadded": each line alone at
    # its own width (stop 27's defaults); all three on ONNX Runtime; "after": the registry's defaults now
    engine = {"runtime": "onnxruntime", "rec_width_step": 0}
    settings = {
        "before": [{"type": "tesseract", "threads": 0},
                   {"type": "rapidocr", "threads": 0, "rec_min_width": 320, "rec_batch": 6, **engine}],
        "padded": [{"type": "tesseract"}, {"type": "rapidocr", "rec_min_width": 320, "rec_batch": 6, **engine}],
        "unpadded": [{"type": "tesseract"}, {"type": "rapidocr", **engine}],
        "after": [dict(e) for e in DEFAULT_SPECIALISTS if e["type"] != "contours"],
    }
    settings["extra"] = [json.loads(e) for e in args.entry]
    names = args.settings.split(",") + (["extra"] if args.entry else [])
    res = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}", "per_setting": {},
           "spark": {}}
    data = {ds: _load(real_dev, ds, args.limit) for ds in (*OCR_SETS, "synthetic")}
    regions = {ds: contour_boxes(images) for ds, images in data.items()}
    for name in names:
        for entry in settings[name]:
            for ds, images in data.items():
                m = measure(entry, images, regions[ds])
                key = f"{name} {json.dumps(entry)} {ds}"
                res["per_setting"][key] = m
                print(key, m, flush=True)
    res["tesseract_batches"] = tesseract_batches(real_dev)
    print("tesseract batches", res["tesseract_batches"], flush=True)
    if not args.skip_spark:
        for name in args.settings.split(","):
            spec = settings[name] + [{"type": "contours"}]
            res["spark"][name] = spark_stage(real_dev, spec, args.repeat)
            print(name, res["spark"][name], flush=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
