"""What one local image read costs: ``lakehouse.fetch.read_local`` (reads the size ``fstat`` gave, plus one
byte) against the read it replaced, ``read(max_bytes + 1)``, which has Python allocate the whole 64 MB cap
per call.  Both over the same ``--files`` noise JPEGs of ~100-200 KB, alternated in one run.

    .venv/bin/python bench/local_read.py --files 300 --passes 3

Writes bench/results/local_read.json.
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


def main():
    import numpy as np
    from PIL import Image

    from lakehouse.config import Settings
    from lakehouse.fetch import read_local

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=300)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "local_read.json"))
    args = p.parse_args()
    cap = Settings.fetch_max_bytes
    folder = Path(tempfile.mkdtemp(prefix="fld-bench-read-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.files):
        px = (rng.normal(128, 40, (480, 640, 3)).clip(0, 255)).astype("uint8")
        paths.append(str(folder / f"{i:05d}.jpg"))
        Image.fromarray(px).save(paths[-1], quality=60)

    def whole_cap(path):
        with open(path, "rb") as f:
            return f.read(cap + 1)

    ways = {"read(max_bytes + 1)": whole_cap, "read_local": lambda path: read_local(path, str(folder), cap)}
    us = {k: [] for k in ways}
    for _ in range(args.passes):
        for name, fn in ways.items():
            t = time.perf_counter()
            for path in paths:
                fn(path)
            us[name].append(round(1e6 * (time.perf_counter() - t) / len(paths), 1))
    sizes = [os.path.getsize(x) for x in paths]
    best = {k: min(v) for k, v in us.items()}
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "files": len(paths), "mean_kb": round(sum(sizes) / len(sizes) / 1024, 1), "cap_bytes": cap,
           "us_per_read": us, "ratio_read_local_over_cap": round(best["read_local"] / best["read(max_bytes + 1)"], 3)}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
