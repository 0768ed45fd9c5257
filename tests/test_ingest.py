"""Streaming ingest on a real local SparkSession with Delta."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.ingest import run_ingest, totals
from lakehouse.synthetic import SOURCE_KINDS, write_world
from lakehouse.tables import read

ROOT = Path(__file__).resolve().parents[1]


def _world(settings, n=20, **kw):
    return write_world(settings.landing, settings.synthetic_dir, n_images=n, seed=7, **kw)


def _accounting(spark, settings):
    t = totals(spark, settings)
    inputs = sum(v["inputs"] for v in t["per_source"].values())
    return t, inputs


def _assert_counts(spark, settings, expected):
    """Every input of the synthetic world counted once: bronze and quarantine as the world says."""
    t, inputs = _accounting(spark, settings)
    assert inputs == expected["inputs"]
    assert t["bronze_images"] == expected["distinct_images"]
    assert t["quarantine"] == expected["quarantined"]
    return t, inputs


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    from lakehouse.config import load_settings

    s = load_settings(home=tmp_path_factory.mktemp("ingest") / "fld_home", max_files_per_trigger=1000)
    expected = _world(s)
    res = run_ingest(spark, s, log=None)
    return s, expected, res


def test_every_input_accounted_for(spark, ingested):
    s, expected, res = ingested
    t, inputs = _accounting(spark, s)
    assert inputs == expected["inputs"]
    assert t["bronze_images"] == expected["distinct_images"]
    assert t["quarantine"] == expected["quarantined"]
    log = read(spark, s.tables, "ingest_log").collect()
    assert all(r.inputs == r.new_images + r.duplicates + r.quarantined for r in log)


def test_each_source_format_lands_with_its_labels(spark, ingested):
    s, expected, _ = ingested
    root = s.tables
    labels = read(spark, root, "bronze_labels")
    kinds = {(r.source_kind, r.kind) for r in labels.select("source_kind", "kind").distinct().collect()}
    assert kinds == {("imagefolder", "class"), ("coco", "box"), ("coco", "caption"), ("openimages", "box"),
                     ("cc", "caption"), ("laion", "caption")}
    assert {r.source_kind for r in read(spark, root, "bronze_images").select("source_kind").distinct().collect()} \
        == set(SOURCE_KINDS)
    truth = {json.loads(line)["image_id"]: json.loads(line) for line in open(s.synthetic_dir / "ground_truth.jsonl")}
    # Open Images boxes arrive normalised and must come out in pixels, matching ground truth.
    for r in labels.filter("source_kind = 'openimages'").collect():
        gt = [o["bbox"] for o in truth[r.image_id]["objects"]]
        assert min(max(abs(a - b) for a, b in zip(r.bbox, g)) for g in gt) < 1e-3
    for r in labels.filter("source_kind = 'coco' AND kind = 'box'").collect():
        obj = [o for o in truth[r.image_id]["objects"] if o["bbox"] == [round(v, 2) for v in r.bbox]]
        assert obj and r.text == obj[0]["category"] and r.polygons[0] == obj[0]["polygon"]
    classes = labels.filter("kind = 'class'").join(read(spark, root, "bronze_images"), "image_id").collect()
    assert all(r.text in r.uri for r in classes)


def test_rows_carry_metadata_and_name_their_stored_bytes(spark, ingested):
    import hashlib

    from lakehouse.images import stored_path

    s, _, _ = ingested
    rows = read(spark, s.tables, "bronze_images").collect()
    for r in rows:
        assert r.width > 0 and r.height > 0 and r.format in ("PNG", "JPEG") and r.uri and r.ingest_time
        assert r.original_id and r.source_name == "synthetic"
        assert r.content_path == stored_path(s.image_store_path, r.image_id)
        assert hashlib.sha256(Path(r.content_path).read_bytes()).hexdigest() == r.image_id
    # the store holds bronze's images and nothing else: no temporary file left, no rejected image kept
    stored = [p for p in Path(s.image_store_path).rglob("*") if p.is_file()]
    assert sorted(p.name for p in stored) == sorted(r.image_id for r in rows)


def test_tables_holding_image_bytes_are_written_uncompressed(spark, ingested):
    """Snappy gains nothing on JPEG/PNG bytes and its Parquet reader stalled on them (TableDef.holds_bytes):
    landing_manifest holds the inline bytes of LAION-style records; bronze holds none (the image store does)."""
    s, _, _ = ingested
    files = {t: [p.name for p in Path(s.tables.path(t)).rglob("*.parquet") if "_delta_log" not in p.parts]
             for t in ("bronze_images", "landing_manifest", "bronze_labels")}
    assert files["bronze_images"] and files["landing_manifest"] and files["bronze_labels"]
    assert not [f for f in files["landing_manifest"] if ".snappy." in f], files
    # tables without bytes keep the default
    assert all(".snappy." in f for t in ("bronze_images", "bronze_labels") for f in files[t])


def test_quarantine_rows_name_record_and_reason(spark, ingested):
    s, _, _ = ingested
    rows = read(spark, s.tables, "quarantine").collect()
    by = {r.reason: r for r in rows}
    assert by["empty_file"].uri.endswith("empty.png")
    assert "does-not-exist.jpg" in by["missing_file"].detail
    assert "GIF" in by["unsupported_format"].detail
    assert "8000x6000" in by["too_many_pixels"].detail
    assert all(r.original_id and r.detail for r in rows)


def test_rerun_and_cross_source_duplicates_add_no_rows(spark, ingested):
    s, expected, _ = ingested
    root = s.tables
    before = read(spark, root, "bronze_images").count()
    assert run_ingest(spark, s, log=None).batches == []            # nothing new landed
    # the same files landed again under another source name: all duplicates
    shutil.copytree(s.landing / "laion" / "synthetic", s.landing / "laion" / "mirror")
    res = run_ingest(spark, s, log=None)
    assert len(res.batches) == 1
    assert read(spark, root, "bronze_images").count() == before
    last = read(spark, root, "ingest_log").filter(F.col("batch_id") == res.batches[0]).collect()
    assert sum(r.new_images for r in last) == 0 and sum(r.duplicates for r in last) == sum(r.inputs for r in last) > 0


def test_time_travel(spark, ingested):
    s, expected, _ = ingested
    root = s.tables
    hist = spark.sql(f"DESCRIBE HISTORY {root.ident('bronze_images')}").orderBy("version").collect()
    merges = [h.version for h in hist if h.operation == "WRITE"]  # appends since issue 10 (were MERGEs)
    assert read(spark, root, "bronze_images", version=merges[0] - 1).count() == 0
    assert read(spark, root, "bronze_images", version=merges[0]).count() == expected["distinct_images"]


def test_independent_delta_reader_sees_same_rows(spark, ingested):
    deltalake = pytest.importorskip("deltalake")
    import pyarrow.parquet as pq

    s, _, _ = ingested
    root = s.tables
    for name, key in (("bronze_images", "image_id"), ("bronze_labels", "label_id"), ("quarantine", "quarantine_id")):
        dt = deltalake.DeltaTable(root.path(name))
        # deltalake replays the log independently of Spark; pyarrow reads the active files
        ids = [v for f in dt.file_uris() for v in pq.read_table(f.replace("file://", ""), columns=[key])[key].to_pylist()]
        spark_ids = [r[0] for r in read(spark, root, name).select(key).collect()]
        assert sorted(ids) == sorted(spark_ids) and len(ids) == len(set(ids))
        assert dt.version() == spark.sql(f"DESCRIBE HISTORY {root.ident(name)} LIMIT 1").collect()[0].version


def _ingest_cmd(s, *extra):
    return [sys.executable, "-m", "jobs.ingest", "--home", str(s.home), *extra]


def test_sigkill_mid_batch_then_restart_is_exact(spark, settings):
    expected = _world(settings, n=15)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_ingest_cmd(settings, "--max-files-per-trigger", "1"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = settings.checkpoints / "ingest"
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        offsets = {int(p.name) for p in (ckpt / "offsets").glob("[0-9]*")} if (ckpt / "offsets").exists() else set()
        commits = {int(p.name) for p in (ckpt / "commits").glob("[0-9]*")} if (ckpt / "commits").exists() else set()
        open_batches = offsets - commits
        if commits and open_batches:   # at least one batch done, the next one started
            time.sleep(1.0)             # let it get into its writes
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = max(open_batches)
            break
        time.sleep(0.2)
    proc.wait(30)
    assert killed_at is not None, "ingest finished before it could be killed; land more files"
    r = subprocess.run(_ingest_cmd(settings), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    t, inputs = _assert_counts(spark, settings, expected)
    root = settings.tables
    labels = read(spark, root, "bronze_labels")
    assert labels.count() == labels.select("label_id").distinct().count() == sum(v["labels"] for v in t["per_source"].values())
    assert "micro-batches" in r.stdout and "quarantined" in r.stdout


def test_a_new_checkpoint_over_existing_tables_adds_no_image_twice(spark, settings):
    """Deleting the checkpoints re-reads every landed file, and the new checkpoint numbers its batches
    from 0 again: its batch 0 must still see the images the old checkpoint's batch 0 wrote (rows are
    tagged with their writer, not only the query's name), so every image is a duplicate."""
    expected = _world(settings, n=12)
    run_ingest(spark, settings, log=None)
    before = read(spark, settings.tables, "bronze_labels").count()
    shutil.rmtree(settings.checkpoints)
    res = run_ingest(spark, settings, log=None)
    assert res.batches and sum(b["new"] for b in res.batch_stats) == 0, res.batch_stats
    bronze = read(spark, settings.tables, "bronze_images")
    assert bronze.count() == bronze.select("image_id").distinct().count() == expected["distinct_images"]
    assert read(spark, settings.tables, "bronze_labels").count() == before


