"""A refinement round: annotate -> filter -> merge -> gate -> publish.

Round 1 annotates bronze images with the offline specialists and takes the
sources' human labels.  Round N > 1 starts from round N-1's filtered annotations
and adds a model specialist's predictions (the model trained on round N-1), so
the next round's data is refined by the model: the flywheel.  The round's
annotations land in silver; the merged FLD rows are published to gold only if
the Great Expectations gate passes.  Every attempt is a row in ``rounds``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field

from pyspark.sql import functions as F

from lakehouse.config import Settings
from lakehouse.acceptance import AcceptanceConfig, apply_acceptance, calibrate_models, label_tally
from lakehouse.faults import crash_point
from lakehouse.filters import FilterConfig, apply_filters
from lakehouse.fld import build_gold, human_annotations, publish_gold
from lakehouse.specialists import from_config, region_lists, run_specialists, split_errors
from lakehouse.statistics import round_statistics
from lakehouse.tables import TABLES, TableRoot, current_version, ensure_tables, merge_insert, read
from quality import audit
from quality.gate import GateConfig, GateResult, annotations_view, audit_view, errors_view, gold_view, run_gate

DEFAULT_SPECIALISTS = ({"type": "tesseract"}, {"type": "rapidocr"}, {"type": "contours"})


class GateFailed(RuntimeError):
    """The round's data failed its quality gate; nothing was published."""


class RoundBusy(RuntimeError):
    """Another run of the same round holds its lock."""


@contextlib.contextmanager
def round_lock(home, round_: int):
    """One run per round at a time: an exclusive lock file under ``$FLD_HOME/locks``.  A lock left by
    a killed run on this host (its process is gone) is taken over, so a rerun after a crash proceeds."""
    import os
    import socket
    from pathlib import Path

    path = Path(home) / "locks" / f"round-{int(round_)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                held = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                held = {}
            if held.get("host") == me["host"] and held.get("pid") and not _alive(held["pid"]):
                path.unlink(missing_ok=True)  # its owner was killed: take over
                continue
            raise RoundBusy(f"round {round_} is already being run (pid {held.get('pid')} on {held.get('host')} "
                            f"since {held.get('since')}); wait for it, or remove {path} if that run is gone") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RoundConfig:
    round: int
    specialists: list = field(default_factory=lambda: [dict(s) for s in DEFAULT_SPECIALISTS])
    model: str | None = None           # round > 1: the Florence-2 model (directory or MLflow URI) that refines
    relabel: bool = True               # ... and names the published round's regions (``Florence2Labels``)
    filters: FilterConfig = field(default_factory=FilterConfig)
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    image_limit: int | None = None     # annotate only this many images (smoke runs)


def gate_config(cfg: RoundConfig) -> GateConfig:
    """The round's gate, with the limits it shares with the filters taken from the filters' config, so
    raising a filter limit cannot make every image above the old one fail the gate."""
    if cfg.gate.max_regions_per_image is None:
        return dataclasses.replace(cfg.gate, max_regions_per_image=cfg.filters.max_regions_per_image)
    return cfg.gate


def latest_published_round(spark, root: TableRoot) -> int | None:
    r = read(spark, root, "rounds").filter("published").agg(F.max("round").alias("r")).collect()[0]["r"]
    return r


def published_versions(spark, root: TableRoot, round_: int) -> dict | None:
    """The silver and gold versions (and audit scores) the latest *published* attempt of a round recorded,
    or None.

    Readers pin these: a crash after gold was merged but before the ``rounds`` row, or a later
    refused rerun of the round that replaced its silver slice, must not change what they read."""
    rows = (read(spark, root, "rounds").filter(F.col("published") & (F.col("round") == round_))
            .orderBy(F.col("attempt_at").desc()).select("silver_version", "gold_version", "audit_json").limit(1)
            .collect())
    return {"silver": rows[0]["silver_version"], "gold": rows[0]["gold_version"],
            "audit": json.loads(rows[0]["audit_json"] or "{}")} if rows else None


def round_history(spark, root: TableRoot) -> list[dict]:
    """Every round attempt, oldest first: round, time, published, audit scores per family."""
    rows = read(spark, root, "rounds").orderBy("attempt_at").select("round", "attempt_at", "published", "audit_json").collect()
    return [{"round": r["round"], "attempt_at": r["attempt_at"], "published": r["published"],
             "audit": json.loads(r["audit_json"]) if r["audit_json"] else {}} for r in rows]


