"""Scale: does every stage cost the same per image as the data grows?  (issue 10)

The synthetic world lands in chunks of ``--chunk`` scenes (each chunk its own source folder in all
five formats, as data keeps arriving), and the streaming ingest runs after each chunk, so every
micro-batch is one chunk and bronze grows by a chunk per batch: the batch times, in order, show
whether a batch gets slower as the tables grow.  At each point (``--points``, cumulative images) it
also runs round 1 over everything ingested so far with a cheap specialist set, builds the training
examples from it, and reads their train split once through Petastorm, timing each stage.

    .venv/bin/python bench/scale.py --quick                      # 500 / 1,000 / 2,000 images
    .venv/bin/python bench/scale.py                              # 2,500 / 5,000 / 10,000 / 20,000
    .venv/bin/python bench/scale.py --quick --stages ingest      # micro-batch growth only
    .venv/bin/python bench/scale.py --quick --realistic          # 640x480 JPEGs of ~100-200 KB

Writes ``bench/results/scale[_realistic].json`` and a plot (``.png``) of per-image cost per stage
against data size and of micro-batch time against batch index.  Images/s are per core: this
machine's rate divided by its cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("ingest", "round", "examples", "reader")


def land_chunk(settings, index: int, n: int, realistic: bool) -> dict:
    """One chunk of the synthetic world under its own source name; its truth is appended to the
    world's ground truth (the round's audit reads it)."""
    from lakehouse.synthetic import write_world

    tmp_truth = settings.home / "truth-chunks" / f"{index:05d}"
    expected = write_world(settings.landing, tmp_truth, n_images=n, seed=1000 + index, bad_inputs=False,
                           source_name=f"chunk-{index:05d}", scale=2 if realistic else 1,
                           noise=12.0 if realistic else 0.0)
    settings.synthetic_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.synthetic_dir / "ground_truth.jsonl", "a") as out:
        out.write((tmp_truth / "ground_truth.jsonl").read_text())
    return expected


def plain_loop_rate(settings, index: int) -> float:
    """Images/s of one process doing the ingest's parse, fetch, validate and hash over one chunk's files,
    without Spark or Delta: what a core can do, to compare the ingest's rate per core with."""
    import fnmatch

    from lakehouse.fetch import FetchPolicy
    from lakehouse.ingest import resolve_row
    from lakehouse.sources import ADAPTERS

    policy, n, t = FetchPolicy.from_settings(settings), 0, time.perf_counter()
    for kind, adapter in ADAPTERS.items():
        root = settings.landing / kind
        for dirpath, _, files in os.walk(root / f"chunk-{index:05d}"):
            for fn in files:
                if fnmatch.fnmatch(fn, adapter.glob):
                    for row in adapter.parse(str(Path(dirpath) / fn), str(root)):
                        n += resolve_row(row, settings.max_image_pixels, policy)["reason"] is None
    return round(n / (time.perf_counter() - t), 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", default="2500,5000,10000,20000", help="cumulative image counts to measure at")
    p.add_argument("--quick", action="store_true", help="points 500,1000,2000")
    p.add_argument("--chunk", type=int, default=None, help="scenes landed per micro-batch (default: smallest point / 5)")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--realistic", action="store_true", help="640x480-ish JPEGs of ~100-200 KB instead of ~5 KB")
    p.add_argument("--specialists", default='[{"type": "contours"}]', help="round 1's specialist set (JSON)")
    p.add_argument("--home", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting over get_spark's (repeatable), to compare configurations")
    args = p.parse_args()
    points = [500, 1000, 2000] if args.quick else [int(x) for x in args.points.split(",")]
    stages = args.stages.split(",")
    chunk = args.chunk or max(50, points[0] // 5)
    from lakehouse.config import load_settings
    from lakehouse.ingest import run_ingest, totals
    from lakehouse.spark import get_spark

    home = Path(args.home or tempfile.mkdtemp(prefix="fld-scale-"))
    s = load_settings(home=home, max_files_per_trigger=10 * chunk)
    spark = get_spark(s, "fld-bench-scale", conf=dict(kv.split("=", 1) for kv in args.spark_conf))
    cores = os.cpu_count() or 1
    res = {"machine": f"{platform.machine()}, {cores} cores, {platform.python_version()}, Spark {s.spark_master}",
           "realistic": args.realistic, "chunk": chunk, "points": points, "stages": stages,
           "batches": [], "at": []}
    landed, index, t_all = 0, 0, time.time()
    for point in points:
        while landed < point:
            n = min(chunk, point - landed)
            t = time.perf_counter()
            land_chunk(s, index, n, args.realistic)
            gen_s = time.perf_counter() - t
            if "ingest" in stages:
                r = run_ingest(spark, s, log=None)
                for b in r.batch_stats:
                    res["batches"].append({"chunk": index, "images_before": landed, "scenes": n, "generate_s": round(gen_s, 2),
                                           "query_s": round(r.seconds, 2), **b})
                    print(f"[scale] batch {len(res['batches'])}: {b['inputs']} inputs, {b['new']} new, "
                          f"{b['seconds']:.2f} s in the batch ({r.seconds:.1f} s with the query's start), "
                          f"{landed + n} images landed", flush=True)
            landed += n
            index += 1
        at = {"images": landed}
        if "ingest" in stages:
            t = totals(spark, s)
            at["bronze_images"] = t["bronze_images"]
            recent = [b for b in res["batches"] if b["images_before"] >= landed - 5 * chunk]
            at["ingest_images_per_s_per_core"] = round(sum(b["new"] for b in recent) / sum(b["seconds"] for b in recent) / cores, 2)
            # the batch's own seconds time its fetch stage; the whole run (both queries' start, landing, every
            # Delta commit) is what a user waits for
            runs = {b["chunk"]: (b["query_s"], 0) for b in recent}
            for b in recent:
                runs[b["chunk"]] = (b["query_s"], runs[b["chunk"]][1] + b["new"])
            at["ingest_run_images_per_s_per_core"] = round(sum(v[1] for v in runs.values()) / sum(v[0] for v in runs.values()) / cores, 2)
            at["ingest_inputs_per_s_per_core"] = round(sum(b["inputs"] for b in recent) / sum(b["seconds"] for b in recent) / cores, 2)
            # the loop counts every input it validates (duplicates too), so the like-for-like ratio is on inputs
            at["plain_loop_images_per_s"] = plain_loop_rate(s, index - 1)
            at["ingest_inputs_per_core_over_plain"] = round(at["ingest_inputs_per_s_per_core"] / at["plain_loop_images_per_s"], 3)
            at["ingest_per_core_over_plain"] = round(at["ingest_images_per_s_per_core"] / at["plain_loop_images_per_s"], 3)
            at["ingest_run_per_core_over_plain"] = round(at["ingest_run_images_per_s_per_core"] / at["plain_loop_images_per_s"], 3)
        if "round" in stages:
            at.update(_round(spark, s, args.specialists, landed, cores))
        if "examples" in stages:
            at.update(_examples(spark, s, landed, cores))
        if "reader" in stages:
            at.update(_reader(spark, s, cores))
        res["at"].append(at)
        print(f"[scale] at {landed} images: {json.dumps(at)}", flush=True)
    res["wall_s"] = round(time.time() - t_all, 1)
    out = Path(args.out or Path(__file__).parent / "results" / ("scale_realistic" if args.realistic else "scale"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    _plot(res, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in res.items() if k != "batches"}, indent=2))
    if not args.home:
        shutil.rmtree(home, ignore_errors=True)


def _round(spark, s, specialists: str, images: int, cores: int) -> dict:
    from lakehouse.rounds import RoundConfig, run_round
    from quality.audit import AuditConfig
    from quality.gate import GateConfig
    from lakehouse.tables import read

    # each point re-runs round 1 over all of bronze (a round is over the whole dataset); the audit
    # gate's regression margin is opened up: this bench measures cost, not whether quality moved
    cfg = RoundConfig(round=1, specialists=json.loads(specialists),
                      gate=GateConfig(audit=AuditConfig(max_f1_drop=1.0)))
    t = time.perf_counter()
    run_round(spark, s, cfg, log=lambda *a: None)
    dt = time.perf_counter() - t
    gold = read(spark, s.tables, "gold_fld").filter("round = 1").count()
    return {"round_s": round(dt, 1), "round_images_per_s_per_core": round(images / dt / cores, 2), "gold_rows": gold}


def _examples(spark, s, images: int, cores: int) -> dict:
    from lakehouse.examples import build_training_examples, example_count, write_training_examples
    from lakehouse.tables import read

    root = s.tables
    t = time.perf_counter()
    version = write_training_examples(spark, root, build_training_examples(spark, root, round_=1), {"fld_round": 1})
    dt = time.perf_counter() - t
    table = read(spark, root, "training_examples", version=version)
    size = spark.sql(f"DESCRIBE DETAIL {root.ident('training_examples')}").collect()[0]["sizeInBytes"]
    return {"examples_s": round(dt, 1), "examples": example_count(table), "examples_table_rows": table.count(),
            "examples_table_mb": round(size / 2 ** 20, 1),
            "examples_images_per_s_per_core": round(images / dt / cores, 2)}


def _reader(spark, s, cores: int) -> dict:
    from florence2.recipe import check_count
    from lakehouse.reader import delta_slice, example_batches, image_decoder, iterate_rows, make_reader
    from lakehouse.tables import current_version

    root = s.tables
    sl = delta_slice(spark, root, current_version(spark, root, "training_examples"), "train")
    t = time.perf_counter()
    decode = image_decoder(128, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with make_reader(sl, pool="process", workers=cores) as reader:
        n = sum(len(exs) for _, exs in example_batches(iterate_rows(reader), 32, decode, cores))
    dt = time.perf_counter() - t
    check_count(n, sl.rows, "scale reader")
    return {"reader_s": round(dt, 1), "reader_rows_per_s_per_core": round(n / dt / cores, 1),
            "reader_images_per_s_per_core": round(sl.images / dt / cores, 1)}


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [x["images"] for x in res["at"]]
    for key, label in (("ingest_images_per_s_per_core", "ingest"), ("round_images_per_s_per_core", "round 1"),
                       ("examples_images_per_s_per_core", "examples"), ("reader_rows_per_s_per_core", "reader (rows)")):
        ys = [x.get(key) for x in res["at"]]
        if all(y for y in ys):
            a.plot(xs, [1000 / y for y in ys], marker="o", label=label)
    a.set_xscale("log")
    a.set_xlabel("images in the tables")
    a.set_ylabel("ms per image per core")
    a.set_title("per-image cost by stage")
    a.legend()
    if res["batches"]:
        b.plot(range(1, len(res["batches"]) + 1), [x["seconds"] for x in res["batches"]], marker=".")
        b.set_ylim(bottom=0)
    b.set_xlabel("micro-batch (one chunk each)")
    b.set_ylabel("seconds in the batch")
    b.set_title(f"ingest micro-batches of {res['chunk']} scenes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