def test_continuous_mode_picks_up_new_files(spark, settings):
    _world(settings, n=5, bad_inputs=False)
    later = settings.home / "later"
    write_world(later / "landing", later / "truth", n_images=5, seed=99, bad_inputs=False, source_name="late")
    commits = settings.checkpoints / "ingest" / "commits"
    landed = threading.Event()

    def land_after_first_batch():
        deadline = time.time() + 300
        while time.time() < deadline and not (commits.exists() and any(commits.glob("0"))):
            time.sleep(0.5)
        old = time.time() - 30 * 86400  # landed now, but with a month-old mtime (cp -p, rsync -t)
        for kind in SOURCE_KINDS:
            for f in (later / "landing" / kind / "late").rglob("*"):
                os.utime(f, (old, old))
            shutil.copytree(later / "landing" / kind / "late", settings.landing / kind / "late")
        landed.set()

    th = threading.Thread(target=land_after_first_batch)
    th.start()
    root = settings.tables
    res = run_ingest(spark, settings, mode="continuous", timeout_s=400, log=None,
                     until=lambda r: len(r.batches) >= 2 and read(spark, root, "bronze_images").count() == 10)
    th.join()
    assert len(res.batches) >= 2
    assert read(spark, root, "bronze_images").count() == 10


def test_remote_urls_are_fetched(spark, settings, tmp_path):
    write_world(tmp_path / "srv", tmp_path / "t", n_images=5, seed=3, bad_inputs=False)
    served = tmp_path / "srv" / "cc" / "synthetic"
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        dest = settings.landing / "cc" / "web"
        dest.mkdir(parents=True)
        lines = [line.split("\t") for line in (served / "train.tsv").read_text().splitlines()]
        (dest / "web.tsv").write_text("".join(f"{c}\thttp://127.0.0.1:{port}/{u}\n" for c, u in lines)
                                      + f"missing\thttp://127.0.0.1:{port}/images/nope.jpg\n")
        # remote fetching is a deliberate setting, and loopback must be allow-listed
        run_ingest(spark, settings.replace(fetch_remote=True, fetch_allow=f"127.0.0.1:{port}"), kinds=["cc"], log=None)
        t = totals(spark, settings)
        assert t["bronze_images"] == len(lines) and t["quarantine"] == {"fetch_failed": 1}
    finally:
        httpd.shutdown()