def audit_table(history: list[dict]) -> tuple[tuple, list[tuple]]:
    """(header, rows) of audit F1 per family for each attempt, for ``print_table``."""
    header = ("round", "gate", "audit images", *(f"{f} F1" for f in audit.FAMILIES))
    rows = [(h["round"], "published" if h["published"] else "REFUSED", h["audit"].get("images", 0),
             *(f"{h['audit'][f]['f1']:.3f}" if f in h["audit"] else "-" for f in audit.FAMILIES)) for h in history]
    return header, rows


def audit_reference(spark, root: TableRoot, settings: Settings, fraction: float) -> dict[str, dict]:
    """The audit slice of bronze and its trusted reference annotations."""
    ids = {r["image_id"] for r in read(spark, root, "bronze_images").filter(audit.audit_column(fraction))
           .select("image_id").collect()}
    return audit.reference(spark, read(spark, root, "bronze_labels"), ids, settings.synthetic_dir / "ground_truth.jsonl")


def _audit(spark, root: TableRoot, ref: dict, candidate, cfg: RoundConfig, log):
    """Score the round's FLD rows on the audit slice; compare with the latest published round.

    The comparison is on the audit images both rounds cover, each scored against the same
    reference: a round over more data has a larger audit slice, and comparing its score with one
    taken on a smaller slice refuses rounds for sampling noise (issue 10's scale bench saw a 4-point
    "drop" when round 1 was rerun over twice the images with the same specialists)."""
    acfg = cfg.gate.audit
    rows = [r.asDict(recursive=True) for r in candidate.filter(F.col("image_id").isin(sorted(ref))).collect()] if ref else []
    scores = audit.score(rows, ref)
    log(f"[round {cfg.round}] audit ({scores['images']} images): " + ", ".join(
        f"{k} F1 {v['f1']:.3f}" for k, v in scores.items() if k != "images"))
    scores["claims"] = _claims(rows, ref)
    prev_round = latest_published_round(spark, root)
    if prev_round is None or not ref:
        return scores, []
    published = (read(spark, root, "gold_fld", version=published_versions(spark, root, prev_round)["gold"])
                 .filter((F.col("round") == prev_round) & F.col("image_id").isin(sorted(ref))))
    prev_rows = [r.asDict(recursive=True) for r in published.collect()]
    common = {r["image_id"] for r in prev_rows}
    if not common:
        log(f"[round {cfg.round}] audit: published round {prev_round} covers none of these audit images; not compared")
        return scores, []
    shared = {i: t for i, t in ref.items() if i in common}
    now = audit.score([r for r in rows if r["image_id"] in common], shared)
    before = audit.score(prev_rows, shared)
    checks = [dict(c, published_round=prev_round, images=len(shared)) for c in audit.regressions(now, before, acfg)]
    return scores, checks


def _claims(rows: list[dict], ref: dict) -> list[list]:
    """[annotator, label, right, all] for every label an annotator gave a region of the FLD rows on the
    audit slice (``lakehouse.acceptance.label_tally``): what the next training's examples trust."""
    anns = [{"kind": "region", "image_id": r["image_id"], "bbox": g["bbox"], "text": g["label"],
             "annotator": g["annotator"]} for r in rows for g in r.get("regions") or [] if g["label"]]
    return [[a, lab, hit, n] for (a, lab), (hit, n) in sorted(label_tally(anns, ref).items())]


def _images(spark, root: TableRoot, cfg: RoundConfig):
    images = read(spark, root, "bronze_images")
    if cfg.image_limit:
        images = images.orderBy("image_id").limit(cfg.image_limit)
    return images


