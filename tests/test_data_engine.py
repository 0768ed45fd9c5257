"""Data engine on real local Spark, Delta and Great Expectations: specialists, filters, rounds, gate."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from pyspark.sql import functions as F

from lakehouse.acceptance import label_key
from lakehouse.filters import FilterConfig, apply_filters, nms_keep
from lakehouse.fld import ground_phrases
from lakehouse.ingest import run_ingest
from lakehouse.rounds import GateFailed, RoundConfig, latest_published_round, run_round
from lakehouse.specialists import from_config, run_specialists
from lakehouse.synthetic import CATEGORIES, PLURALS, write_world
from lakehouse.tables import TABLES, current_version, read
from florence2.evaluation import word_f1
from quality.annotation_metrics import score
from quality.gate import GateConfig, word_count
from florence2.geometry import bounding_box
from florence2.vocabulary import CAPTION_LEVELS, count_words, head_noun, singular

NOW = dt.datetime(2026, 1, 1)


def _ann(image_id="img", kind="region", text="circle", conf=0.9, bbox=(0, 0, 10, 10), annotator="spec", aid=None):
    return {"annotation_id": aid or f"{image_id}-{kind}-{text}-{bbox}-{annotator}-{conf}", "image_id": image_id,
            "round": 1, "kind": kind, "annotator": annotator, "annotator_version": "1", "confidence": conf,
            "text": text, "description": text, "bbox": None if bbox is None else [float(v) for v in bbox],
            "polygons": None, "quad": None, "created_at": NOW}


def _filter(spark, rows, cfg=FilterConfig()):
    df = spark.createDataFrame(rows, TABLES["silver_annotations"].schema)
    kept, removed = apply_filters(df, cfg)
    counts: dict = {}
    for r in removed.collect():
        counts[(r.step, r.reason)] = counts.get((r.step, r.reason), 0) + r.removed
    return {r.annotation_id for r in kept.collect()}, counts


def test_text_filter_keeps_good_and_drops_bad(spark):
    good = _ann(kind="caption_brief", text="A red circle on a white background.", bbox=None, aid="good")
    short = _ann(kind="caption_brief", text="red", bbox=None, aid="short")
    junk = _ann(kind="caption_detailed", text="### 1234 5678 !!!! 99 00 11 22 33 44 55 66 77 88", bbox=None, aid="junk")
    banned = _ann(text="the image", aid="banned")
    label = _ann(text="circle", aid="label")
    markup = _ann(text="loc_288>star", aid="markup")  # a model's half-written location token, seen in round 2
    kept, removed = _filter(spark, [good, short, junk, banned, label, markup])
    assert kept == {"good", "label"}
    assert removed == {("text", "caption_too_short"): 1, ("text", "caption_mostly_non_alpha"): 1,
                       ("text", "blacklisted_phrase"): 1, ("text", "label_has_markup"): 1}


def test_one_vocabulary_for_caption_lengths_plurals_and_boxes(spark):
    """The filter, the gate, the human-caption levels and the metrics read one definition of each."""
    texts = ["a red circle", "  two  blue\tsquares ", "", "word"]
    got = [r[0] for r in spark.createDataFrame([(t,) for t in texts], "text string")
           .select(word_count(F.col("text"))).collect()]
    assert got == [count_words(t) for t in texts] == [3, 3, 0, 1]
    assert FilterConfig().caption_words == GateConfig().caption_words == {c.kind: c.words for c in CAPTION_LEVELS}
    for c in CATEGORIES:
        assert singular(PLURALS[c]) == singular(c) == c
        assert label_key(" " + PLURALS[c].title()) == label_key(c) == c   # how acceptance compares labels
    assert head_noun("three red crosses") == head_noun("a red cross") == "cross"
    assert bounding_box([4, 1, 9, 2, 8, 7, 3, 6]) == [3, 1, 9, 7]


def test_confidence_threshold(spark):
    rows = [_ann(conf=0.31, aid="keep", bbox=(0, 0, 5, 5)), _ann(conf=0.29, aid="drop", bbox=(20, 20, 30, 30)),
            _ann(kind="word", text="STOP", conf=0.6, aid="word", bbox=(40, 40, 50, 50))]
    kept, removed = _filter(spark, rows)
    assert kept == {"keep", "word"} and removed == {("confidence", "below_confidence"): 1}


def test_class_aware_nms(spark):
    rows = [_ann(conf=1.0, aid="human", annotator="human:coco"), _ann(conf=0.5, aid="dup", bbox=(1, 1, 10, 10)),
            _ann(text="square", conf=0.5, aid="other-class", bbox=(1, 1, 10, 10)),
            _ann(conf=0.9, aid="far", bbox=(50, 50, 60, 60))]
    kept, removed = _filter(spark, rows)
    assert kept == {"human", "other-class", "far"} and removed == {("nms", "nms_duplicate"): 1}
    assert nms_keep([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 4]], [0.5, 0.9, 0.1], 0.5) == [False, True, True]


def test_words_that_are_shapes_read_as_text_are_dropped(spark):
    """OCR engines read a cross as "+" and a star as "★"; such a word on a region goes, a real word stays."""
    star = _ann(text="star", bbox=(10, 10, 50, 50), aid="star")
    rows = [star, _ann(kind="word", text="★", conf=0.9, bbox=(12, 12, 48, 48), aid="glyph"),
            _ann(kind="word", text="+", conf=0.9, bbox=(14, 14, 40, 40), aid="plus"),
            _ann(kind="word", text="STOP", conf=0.9, bbox=(20, 20, 45, 30), aid="stop-on-shape"),
            _ann(kind="word", text="@", conf=0.9, bbox=(100, 100, 110, 110), aid="far-symbol"),
            _ann(kind="word", text="+", conf=1.0, bbox=(12, 12, 48, 48), aid="human", annotator="human:coco")]
    kept, removed = _filter(spark, rows)
    assert kept == {"star", "stop-on-shape", "far-symbol", "human"}
    assert removed == {("shapes", "word_is_a_shape"): 2}


def test_too_many_objects_drops_the_image(spark):
    crowded = [_ann(image_id="crowd", conf=0.9, bbox=(i * 20, 0, i * 20 + 10, 10), aid=f"c{i}") for i in range(5)]
    crowded.append(_ann(image_id="crowd", kind="caption_brief", text="Many circles in a row on a mat.", bbox=None, aid="cap"))
    calm = [_ann(image_id="calm", aid="calm")]
    kept, removed = _filter(spark, crowded + calm, FilterConfig(max_regions_per_image=4))
    assert kept == {"calm"} and removed == {("too_many_objects", "too_many_objects"): 6}


def test_the_too_many_objects_step_joins_nothing(spark):
    """The per-image region counts were joined back to the annotations; at 20,000 images Spark broadcast
    those few rows, so every filter step before them ran inside the broadcast's 300 s timeout and round 1
    failed.  The step is a window over the image's rows: no join, so nothing to broadcast."""
    df = spark.createDataFrame([_ann(image_id=f"i{k}", aid=f"a{k}") for k in range(3)], TABLES["silver_annotations"].schema)
    kept, _ = apply_filters(df, FilterConfig(max_regions_per_image=4))
    leaves = kept._jdf.queryExecution().withCachedData().collectLeaves()   # the last step, persisted
    plans = [leaves.apply(i).cacheBuilder().cachedPlan().toString() for i in range(leaves.size())
             if leaves.apply(i).getClass().getSimpleName() == "InMemoryRelation"]
    assert plans and not [p for p in plans if "Join" in p], plans