def test_real_coco_sample(spark, settings, real_dev):
    src = real_dev / "coco_train2017_det_caption"
    dest = settings.landing / "coco" / "coco_dev"
    shutil.copytree(src / "images", dest / "images")
    (dest / "annotations").mkdir()
    for f in ("instances_train2017.json", "captions_train2017.json"):
        shutil.copy(src / "annotations" / f, dest / "annotations" / f)
    run_ingest(spark, settings, kinds=["coco"], log=None)
    t = totals(spark, settings)
    assert t["bronze_images"] == 20 and t["quarantine"] == {}
    labels = read(spark, settings.tables, "bronze_labels")
    assert labels.filter("kind = 'box'").count() == 134
    assert labels.filter("kind = 'caption'").count() == 100
    assert labels.filter("kind = 'box' AND polygons IS NOT NULL").count() == 133   # one RLE crowd mask keeps its box


def test_file_names_with_hash_and_question_mark_keep_their_whole_path(tmp_path):
    """Spark's ``file:`` paths are not percent-encoded: ``#`` and ``?`` belong to the name (a URL
    parser used to cut them off as fragment and query, so such files could not be read)."""
    from lakehouse.sources.base import local_path

    f = tmp_path / "scene #7?v=2 100%.png"
    f.write_bytes(b"x")
    for uri in (f"file:{f}", f"file://{f}"):
        assert local_path(uri) == str(f) and open(local_path(uri), "rb").read() == b"x"
    assert local_path(str(f)) == str(f)