def _annotate(spark, root: TableRoot, cfg: RoundConfig, log):
    """(annotations, specialists, raw specialist output with its error rows, the published round's labels of
    this round's relabellers or None); the raw output is persisted so that annotations and errors come from
    one run of the specialists."""
    images = _images(spark, root, cfg)
    if cfg.round == 1:
        specialists = from_config(cfg.specialists)
        log(f"[round 1] specialists: {', '.join(f'{s.name}@{s.version}' for s in specialists)} + human labels")
        # human labels of the audit slice are its reference, so they stay out of the merge
        human = human_annotations(spark, root, 1).filter(~audit.audit_column(cfg.gate.audit.fraction))
        raw = run_specialists(images, specialists, 1).persist()
        anns = split_errors(raw)[0].unionByName(human.join(images.select("image_id"), "image_id", "left_semi"))
        return anns, specialists, raw, None
    if not cfg.model and not cfg.specialists:
        raise ValueError(f"round {cfg.round} needs --model (the Florence-2 model trained on round {cfg.round - 1}) "
                         "or specialists to refine with")
    # refine what was published: a refused round's silver is kept for inspection, never built on
    base = read(spark, root, "rounds").filter(F.col("published") & (F.col("round") < cfg.round)) \
        .agg(F.max("round").alias("r")).collect()[0]["r"]
    if base is None:
        raise ValueError(f"no round before {cfg.round} is published; run round 1 first")
    prev = read(spark, root, "silver_annotations", version=published_versions(spark, root, base)["silver"]) \
        .filter(F.col("round") == base)
    models = [{"type": "florence2", "model": cfg.model}] if cfg.model else []
    if cfg.model and cfg.relabel:
        models.append({"type": "florence2_labels", "model": cfg.model})
    specialists = from_config(models + list(cfg.specialists or []))
    log(f"[round {cfg.round}] refining published round {base} with {', '.join(s.name for s in specialists)}")
    # the regions to name: the published round's, except humans' (trusted as they are)
    regions = region_lists(prev.filter(~F.col("annotator").startswith("human:")))
    raw = run_specialists(images, specialists, cfg.round, regions).persist()
    # an annotator that runs again replaces what it said last round
    this_round = prev.withColumn("round", F.lit(cfg.round)).join(images.select("image_id"), "image_id", "left_semi")
    carried = this_round.filter(~F.col("annotator").isin([sp.name for sp in specialists]))
    earlier = this_round.filter(F.col("annotator").isin([sp.name for sp in specialists if sp.relabels])
                                & (F.col("kind") == "region"))
    return carried.unionByName(split_errors(raw)[0]), specialists, raw, earlier


def _keep_earlier_labels(kept, earlier):
    """A box an earlier round renamed keeps that label unless this round's naming of it was accepted: the
    specialist row it replaced is gone, so dropping the new label alone would drop the box."""
    if earlier is None:
        return kept
    return kept.unionByName(earlier.join(kept.select("image_id", "annotator", "bbox"),
                                         ["image_id", "annotator", "bbox"], "left_anti"))


def _acceptance(ref: dict, specialists, cfg: RoundConfig, log):
    """The round's acceptance step for ``apply_filters`` (None: no model among the specialists): model
    annotations pass only where calibrated on the audit slice or confirmed (lakehouse.acceptance)."""
    models = {s.name for s in specialists if s.is_model}
    relabelers = {s.name for s in specialists if s.relabels}
    if not models:
        return None

    def accept(anns):
        audited = [r.asDict() for r in anns.filter(F.col("image_id").isin(sorted(ref))).collect()] if ref else []
        cal = calibrate_models(audited, ref, models, cfg.acceptance)
        log(f"[round {cfg.round}] acceptance thresholds (target precision {cfg.acceptance.target_precision}): "
            f"{cal.summary()}; label precision on the audit slice: "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cal.label_precision.items()))
            + "; by label claimed (right/all): "
            + "; ".join(f"{a}: " + " ".join(f"{lab} {h}/{n}" for (b, lab), (h, n) in sorted(cal.by_label.items()) if b == a)
                        for a in sorted(cal.label_precision))
            + "; where a model renamed a specialist's label (model right/specialist right/all): "
            + cal.dispute_summary())
        return apply_acceptance(anns, models, cal, cfg.acceptance, relabelers)

    return accept


def _replace_round(root: TableRoot, name: str, df, round_: int) -> None:
    root.save(df.write.format("delta").mode("overwrite").option("replaceWhere", f"round = {int(round_)}"), name)


def run_round(spark, settings: Settings, cfg: RoundConfig, log=print) -> dict:
    with round_lock(settings.home, cfg.round):
        return _run_round(spark, settings, cfg, log)