@pytest.fixture(scope="module")
def engine(spark, tmp_path_factory):
    from lakehouse.config import load_settings

    s = load_settings(home=tmp_path_factory.mktemp("engine") / "fld_home")
    write_world(s.landing, s.synthetic_dir, n_images=20, seed=7)
    run_ingest(spark, s, log=None)
    res = run_round(spark, s, RoundConfig(round=1), log=lambda *a: None)
    return s, s.tables, res


def test_round_one_publishes_three_families(spark, engine):
    s, root, res = engine
    assert res["published"] and latest_published_round(spark, root) == 1
    gold = read(spark, root, "gold_fld").filter("round = 1")
    assert gold.count() == read(spark, root, "bronze_images").count() == 20
    st = res["stats"]
    assert st["text_annotations"] > 0 and st["region_text_annotations"] > 0 and st["phrase_region_triplets"] > 0
    hist = spark.sql(f"DESCRIBE HISTORY {root.ident('gold_fld')} LIMIT 1").collect()[0]
    assert json.loads(hist.userMetadata) == {"fld_round": 1, "stage": "publish"}
    truth = {json.loads(x)["image_id"]: json.loads(x) for x in open(s.synthetic_dir / "ground_truth.jsonl")}
    m = score([r.asDict(recursive=True) for r in gold.collect()], truth)
    assert m["boxes"]["f1"] > 0.7 and m["words"]["recall"] > 0.7, m