def test_each_batch_lists_its_own_files_from_the_source_log(spark, ingested):
    """Zero-byte files are found among the batch's own files (the file source's log), not by walking
    the landing area every batch (issue 10): over all batches the log names every landed file once."""
    import fnmatch

    from lakehouse.ingest import LANDING_QUERY, listed_files
    from lakehouse.sources import ADAPTERS

    s, _, _ = ingested
    ckpt = s.checkpoints / LANDING_QUERY
    batches = sorted(int(p.name) for p in (ckpt / "offsets").glob("[0-9]*"))  # every run of the query so far
    listed = [p for b in batches for p in listed_files(ckpt, b)]
    landed = {str(p) for kind, a in ADAPTERS.items() for p in (s.landing / kind).rglob("*")
              if p.is_file() and fnmatch.fnmatch(p.name, a.glob) and not p.name.startswith((".", "_"))}
    assert len(listed) == len(set(listed))
    assert {x.replace("file://", "").replace("file:", "") for x in listed} == landed
    assert any(os.path.getsize(p) == 0 for p in landed)  # the empty file is among them
    assert listed_files(ckpt, batches[-1] + 1) is None


def test_killed_at_each_stage_boundary_then_rerun_is_exact(spark, settings):
    """Issue 13's fault suite for ingest: the job kills itself (``FLD_CRASH_AT``) at each boundary of
    both queries in turn, each run getting further than the last; the final run must account for
    every input exactly once, with no duplicate row in any table."""
    from lakehouse.faults import CRASH_POINTS

    expected = _world(settings, n=12)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    points = [p for p in CRASH_POINTS if p.startswith(("landing:", "ingest:"))]
    assert len(points) == 3
    for point in points:
        r = subprocess.run(_ingest_cmd(settings), cwd=ROOT, env=dict(env, FLD_CRASH_AT=point),
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == -signal.SIGKILL and f"FLD_CRASH_AT={point}" in r.stdout, (point, r.stderr[-2000:])
    r = subprocess.run(_ingest_cmd(settings), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    t, inputs = _assert_counts(spark, settings, expected)
    root = settings.tables
    assert read(spark, root, "landing_manifest").count() == inputs  # each landed row once
    for name, key in (("bronze_images", "image_id"), ("bronze_labels", "label_id"), ("quarantine", "quarantine_id")):
        df = read(spark, root, name)
        assert df.count() == df.select(key).distinct().count(), name


@pytest.mark.slow
def test_a_million_row_manifest_ingests_in_bounded_batches_and_memory(spark, tmp_path):
    """Issue 13: one landed manifest of 10^6 rows becomes micro-batches of at most
    ``max_rows_per_trigger`` rows, every row is accounted for, and the whole job (driver, JVM, Python
    workers) stays under a ceiling set by its configuration, not by the manifest.  Before the
    landing_manifest stage the whole file was one micro-batch."""
    # 1 GiB driver heap + the JVM's off-heap and the Python driver and workers, counted as PSS: the workers
    # fork from one daemon and share pages, which a sum of RSS counts once per worker (it read 2.3 to 3.2 GiB)
    rows, per_batch, ceiling_mib = 1_000_000, 250_000, 3_072
    home = tmp_path / "fld_home"
    env = dict(os.environ, FLD_MAX_ROWS_PER_TRIGGER=str(per_batch), FLD_SPARK_DRIVER_MEMORY="1g")
    # 99 lines in 100 are malformed, so the test's time goes to rows moving through both queries
    # rather than to hashing the same 50 images 10^6 times (bench/big_manifest.py's default does that)
    r = subprocess.run([sys.executable, "bench/big_manifest.py", "--rows", str(rows), "--images", "50",
                        "--malformed", "0.99", "--home", str(home), "--out", str(tmp_path / "result.json")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "result.json").read_text())
    print({k: v for k, v in res.items() if k != "log"})
    assert res["all_accounted"] and res["inputs"] == rows and res["bronze_images"] == 50
    assert res["quarantine"] == {"malformed_record": rows * 99 // 100}
    assert res["fetch_batches"] == rows // per_batch and res["largest_batch_inputs"] == per_batch
    assert res["peak_pss_mib"] < ceiling_mib


@pytest.mark.slow
def test_camera_sized_images_outweighing_the_heap_ingest_in_one_batch(tmp_path):
    """480 distinct ~1.25 MB JPEGs (600 MB) in one micro-batch under a 1 GiB driver: Parquet buffered
    100 such images per page before its first size check and the write of bronze ran out of heap.
    No DataFrame of the batch holds bytes now (``_resolve`` keeps them in the image store); the inline
    bytes of landing_manifest still pass through Parquet pages bounded by size."""
    home, n = tmp_path / "fld_home", 480
    env = dict(os.environ, FLD_SPARK_DRIVER_MEMORY="1g")
    r = subprocess.run([sys.executable, "bench/big_manifest.py", "--rows", str(n), "--images", str(n),
                        "--malformed", "0", "--image-mb", "1.25", "--home", str(home),
                        "--out", str(tmp_path / "result.json")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["all_accounted"] and res["bronze_images"] == n and res["fetch_batches"] == 1
    landed = sum(p.stat().st_size for p in (home / "landing").rglob("*.jpg"))
    assert landed > 500 << 20, landed


def test_one_pass_stores_the_checked_bytes_and_decodes_a_stored_image_no_more(tmp_path, monkeypatch):
    """``_resolve`` reads each input once: a valid image is kept in the store under its hash, byte for
    byte; one whose pixels do not decode is quarantined (``truncated_image``) and not kept; an image the
    store holds is not decoded again (its pixels decoded when it was stored); a store that cannot be
    written is an error, not a quarantine reason."""
    import hashlib
    import io

    import pandas as pd
    from PIL import Image

    from lakehouse import ingest
    from lakehouse.fetch import FetchPolicy
    from lakehouse.images import stored_path

    buf = io.BytesIO()
    Image.effect_noise((64, 48), 40).save(buf, "PNG")   # noise: pixel data long enough to cut
    good = buf.getvalue()
    cut = good[: len(good) * 2 // 3]
    (tmp_path / "a.png").write_bytes(good)
    (tmp_path / "cut.png").write_bytes(cut)
    store = str(tmp_path / "store")

    def row(**kw):
        return {**{k: None for k in ingest.MANIFEST.fieldNames()}, "source_kind": "cc", "source_name": "s", **kw}

    frame = pd.DataFrame([row(original_id="1", uri=str(tmp_path / "a.png")), row(original_id="2", content=good),
                          row(original_id="3", uri=str(tmp_path / "cut.png"))])
    decoded = []
    real = ingest.check_pixels
    monkeypatch.setattr(ingest, "check_pixels", lambda data: (decoded.append(len(data)), real(data)))

    got = pd.concat(ingest._resolve(10**8, FetchPolicy(), store, iter([frame.copy()]))).to_dict("records")
    sha = hashlib.sha256(good).hexdigest()
    assert [r["image_id"] for r in got[:2]] == [sha, sha] and got[0]["content_path"] == stored_path(store, sha)
    assert Path(got[0]["content_path"]).read_bytes() == good
    assert got[2]["reason"] == "truncated_image" and got[2]["image_id"] is None
    assert sorted(p.name for p in Path(store).rglob("*") if p.is_file()) == [sha]   # the cut image is not kept
    assert decoded == [len(good), len(cut)]    # the second input of the same image found it stored

    decoded.clear()   # a replayed batch: the stored image is checked from its header only
    again = pd.concat(ingest._resolve(10**8, FetchPolicy(), store, iter([frame.copy()]))).to_dict("records")
    assert [(r["image_id"], r["reason"]) for r in again] == [(r["image_id"], r["reason"]) for r in got]
    assert decoded == [len(cut)]

    # a store that cannot be written fails the batch (Spark retries it); it is not the records' fault
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with pytest.raises(OSError):
        list(ingest._resolve(10**8, FetchPolicy(), str(blocked), iter([frame.copy()])))


def test_identical_manifest_rows_get_distinct_row_ids_that_a_recompute_repeats():
    """write_batch joins the chosen rows' bytes back by row id: two identical manifest rows must not
    share one (the image would be written twice), and a recomputed task must give the same ids."""
    from lakehouse.ingest import _row_id

    rows = [{"source_kind": "laion", "source_name": "s", "original_id": None, "uri": None}] * 2 + \
        [{"source_kind": "cc", "source_name": "s", "original_id": "a.tsv:1", "uri": "/d/x.jpg"}]
    first = [_row_id(r, {}) for r in rows]
    seen: dict = {}
    ids = [_row_id(r, seen) for r in rows]
    again: dict = {}
    assert len(set(ids)) == 3 and ids == [_row_id(r, again) for r in rows]
    assert first[0] == first[1] == ids[0]   # the occurrence count, not chance, tells them apart


def test_a_manifest_without_a_single_label_is_quarantined_not_a_crash(spark, settings):
    """Every row of this TSV is malformed, so no row carries a label: such a batch used to kill the
    Python worker (pyarrow 14 segfault) and fail the micro-batch on every restart."""
    src = settings.landing / "cc" / "broken"
    src.mkdir(parents=True)
    (src / "a.tsv").write_text("no tab here\nnor here\nonly a caption\t\n")
    run_ingest(spark, settings, log=None)
    t, inputs = _accounting(spark, settings)
    assert inputs == 3 and t["quarantine"] == {"malformed_record": 3} and t["bronze_images"] == 0


def test_a_large_coco_json_is_parsed_in_flat_memory(tmp_path):
    """Issue 13: the COCO adapter streams the file (two passes, annotations spilled to SQLite), so
    its memory does not grow with the file; ``json.load``, what it did before, needs several times
    the file's size."""
    out = tmp_path / "coco.json"
    r = subprocess.run([sys.executable, "bench/coco_json_memory.py", "--images", "4000", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["adapter"]["rows"] == res["json.load"]["rows"] == 4000
    assert res["adapter"]["labels"] == res["json.load"]["labels"] == res["annotations"]
    assert res["file_mib"] > 12 and res["json.load"]["above_imports_mib"] > 3 * res["file_mib"]
    # a fixed ceiling: a read buffer and SQLite's page cache (15 MiB measured at 16 and at 80 MB files)
    assert res["adapter"]["above_imports_mib"] < 32, res


def test_json_arrays_stream_across_read_boundaries(tmp_path, monkeypatch):
    """``iter_arrays`` gives what ``json.load`` gives, whatever the read size cuts through (numbers,
    strings with brackets and escapes, nested arrays), and refuses broken documents."""
    from lakehouse.sources import jsonstream

    doc = {"info": {"a": [1, [2, 3]], "s": "] } ,"}, "images": [{"id": 12345, "file_name": "x \"]}\" y.png"},
           {"id": -1.5e3, "u": "\u00e9\u4e2d"}], "empty": [], "annotations": [[1, 2.25, [3]], "t", None, True, 99]}
    path = tmp_path / "d.json"
    path.write_text(" \n" + json.dumps(doc, indent=1) + "\n")
    for chunk in (1, 2, 3, 7, 64, 1 << 20):
        monkeypatch.setattr(jsonstream, "CHUNK_CHARS", chunk)
        got = list(jsonstream.iter_arrays(path, {"images", "annotations", "empty"}))
        assert got == [("images", x) for x in doc["images"]] + [("annotations", x) for x in doc["annotations"]], chunk
    for broken in ('{"images": [1, 2', '{"images": 3}', '[1, 2]', '{"images": [1 2]}'):
        path.write_text(broken)
        with pytest.raises(ValueError):
            list(jsonstream.iter_arrays(path, {"images"}))