def _run_round(spark, settings: Settings, cfg: RoundConfig, log) -> dict:
    root = settings.tables
    ensure_tables(spark, root)
    t0 = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    anns, specialists, raw, earlier = _annotate(spark, root, cfg, log)
    anns = anns.persist()
    errors = split_errors(raw)[1]
    n_images = _images(spark, root, cfg).count()
    error_counts = {r["annotator"]: r["n"] for r in errors.groupBy("annotator").agg(F.count("*").alias("n")).collect()}
    log(f"[round {cfg.round}] annotate: {anns.count()} annotations of {n_images} images"
        + ("; errors (image skipped by that specialist, see annotation_errors): "
           + ", ".join(f"{k} {v}" for k, v in sorted(error_counts.items())) if error_counts else ""))
    _replace_round(root, "annotation_errors", errors, cfg.round)
    crash_point("round:annotated")
    ref = audit_reference(spark, root, settings, cfg.gate.audit.fraction)
    kept, removed = apply_filters(anns, cfg.filters, _acceptance(ref, specialists, cfg, log))
    kept = _keep_earlier_labels(kept, earlier).persist()
    removed_rows = removed.collect()
    log(f"[round {cfg.round}] filter: kept {kept.count()}, removed {sum(r['removed'] for r in removed_rows)}")
    # silver holds the round's filtered annotations; one atomic replace of the round's slice (rerun-safe)
    _replace_round(root, "silver_annotations", kept, cfg.round)
    flog = spark.createDataFrame(
        [(cfg.round, r["step"], r["kind"], r["annotator"], r["reason"], int(r["removed"]), t0) for r in removed_rows],
        TABLES["filter_log"].schema)
    _replace_round(root, "filter_log", flog, cfg.round)
    crash_point("round:silver")

    silver = read(spark, root, "silver_annotations").filter(F.col("round") == cfg.round)
    candidate = build_gold(silver, cfg.round).persist()
    log(f"[round {cfg.round}] merge: {candidate.count()} FLD rows; running the quality gate")
    scores, checks = _audit(spark, root, ref, candidate, cfg, log)
    views = {"annotations": annotations_view(silver, read(spark, root, "bronze_images")), "gold": gold_view(candidate)}
    if checks:
        views["audit"] = audit_view(spark, checks)
    views["errors"] = errors_view(spark, [s.name for s in specialists], n_images, error_counts)
    gate = run_gate(settings.home, views, gate_config(cfg))
    record_gate(spark, root, cfg.round, gate)
    crash_point("round:gated")
    log(gate.summary())
    stats = round_statistics(candidate, silver)
    if gate.success:
        publish_gold(spark, root, candidate, cfg.round)
        crash_point("round:published")
    row = {"round": cfg.round, "attempt_at": t0, "published": gate.success, "gate_success": gate.success,
           "silver_version": current_version(spark, root, "silver_annotations"),
           "gold_version": current_version(spark, root, "gold_fld"),
           "bronze_version": current_version(spark, root, "bronze_images"), "model": cfg.model,
           "specialists": json.dumps([f"{s.name}@{s.version}" for s in specialists]), "stats_json": json.dumps(stats),
           "gate_json": json.dumps(gate.per_suite, default=str), "audit_json": json.dumps(scores)}
    schema = TABLES["rounds"].schema
    merge_insert(spark, root, "rounds", spark.createDataFrame([tuple(row[f] for f in schema.fieldNames())], schema),
                 ["round", "attempt_at"])
    anns.unpersist()
    raw.unpersist()
    kept.unpersist()
    candidate.unpersist()
    result = {"round": cfg.round, "published": gate.success, "gate": gate, "stats": stats, "audit": scores,
              "gold_version": row["gold_version"], "silver_version": row["silver_version"]}
    if not gate.success:
        raise GateFailed(f"round {cfg.round} not published; latest published round stays "
                         f"{latest_published_round(spark, root)}\n{gate.summary()}")
    return result


def record_gate(spark, root: TableRoot, round_: int, result: GateResult) -> None:
    """One ``quality_results`` row per suite of a gate run."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    run_id = f"round-{round_}-{now:%Y%m%dT%H%M%S%f}"
    rows = [(run_id, round_, name, r["success"], r["evaluated"], len(r["failed"]), json.dumps(r["failed"]),
             json.dumps(r, default=str), result.docs, now) for name, r in result.per_suite.items()]
    df = spark.createDataFrame(rows, TABLES["quality_results"].schema)
    merge_insert(spark, root, "quality_results", df, ["run_id", "suite"])
