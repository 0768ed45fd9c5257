"""Peak memory of parsing one large COCO instances JSON: the ingest adapter (two streaming passes,
annotations spilled to SQLite) against ``json.load`` of the file (what the adapter did before).

Writes a COCO-style file of ``--images`` images with ``--per-image`` polygon annotations each, then
parses it in fresh subprocesses and reports each one's peak RSS above a process that only imported
the same modules.

    python bench/coco_json_memory.py --images 20000 --out bench/results/coco_json_memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RUN = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from lakehouse.sources.coco import CocoJSON
path, how = {path!r}, {how!r}
t = time.perf_counter()
n = labels = 0
if how == "adapter":
    for r in CocoJSON().parse(path, {kind_root!r}):
        n += 1
        labels += len(r["labels"])
elif how == "json.load":
    doc = json.load(open(path))
    per = {{}}
    for a in doc["annotations"]:
        per.setdefault(a["image_id"], []).append(a)
    n, labels = len(doc["images"]), sum(len(v) for v in per.values())
# VmHWM, not ru_maxrss: the latter keeps the forking parent's size across exec
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(json.dumps({{"rows": n, "labels": labels, "seconds": round(time.perf_counter() - t, 2),
                  "peak_rss_mib": hwm // 1024}}))
"""


def write_coco(path: Path, images: int, per_image: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    anns = []
    for i in range(images):
        for _ in range(per_image):
            poly = [round(rng.uniform(0, 640), 2) for _ in range(2 * rng.randint(6, 20))]
            anns.append({"id": len(anns), "image_id": i, "category_id": rng.randint(1, 80), "iscrowd": 0,
                         "bbox": [round(rng.uniform(0, 500), 2), round(rng.uniform(0, 400), 2), 33.5, 44.25],
                         "area": 1200.5, "segmentation": [poly]})
    doc = {"info": {"year": 2017},
           "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(images)],
           "annotations": anns, "categories": [{"id": c, "name": f"cat{c}"} for c in range(1, 81)]}
    path.write_text(json.dumps(doc))


def measure(path: Path, how: str) -> dict:
    code = _RUN.format(root=str(ROOT), path=str(path), how=how, kind_root=str(path.parents[2]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--per-image", type=int, default=12)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "coco" / "big" / "annotations" / "instances.json"
        write_coco(path, a.images, a.per_image)
        res = {"file_mib": round(path.stat().st_size / 2**20, 1), "images": a.images,
               "annotations": a.images * a.per_image}
        base = measure(path, "imports only")["peak_rss_mib"]
        for how in ("adapter", "json.load"):
            m = measure(path, how)
            res[how] = {**m, "above_imports_mib": m["peak_rss_mib"] - base}
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