def test_provenance_on_every_row(spark, engine):
    _, root, _ = engine
    silver = read(spark, root, "silver_annotations").filter("round = 1")
    missing = silver.filter(F.col("annotator").isNull() | F.col("annotator_version").isNull() | F.col("round").isNull()
                            | F.col("confidence").isNull() | F.col("created_at").isNull()).count()
    assert missing == 0 and silver.count() > 0
    annotators = {r.annotator for r in silver.select("annotator").distinct().collect()}
    assert {"contours", "rapidocr"} <= annotators and any(a.startswith("human:") for a in annotators)
    assert read(spark, root, "filter_log").filter("round = 1").count() > 0


def test_rerun_of_a_round_changes_nothing(spark, engine):
    s, root, _ = engine
    before = (current_version(spark, root, "gold_fld"),
              sorted(r.content_hash for r in read(spark, root, "gold_fld").collect()),
              read(spark, root, "silver_annotations").filter("round = 1").count())
    run_round(spark, s, RoundConfig(round=1), log=lambda *a: None)
    after = (current_version(spark, root, "gold_fld"),
             sorted(r.content_hash for r in read(spark, root, "gold_fld").collect()),
             read(spark, root, "silver_annotations").filter("round = 1").count())
    assert after == before


def test_failing_gate_keeps_previous_round(spark, engine):
    s, root, _ = engine
    gold_before = current_version(spark, root, "gold_fld")
    # a user's own specialist, shipped to the Spark workers as a module
    spark.sparkContext.addPyFile(str(__import__("pathlib").Path(__file__).with_name("broken_specialist.py")))
    wide = FilterConfig(caption_words={"caption_brief": (1, 1000)})
    cfg = RoundConfig(round=2, specialists=[{"type": "python", "class": "broken_specialist:BrokenCaptioner"}],
                      filters=wide)
    with pytest.raises(GateFailed) as e:
        run_round(spark, s, cfg, log=lambda *a: None)
    msg = str(e.value)
    assert "round 2 not published" in msg and "latest published round stays 1" in msg
    assert "caption_key" in msg and "words_caption_brief" in msg
    assert latest_published_round(spark, root) == 1
    assert current_version(spark, root, "gold_fld") == gold_before
    assert read(spark, root, "gold_fld").filter("round = 2").count() == 0
    attempt = read(spark, root, "rounds").filter("round = 2").collect()
    assert len(attempt) == 1 and not attempt[0].published and not attempt[0].gate_success
    q = read(spark, root, "quality_results").filter("round = 2 AND NOT success").collect()
    assert q and all(r.docs_path and r.docs_path.endswith("index.html") for r in q)


def test_a_specialist_failing_on_some_images_is_counted_not_fatal(spark, engine):
    """One image raises, one hangs past the specialist's deadline: the round goes on with the other
    eight, counts both in annotation_errors, and the gate bounds the error rate."""
    s, root, _ = engine
    spark.sparkContext.addPyFile(str(__import__("pathlib").Path(__file__).with_name("broken_specialist.py")))
    ids = [r.image_id for r in read(spark, root, "bronze_images").orderBy("image_id").limit(10).collect()]
    flaky = {"type": "python", "class": "broken_specialist:FlakyRegions",
             "kwargs": {"fail_on": [ids[3]], "hang_on": [ids[7]], "timeout_s": 3}}
    gold_before = current_version(spark, root, "gold_fld")
    with pytest.raises(GateFailed) as e:
        run_round(spark, s, RoundConfig(round=2, specialists=[flaky], image_limit=10), log=lambda *a: None)
    assert "specialist flaky failed on 2 of 10 images" in str(e.value)
    errors = read(spark, root, "annotation_errors").filter("round = 2").collect()
    assert sorted((r.image_id, r.error.split(":")[0]) for r in errors) == sorted(
        [(ids[3], "IndexError"), (ids[7], "AnnotationTimeout")])
    annotated = {r.image_id for r in read(spark, root, "silver_annotations")
                 .filter("round = 2 AND annotator = 'flaky'").select("image_id").collect()}
    assert annotated == set(ids) - {ids[3], ids[7]}
    assert latest_published_round(spark, root) == 1 and current_version(spark, root, "gold_fld") == gold_before


