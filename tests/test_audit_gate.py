"""The flywheel's safety net on real Spark/Delta/GX: audit scores every round, a gate that
refuses regressions by family, and calibrated acceptance of model annotations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from lakehouse.acceptance import AcceptanceConfig, calibrate
from lakehouse.ingest import run_ingest
from lakehouse.rounds import GateFailed, RoundConfig, latest_published_round, run_round
from lakehouse.synthetic import write_world
from lakehouse.tables import current_version, read
from quality.audit import AuditConfig, audit_column, in_audit
from quality.gate import GateConfig

GATE = GateConfig(audit=AuditConfig(fraction=0.5))
FAST = [{"type": "rapidocr"}, {"type": "contours"}]


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    from lakehouse.config import load_settings

    s = load_settings(home=tmp_path_factory.mktemp("audit") / "fld_home")
    write_world(s.landing, s.synthetic_dir, n_images=24, seed=8, bad_inputs=False)
    run_ingest(spark, s, log=None)
    spark.sparkContext.addPyFile(str(Path(__file__).with_name("audit_specialists.py")))
    res = run_round(spark, s, RoundConfig(round=1, specialists=FAST, gate=GATE), log=lambda *a: None)
    return s, s.tables, res


def _truth(s) -> str:
    return str(s.synthetic_dir / "ground_truth.jsonl")


def test_audit_slice_is_hash_chosen_and_scored_into_rounds(spark, world):
    s, root, res = world
    images = read(spark, root, "bronze_images")
    by_spark = {r.image_id for r in images.filter(audit_column(0.5)).collect()}
    by_python = {r.image_id for r in images.collect() if in_audit(r.image_id, 0.5)}
    assert by_spark == by_python and 0 < len(by_spark) < images.count()
    row = read(spark, root, "rounds").filter("round = 1").collect()[0]
    scores = json.loads(row.audit_json)
    assert scores == res["audit"] and scores["images"] == len(by_spark)
    assert {"regions", "boxes", "words", "grounding", "captions"} <= set(scores)
    assert 0 < scores["boxes"]["f1"] <= 1 and scores["regions"]["true"] > 0
    # human labels of audit images are withheld from the merge
    human = read(spark, root, "silver_annotations").filter("round = 1 AND annotator LIKE 'human:%'")
    assert human.count() > 0 and human.filter(audit_column(0.5)).count() == 0


def test_worse_round_is_refused_naming_the_family(spark, world):
    s, root, res = world
    gold_before = current_version(spark, root, "gold_fld")
    cfg = RoundConfig(round=2, specialists=[{"type": "python", "class": "audit_specialists:ShiftedContours"}],
                      gate=GATE)
    with pytest.raises(GateFailed) as e:
        run_round(spark, s, cfg, log=lambda *a: None)
    before = res["audit"]["regions"]["f1"]
    msg = str(e.value)
    assert "audit F1 of regions fell to" in msg and f"from {before:.4f} in published round 1" in msg, msg
    assert latest_published_round(spark, root) == 1
    assert current_version(spark, root, "gold_fld") == gold_before
    assert read(spark, root, "gold_fld").filter("round = 2").count() == 0
    attempt = read(spark, root, "rounds").filter("round = 2").collect()
    assert len(attempt) == 1 and not attempt[0].published
    assert json.loads(attempt[0].audit_json)["regions"]["f1"] < before - GATE.audit.max_f1_drop


def test_acceptance_keeps_a_right_model_and_drops_a_wrong_one(spark, world):
    s, root, res = world
    models = [{"type": "python", "class": f"audit_specialists:{c}", "kwargs": {"truth": _truth(s)}}
              for c in ("OracleModel", "LiarModel")]
    out = run_round(spark, s, RoundConfig(round=3, specialists=models, gate=GATE), log=lambda *a: None)
    silver = read(spark, root, "silver_annotations").filter("round = 3")
    assert silver.filter("annotator = 'liar'").count() == 0
    assert silver.filter("annotator = 'oracle'").count() > 0
    log = {(r.annotator, r.reason): r.removed for r in read(spark, root, "filter_log")
           .filter("round = 3 AND step = 'acceptance'").collect()}
    assert log.get(("liar", "model_uncalibrated_no_agreement"), 0) > 0, log
    # the oracle is right about labels more often than the contour specialist, so its label wins
    assert log.get(("contours", "label_overruled_by_model"), 0) > 0, log
    assert out["published"] and out["audit"]["regions"]["f1"] > res["audit"]["regions"]["f1"]
    assert latest_published_round(spark, root) == 3
    assert silver.filter(F.col("annotator") == "contours").count() > 0


def _contours_round_one(spark, tmp_path):
    """(settings, tables, round 1's result) of a 16-image world whose round 1 only the contour specialist
    annotated: the labels a model can correct."""
    from lakehouse.config import load_settings

    s = load_settings(home=tmp_path / "fld_home")
    write_world(s.landing, s.synthetic_dir, n_images=16, seed=8, bad_inputs=False)
    run_ingest(spark, s, log=None)
    spark.sparkContext.addPyFile(str(Path(__file__).with_name("audit_specialists.py")))
    first = run_round(spark, s, RoundConfig(round=1, specialists=[{"type": "contours"}], gate=GATE), log=lambda *a: None)
    return s, s.tables, first


def test_a_model_region_the_confidence_filter_drops_overrules_nothing(spark, tmp_path):
    """Acceptance runs after the per-row filters: a right but unsure model (below the region confidence
    filter) once overruled the contour specialist's labels and was then filtered itself, so the round lost
    those boxes."""
    s, root, first = _contours_round_one(spark, tmp_path)
    unsure = [{"type": "python", "class": "audit_specialists:UnsureOracle", "kwargs": {"truth": _truth(s)}}]
    second = run_round(spark, s, RoundConfig(round=2, specialists=unsure, gate=GATE), log=lambda *a: None)
    log = {(r.step, r.annotator, r.reason): r.removed for r in read(spark, root, "filter_log").filter("round = 2").collect()}
    assert log.get(("confidence", "unsure", "below_confidence"), 0) > 0, log
    assert not [k for k in log if k[0] == "acceptance"], log
    regions = read(spark, root, "silver_annotations").filter("kind = 'region'")
    assert regions.filter("round = 2").count() == regions.filter("round = 1").count()
    assert second["audit"]["boxes"] == first["audit"]["boxes"] and second["audit"]["regions"] == first["audit"]["regions"]


def test_a_relabelling_model_renames_regions_only_where_it_is_right_more_often(spark, tmp_path):
    """Relabelling (``Florence2Labels``' contract): a model that names the published round's regions
    replaces the contour specialist's labels where it is better calibrated, keeps the boxes and
    polygons, loses to the specialist where it is worse, and the regions it renamed stay in the
    next round although the specialist rows they replaced are gone."""
    s, root, first = _contours_round_one(spark, tmp_path)
    models = [{"type": "python", "class": f"audit_specialists:{c}", "kwargs": {"truth": _truth(s)}}
              for c in ("OracleLabels", "WrongLabels")]
    second = run_round(spark, s, RoundConfig(round=2, specialists=models, gate=GATE), log=lambda *a: None)
    log = {(r.annotator, r.reason): r.removed for r in read(spark, root, "filter_log")
           .filter("round = 2 AND step = 'acceptance'").collect()}
    assert log.get(("contours", "label_overruled_by_model"), 0) > 0, log
    assert log.get(("oracle_labels", "relabel_agrees"), 0) > 0, log
    assert log.get(("wrong_labels", "label_kept_by_specialist"), 0) > 0, log
    silver = read(spark, root, "silver_annotations").filter("round = 2 AND kind = 'region'")
    assert silver.filter("annotator = 'wrong_labels'").count() == 0
    renamed = silver.filter("annotator = 'oracle_labels'")
    assert 0 < renamed.count() <= log[("contours", "label_overruled_by_model")]
    assert renamed.filter(F.col("polygons").isNull()).count() == 0
    # same boxes, better labels
    assert second["audit"]["boxes"] == first["audit"]["boxes"]
    assert second["audit"]["regions"]["f1"] > first["audit"]["regions"]["f1"]
    third = run_round(spark, s, RoundConfig(round=3, specialists=models, gate=GATE), log=lambda *a: None)
    assert third["audit"]["regions"] == second["audit"]["regions"]
    assert read(spark, root, "silver_annotations").filter("round = 3 AND annotator = 'oracle_labels'").count() \
        == renamed.count()
    # the same relabeller, now too unsure for the region filter: the boxes it renamed keep their labels
    unsure = [{"type": "python", "class": "audit_specialists:OracleLabels", "kwargs": {"truth": _truth(s), "confidence": 0.1}}]
    fourth = run_round(spark, s, RoundConfig(round=4, specialists=unsure, gate=GATE), log=lambda *a: None)
    assert fourth["audit"]["regions"] == third["audit"]["regions"] and fourth["audit"]["boxes"] == third["audit"]["boxes"]
    assert read(spark, root, "silver_annotations").filter("round = 4 AND annotator = 'oracle_labels'").count() \
        == renamed.count()


def test_calibration_finds_the_threshold_for_the_target_precision():
    cfg = AcceptanceConfig(target_precision=0.9, min_support=3)
    audited = [(0.99, True), (0.95, True), (0.9, True), (0.8, True), (0.7, False), (0.6, False), (0.5, True)]
    assert calibrate(audited, cfg) == 0.8
    assert calibrate([(0.9, False)] * 10, cfg) is None
    assert calibrate([(0.9, True)] * 2, cfg) is None  # too little support


def test_gate_takes_the_region_limit_from_the_filters():
    """Raising the filters' per-image region limit raises the gate's with it (the two used to be two
    copies of 40: images above the old number then failed the gate)."""
    from lakehouse.filters import FilterConfig
    from lakehouse.rounds import RoundConfig, gate_config

    assert gate_config(RoundConfig(round=1)).max_regions_per_image == FilterConfig().max_regions_per_image
    assert gate_config(RoundConfig(round=1, filters=FilterConfig(max_regions_per_image=60))).max_regions_per_image == 60
    pinned = RoundConfig(round=1, gate=GateConfig(max_regions_per_image=10), filters=FilterConfig(max_regions_per_image=60))
    assert gate_config(pinned).max_regions_per_image == 10


def test_rerun_over_more_images_is_compared_on_the_images_both_rounds_cover(spark, tmp_path):
    """A round over more data has a larger audit slice; the gate compares it with the published round
    on the audit images both cover (same reference), not with a score taken on a smaller slice.  Here
    the new images are noisy scenes the contour specialist gets wrong, so the whole-slice F1 falls far
    below the published one while the images both rounds cover score the same: published."""
    from lakehouse.config import load_settings

    s = load_settings(home=tmp_path / "fld_home")
    write_world(s.landing, s.synthetic_dir, n_images=16, seed=8, bad_inputs=False)
    run_ingest(spark, s, log=None)
    root = s.tables
    cfg = RoundConfig(round=1, specialists=[{"type": "contours"}], gate=GATE)
    first = run_round(spark, s, cfg, log=lambda *a: None)
    more = tmp_path / "truth-more"
    write_world(s.landing, more, n_images=16, seed=9, bad_inputs=False, source_name="noisy", noise=70.0)
    with open(s.synthetic_dir / "ground_truth.jsonl", "a") as f:
        f.write((more / "ground_truth.jsonl").read_text())
    run_ingest(spark, s, log=None)
    second = run_round(spark, s, cfg, log=lambda *a: None)
    assert second["published"] and second["audit"]["images"] > first["audit"]["images"]
    # compared on the whole slices (the old rule), this rerun would have been refused
    assert second["audit"]["regions"]["f1"] < first["audit"]["regions"]["f1"] - GATE.audit.max_f1_drop, \
        (first["audit"]["regions"], second["audit"]["regions"])
    assert latest_published_round(spark, root) == 1


def test_a_model_label_wins_where_its_claim_is_right_more_often_than_the_specialists():
    """Label precision per claim: the contour specialist is right 85% of the time overall but only 5 times in
    20 when it says "cross"; a model right 70% overall but 18 times in 20 when it says "star" takes those
    crosses, and loses where the specialist's claim ("circle", 80 of 80) is the surer one."""
    import pandas as pd

    from lakehouse.acceptance import Calibration, _decide, dispute_tally, label_precision, overrule_threshold

    tally = {("contours", "circle"): [80, 80], ("contours", "cross"): [5, 20],
             ("labels", "star"): [18, 20], ("labels", "hexagon"): [24, 40],
             ("model", "star"): [18, 20], ("model", "hexagon"): [24, 40]}
    overall = label_precision(tally)
    assert overall["contours"] == 0.85 and overall["labels"] == 0.7

    def region(annotator, text, box, image="a", confidence=0.9):
        return {"image_id": image, "annotator": annotator, "kind": "region", "text": text, "bbox": box,
                "confidence": confidence}

    rows = pd.DataFrame([region("contours", "cross", [0, 0, 10, 10]), region("labels", "star", [0, 0, 10, 10]),
                         region("contours", "circle", [20, 20, 30, 30]), region("labels", "hexagon", [20, 20, 30, 30]),
                         region("contours", "cross", [40, 40, 50, 50]), region("model", "star", [40, 41, 50, 50])])

    def decide(prior, disputes=None, rows=rows, min_support=1):
        cal = Calibration({}, overall, {}, tally, prior, disputes or {}, min_support)
        return list(_decide(frozenset({"labels", "model"}), frozenset({"labels"}), cal, AcceptanceConfig(), rows)
                    .drop_reason)

    assert decide(10.0) == ["label_overruled_by_model", None, None, "label_kept_by_specialist",
                            "label_overruled_by_model", None]
    # the model's own region takes the label it won, on the specialist's box
    cal = Calibration({}, overall, {}, tally, 10.0, {}, 1)
    assert list(_decide(frozenset({"labels", "model"}), frozenset({"labels"}), cal, AcceptanceConfig(), rows)
                .bbox)[5] == [40, 40, 50, 50]
    # one precision per annotator (the rule before): the specialist keeps every label
    assert decide(1e12) == [None, "label_kept_by_specialist", None, "label_kept_by_specialist",
                            None, "model_uncalibrated_no_agreement"]

    # on the slice's boxes where the relabeller renamed the specialist's crosses, the crosses were right more
    # often (2 of 3) except where the relabeller was surest (0.95): it overrules from there on, not below (the
    # other model won its disputes and still overrules)
    disputes = dispute_tally([region("contours", "cross", [0, 0, 10, 10], "s"), region("labels", "star", [0, 0, 10, 10], "s", 0.95),
                              region("human:oi", "star", [0, 0, 10, 10], "s"), region("model", "star", [0, 0, 9, 10], "s"),
                              region("contours", "cross", [0, 0, 10, 10], "t"), region("labels", "star", [0, 1, 10, 10], "t", 0.6),
                              region("labels", "star", [0, 1, 10, 10], "u", 0.7), region("contours", "cross", [0, 0, 10, 10], "u")],
                             {"s": {"objects": [{"category": "star", "bbox": [0, 0, 10, 10]}]},
                              "t": {"objects": [{"category": "cross", "bbox": [0, 0, 10, 10]}]},
                              "u": {"objects": [{"category": "crosses", "bbox": [0, 0, 10, 10]}]}}, {"labels", "model"})
    assert disputes == {("labels", "contours", "cross"): [(0.95, 1, 0), (0.7, 0, 1), (0.6, 0, 1)],
                        ("model", "contours", "cross"): [(0.9, 1, 0)]}
    assert decide(10.0, disputes) == [None, "label_kept_by_disputes", None, "label_kept_by_specialist",
                                      "label_overruled_by_model", None]
    sure = rows.assign(confidence=[0.9, 0.96, 0.9, 0.9, 0.9, 0.9])
    assert decide(10.0, disputes, sure) == ["label_overruled_by_model", None, None, "label_kept_by_specialist",
                                            "label_overruled_by_model", None]
    # the threshold is the one that gains most on the slice, taking ties of confidence together; none gains: never
    assert overrule_threshold([(0.8, 1, 0), (0.8, 0, 1), (0.5, 1, 0), (0.4, 0, 1)]) == (0.5, 1)
    assert overrule_threshold([(0.9, 0, 1), (0.3, 1, 0)]) == (None, 0)
    # a threshold needs that many decided disputes at or above it (one lucky box is not evidence)
    lucky = [(0.95, 1, 0), (0.9, 0, 0), (0.8, 0, 1), (0.7, 1, 0), (0.6, 1, 0), (0.5, 1, 0)]
    assert overrule_threshold(lucky) == (0.5, 3) and overrule_threshold(lucky, 5) == (0.5, 3)
    assert overrule_threshold(lucky[:2], 2) == (None, 0) and overrule_threshold(lucky[:3], 2) == (None, 0)
    never = {("labels", "contours", "cross"): [(0.9, 0, 1), (0.3, 1, 0)]}
    assert decide(10.0, never, sure)[:2] == [None, "label_kept_by_disputes"]
    # disputes are the nearer evidence: where the relabeller won them, its "hexagon" takes circles whose claim is surer
    assert decide(10.0, {("labels", "contours", "circle"): [(0.9, 1, 0)]})[2:4] == ["label_overruled_by_model", None]
    # disputes where neither label is right are no evidence, and fewer than min_support are too few: the claims decide
    assert decide(10.0, {("labels", "contours", "circle"): [(0.9, 1, 0)]}, min_support=2) == decide(10.0)
    assert decide(10.0, {("labels", "contours", "cross"): [(0.9, 0, 0)]}) == decide(10.0)


def test_label_claims_land_in_rounds_and_distrusted_labels_are_not_taught(spark, world):
    """Each round records, per annotator and label, how often its region labels were right on the audit
    slice; training examples built with ``min_claim_precision`` teach only the labels whose claims reach it
    (annotators the slice does not score, human labels, stay trusted)."""
    from florence2.tasks import TASKS
    from lakehouse.examples import build_training_examples, example_rows

    s, root, res = world
    claims = res["audit"]["claims"]
    assert claims and all(len(c) == 4 and 0 <= c[2] <= c[3] for c in claims)
    assert {c[0] for c in claims} == {"contours"}  # human labels are withheld from the audit slice
    stored = json.loads(read(spark, root, "rounds").filter("round = 1 AND published").collect()[0].audit_json)
    assert stored["claims"] == claims
    mixture = {t: 0.0 for t in TASKS} | {"<OD>": 1.0, "<REGION_TO_CATEGORY>": 1.0}

    def examples(min_precision):
        df = example_rows(build_training_examples(spark, root, 1, None, mixture, 0.0, min_precision))
        return df.select("image_id", "task", "region").collect()

    everything, strict = examples(None), examples(1.01)  # 1.01: no audited claim is trusted
    gold = {r.image_id: [g for g in r.regions if g.label]
            for r in read(spark, root, "gold_fld").filter("round = 1").collect()}
    human_only = {i for i, regs in gold.items() if regs and all(g.annotator.startswith("human:") for g in regs)}
    assert human_only and {r.image_id for r in strict if r.task == "<OD>"} == human_only
    assert len({r.image_id for r in everything if r.task == "<OD>"}) > len(human_only)
    by_box = {(i, tuple(round(v, 3) for v in g.bbox)): g.annotator for i, regs in gold.items() for g in regs}
    named = [by_box[(r.image_id, tuple(round(v, 3) for v in r.region))] for r in strict
             if r.task == "<REGION_TO_CATEGORY>"]
    assert named and all(a.startswith("human:") for a in named)
    assert len(named) < sum(r.task == "<REGION_TO_CATEGORY>" for r in everything)