def test_a_batch_that_fails_is_retried_image_by_image():
    """A batching specialist gets the whole Arrow batch in one call; when that call raises, each image
    is retried alone, so only the image that fails becomes an error row."""
    import sys
    from types import SimpleNamespace

    from lakehouse.specialists.base import _annotate_all

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from broken_specialist import FlakyRegions

    good = [(SimpleNamespace(image_id=f"img{k}"), object()) for k in range(5)]
    sp = FlakyRegions(fail_on=["img2"], batched=True)
    out = _annotate_all(sp, good)
    assert sp.batch_calls == 1 and isinstance(out[2], IndexError)
    assert [o for k, o in enumerate(out) if k != 2] == [[{"kind": "region", "text": "circle", "bbox": [1, 1, 20, 20],
                                                          "confidence": 0.9}]] * 4
    ok = FlakyRegions(batched=True)
    assert len(_annotate_all(ok, good)) == 5 and ok.batch_calls == 1


def test_statistics_report(spark, engine, tmp_path):
    from lakehouse.statistics import write_report

    _, root, res = engine
    rep = write_report(spark, root, tmp_path)
    row = read(spark, root, "fld_statistics").filter("round = 1").collect()[0]
    assert row.images == 20 and row.region_text_annotations == res["stats"]["region_text_annotations"]
    assert "| 1 | 20 |" in open(rep["markdown"]).read()
    assert open(rep["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_florence_specialist_in_spark(spark, engine, tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from florence2 import modeling
    from florence_fixtures import tiny

    model, proc = tiny()
    modeling.save(model, proc, tmp_path / "m")
    _, root, _ = engine
    sp = from_config([{"type": "florence2", "model": str(tmp_path / "m"), "max_new_tokens": 12,
                       "tasks": ["<OD>", "<CAPTION>"]}])
    images = read(spark, root, "bronze_images").limit(2)
    rows = run_specialists(images, sp, 2).collect()
    assert all(r.annotator == "florence2" and r.round == 2 and r.annotator_version == "m" for r in rows)
    assert all(0 <= (r.confidence or 0) <= 1 for r in rows)


def test_hf_pipeline_adapter_with_a_model_the_test_creates(spark, engine, tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=3, id2label={0: "circle", 1: "square", 2: "star"},
                    label2id={"circle": 0, "square": 1, "star": 2})
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    _, root, _ = engine
    sp = from_config([{"type": "hf_pipeline", "path": str(tmp_path / "vit"), "task": "image-classification"}])
    rows = run_specialists(read(spark, root, "bronze_images").limit(3), sp, 1).collect()
    assert len(rows) == 3 and all(r.kind == "class" and r.text in ("circle", "square", "star") for r in rows)
    assert all(r.annotator == "hf:vit" and 0 <= r.confidence <= 1 for r in rows)


def test_unknown_specialist_type_is_refused():
    with pytest.raises(ValueError, match="unknown specialist type 'yolo'"):
        from_config([{"type": "yolo"}])


def test_spacy_phrases_on_real_coco_captions(real_dev):
    from lakehouse.filters import nlp

    d = real_dev / "coco_train2017_det_caption" / "annotations"
    caps = json.loads((d / "captions_train2017.json").read_text())["annotations"]
    inst = json.loads((d / "instances_train2017.json").read_text())
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    regions: dict = {}
    for a in inst["annotations"]:
        x, y, w, h = a["bbox"]
        regions.setdefault(a["image_id"], []).append({"bbox": [x, y, x + w, y + h], "label": cats[a["category_id"]],
                                                      "description": cats[a["category_id"]]})
    chunks = [[c.text for c in nlp()(a["caption"]).noun_chunks] for a in caps]
    assert len(caps) == 100 and sum(bool(c) for c in chunks) >= 95
    grounded = [g for a in caps for g in ground_phrases(a["caption"], regions.get(a["image_id"], []))]
    assert len(grounded) >= 20
    assert all(g["phrase"] in next(a["caption"] for a in caps if g["phrase"] in a["caption"]) for g in grounded)


@pytest.mark.parametrize("dataset, engine_name, floor", [
    ("icdar2015_train", "rapidocr", 0.12), ("funsd_train", "rapidocr", 0.25), ("funsd_train", "tesseract", 0.25),
    ("icdar2015_train", "tesseract", 0.0),
])
def test_ocr_specialists_on_real_words(real_dev, dataset, engine_name, floor):
    from PIL import Image

    doc = json.loads((real_dev / dataset / "annotations.json").read_text())
    sp = from_config([{"type": engine_name}])[0]
    agg = [0, 0, 0]
    for im in doc["images"][:6]:
        img = Image.open(real_dev / dataset / "images" / im["file_name"]).convert("RGB")
        truth = [w for w in im["words"] if not w.get("illegible") and w["text"] != "###"]
        r = word_f1(sp.annotate(img, im["file_name"]), truth)
        agg = [agg[0] + r["tp"], agg[1] + r["predicted"], agg[2] + r["true"]]
    p, rc = agg[0] / max(agg[1], 1), agg[0] / max(agg[2], 1)
    f1 = 2 * p * rc / (p + rc) if p + rc else 0.0
    print(f"{dataset} {engine_name}: word P {p:.3f} R {rc:.3f} F1 {f1:.3f} on 6 images")
    assert f1 >= floor


def test_tesseract_reads_a_batch_in_one_process_with_the_same_words(real_dev):
    """One process per batch (a list file) skips a language-model load per image; pages are independent."""
    from PIL import Image

    sp = from_config([{"type": "tesseract"}])[0]
    assert sp.batched
    files = [sorted((real_dev / ds / "images").iterdir())[k] for ds in ("funsd_train", "icdar2015_train") for k in (0, 1)]
    images = [Image.open(f).convert("RGB") for f in files]
    one = [sp.annotate(im, f.name) for im, f in zip(images, files)]
    assert sum(map(len, one)) > 20
    assert sp.annotate_batch(images, [f.name for f in files]) == one


def test_ocr_engines_take_one_core_each_by_default():
    """Spark runs one image per core; an engine that also spreads over every core oversubscribes them
    (Tesseract on a FUNSD form: 2.1 s with OpenMP's default threads, 1.0 s with one)."""
    rapid, tess = (from_config([{"type": t}])[0] for t in ("rapidocr", "tesseract"))
    engine = rapid.model()
    for part in (engine.text_det.infer, engine.text_cls.infer, engine.text_rec.session):
        compiled = part.request.get_compiled_model()
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert compiled.get_property("ENABLE_CPU_PINNING") is False  # two workers' pinned threads can share a core
        # not the bf16 that OpenVINO picks by default on CPUs that have it: it changed the words read
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == __import__("openvino").Type.f32
    assert engine.text_det.limit_type == "min"  # small images are still scaled up: the synthetic words need it
    assert tess.threads == 1
    ort = from_config([{"type": "rapidocr", "threads": 0, "runtime": "onnxruntime"}])[0].model()
    assert ort.text_rec.session.session.get_session_options().intra_op_num_threads == 0
    # one line at a time at its own width: padding to 320 px and to a batch's widest line costs 1.9x on forms
    assert engine.text_rec.rec_image_shape[2] == 48 and engine.text_rec.rec_batch_num == 1


def test_rapidocr_reads_the_same_words_on_openvino_as_on_onnx_runtime(real_dev):
    """OpenVINO is the default runtime because it is faster on CPU; it must not change what is read."""
    from PIL import Image

    ov, ort = (from_config([{"type": "rapidocr", "runtime": r}])[0] for r in ("openvino", "onnxruntime"))
    assert ov.version != ort.version and "openvino" in ov.version  # provenance names the runtime
    files = [sorted((real_dev / ds / "images").iterdir())[0] for ds in ("funsd_train", "icdar2015_train")]
    words = 0
    for f in files:
        img = Image.open(f).convert("RGB")
        a, b = ov.annotate(img, f.name), ort.annotate(img, f.name)
        assert [w["text"] for w in a] == [w["text"] for w in b], f.name
        assert np.allclose([w["confidence"] for w in a], [w["confidence"] for w in b], atol=1e-3)
        words += len(a)
    assert words > 20
    with pytest.raises(ValueError, match="runtime"):
        from_config([{"type": "rapidocr", "runtime": "tensorrt"}])


def test_rapidocr_without_openvino_says_what_to_install_or_configure(monkeypatch):
    import sys

    from lakehouse.specialists.ocr import OpenVINOSession

    monkeypatch.setitem(sys.modules, "openvino", None)   # as if it were not installed
    with pytest.raises(RuntimeError, match='"runtime": "onnxruntime"'):
        OpenVINOSession("any.onnx")


def test_detector_preprocessing_in_float32_matches_the_engines():
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    from lakehouse.specialists.ocr import Float32DetPreProcess

    img = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    op = DetPreProcess(736, "min", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    want, got = op(img), Float32DetPreProcess(op)(img)
    assert got.shape == want.shape == (1, 3, 736, 1216) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5


def test_recogniser_lines_are_stretched_to_a_width_step_and_padded_as_a_batch_needs():
    from lakehouse.specialists.ocr import stretch_line

    line = np.full((30, 100, 3), 255, np.uint8)   # 160 px wide at height 48
    one = stretch_line((3, 48, 48), 32, line, 100 / 30)
    assert one.shape == (3, 48, 160) and np.allclose(one, 1.0)
    narrow = stretch_line((3, 48, 48), 32, line[:, :20], 20 / 30)   # 32 px, padded (not stretched) to 48
    assert narrow.shape == (3, 48, 48) and np.allclose(narrow[:, :, :32], 1.0) and not narrow[:, :, 32:].any()
    batch = stretch_line((3, 48, 48), 32, line, 300 / 30)   # the batch's widest line is 480 px
    assert batch.shape == (3, 48, 480) and np.allclose(batch[:, :, :160], 1.0) and not batch[:, :, 160:].any()


def test_annotation_rows_ask_the_specialist_for_its_version_once():
    """The version goes into every row; asking Tesseract for it once per word spawned a process per word."""
    import datetime as dt

    from lakehouse.specialists.base import Specialist, provenance_rows

    class Counting(Specialist):
        name, asked = "counting", 0

        @property
        def version(self):
            Counting.asked += 1
            return "7"

    anns = [{"kind": "word", "text": f"w{i}", "bbox": [i, 0, i + 1, 1]} for i in range(50)]
    rows = provenance_rows("img", 100, 10, Counting(), anns, 1, dt.datetime(2026, 1, 1))
    assert len(rows) == 50 and {r["annotator_version"] for r in rows} == {"7"} and Counting.asked == 1


def test_gold_merged_without_its_rounds_row_is_not_read(spark, engine):
    """A crash between publishing gold and writing the `rounds` row leaves gold rows that no
    reader sees: training refuses the round, and round 1 still reads at its pinned version."""
    from lakehouse.examples import build_training_examples
    from lakehouse.fld import publish_gold

    _, root, _ = engine
    before = build_training_examples(spark, root, 1, mixture={}).count()
    orphan = read(spark, root, "gold_fld").filter("round = 1").limit(3).withColumn("round", F.lit(7))
    assert publish_gold(spark, root, orphan, 7)  # the crash: gold has round 7, `rounds` does not
    with pytest.raises(ValueError, match="round 7 is not published"):
        build_training_examples(spark, root, 7)
    assert latest_published_round(spark, root) == 1
    assert build_training_examples(spark, root, 1, mixture={}).count() == before


def test_a_second_run_of_the_same_round_is_refused_while_one_holds_it(tmp_path):
    import os
    import subprocess
    import sys

    from lakehouse.rounds import RoundBusy, round_lock

    with round_lock(tmp_path, 3):
        with pytest.raises(RoundBusy, match="round 3 is already being run"):
            with round_lock(tmp_path, 3):
                pass
        with round_lock(tmp_path, 4):  # other rounds are not blocked
            pass
    # a lock left by a killed run (its process is gone) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "locks" / "round-3.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "since": "then"}))
    with round_lock(tmp_path, 3):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_round_one_on_real_coco_photos(spark, real_dev, tmp_path):
    """Real photos through the whole round: the contour specialist's captions on scenes with many
    regions, five human captions per image, human labels withheld for the audit slice."""
    import shutil

    from lakehouse.config import load_settings

    s = load_settings(home=tmp_path / "fld_home", max_files_per_trigger=1000)
    src, dest = real_dev / "coco_train2017_det_caption", s.landing / "coco" / "coco_dev"
    shutil.copytree(src / "images", dest / "images")
    (dest / "annotations").mkdir()
    for f in ("instances_train2017.json", "captions_train2017.json"):
        shutil.copy(src / "annotations" / f, dest / "annotations" / f)
    run_ingest(spark, s, log=None)
    root = s.tables
    try:
        res = run_round(spark, s, RoundConfig(round=1), log=print)
        published, msg = res["published"], ""
    except GateFailed as e:
        published, msg = False, str(e)
    assert "caption_key" not in msg and "fld_errors" not in msg, msg
    assert read(spark, root, "annotation_errors").filter("round = 1").count() == 0
    silver = read(spark, root, "silver_annotations").filter("round = 1")
    annotators = {r.annotator for r in silver.select("annotator").distinct().collect()}
    assert {"contours", "human:coco"} <= annotators, annotators
    assert published, msg
    gold = read(spark, root, "gold_fld").filter("round = 1")
    # an image whose detections exceed the per-image region limit is dropped by the filter, and counted
    assert gold.count() >= 18 and gold.filter("caption_brief IS NOT NULL").count() == gold.count()


@pytest.mark.slow
def test_round_killed_at_each_stage_boundary_keeps_the_published_state_and_rerun_converges(spark, tmp_path):
    """Issue 13's fault suite for rounds: round 2 kills itself (``FLD_CRASH_AT``) at each boundary in
    turn.  After every crash the published state is round 1's, at the versions and content it had;
    round 2 is unreadable; the stale lock is taken over.  A clean rerun publishes round 2, and one
    more run changes nothing."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from lakehouse.config import load_settings
    from lakehouse.examples import build_training_examples
    from lakehouse.faults import CRASH_POINTS
    from lakehouse.rounds import published_versions

    s = load_settings(home=tmp_path / "fld_home")
    write_world(s.landing, s.synthetic_dir, n_images=12, seed=11)
    run_ingest(spark, s, log=None)
    quiet = lambda *a: None  # noqa: E731
    run_round(spark, s, RoundConfig(round=1), log=quiet)
    root = s.tables

    def published():
        v = published_versions(spark, root, 1)
        gold = read(spark, root, "gold_fld", version=v["gold"]).filter("round = 1")
        return latest_published_round(spark, root), v, sorted(r["content_hash"] for r in gold.collect())

    before = published()
    cmd = [sys.executable, "-m", "jobs.refine_round", "--home", str(s.home), "--round", "2",
           "--specialists", json.dumps([{"type": "contours"}])]
    repo = Path(__file__).resolve().parents[1]
    points = [p for p in CRASH_POINTS if p.startswith("round:")]
    assert len(points) == 4
    for point in points:
        r = subprocess.run(cmd, cwd=repo, env=dict(os.environ, FLD_CRASH_AT=point), capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == -signal.SIGKILL and f"FLD_CRASH_AT={point}" in r.stdout, (point, r.stderr[-2000:])
        assert published() == before, point
        with pytest.raises(ValueError, match="round 2 is not published"):
            build_training_examples(spark, root, 2)
    r = subprocess.run(cmd, cwd=repo, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert latest_published_round(spark, root) == 2 and published()[1:] == before[1:]
    gold_version = current_version(spark, root, "gold_fld")
    assert published_versions(spark, root, 2)["gold"] == gold_version
    n = read(spark, root, "gold_fld", version=gold_version).filter("round = 2").count()
    assert n == read(spark, root, "bronze_images").count()
    run_round(spark, s, RoundConfig(round=2, specialists=[{"type": "contours"}]), log=quiet)
    assert current_version(spark, root, "gold_fld") == gold_version  # converged: nothing left to publish


def test_gold_rows_without_regions_or_grounding_build_examples(spark, engine):
    """A batch of gold rows none of which has a region or a grounded phrase used to kill the Python
    worker (pyarrow 14 segfaults on such nested columns; see lakehouse.spark.json_columns)."""
    from lakehouse.examples import default_mixture, example_rows, examples_from_gold

    _, root, _ = engine
    bare = (read(spark, root, "gold_fld").filter("round = 1").limit(2).coalesce(1)
            .withColumn("regions", F.expr("filter(regions, r -> false)"))
            .withColumn("grounding", F.lit(None).cast(TABLES["gold_fld"].schema["grounding"].dataType)))
    ex = example_rows(examples_from_gold(bare, read(spark, root, "bronze_images"), default_mixture(), 0.0, 1))
    tasks = {r["task"] for r in ex.select("task").distinct().collect()}
    assert "<CAPTION>" in tasks and "<OD>" not in tasks and "<CAPTION_TO_PHRASE_GROUNDING>" not in tasks
