"""Training on FLD: pin examples to a Delta version, launch the recipe, track it in MLflow.

    python -m lakehouse.training --config configs/train_tiny.yaml --data run/data.json
    horovodrun -np 2 --gloo python -m lakehouse.training --data run/data.json

``florence2.recipe`` imports nothing of the lakehouse; this is where the two meet: the Petastorm
batch source, the pinned examples (``pin_examples``), the run's inputs in MLflow and the three
launchers (``run_training``: this process, ``horovodrun -np N``, ``horovod.spark.run``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from florence2 import recipe
from florence2.tasks import TASKS
from lakehouse.config import Settings
from lakehouse.reader import petastorm_batches
from lakehouse.spark import with_code_root

SOURCES = {"petastorm": petastorm_batches}
LAUNCHERS = ("local", "horovodrun", "spark")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_tiny.yaml"
# A small CPU budget concentrated on the tasks the learning report scores; every other task weighs 0
# (a mixture leaves a task it does not name at the default weight 1).
LEARNING_MIXTURE = {t: 0.0 for t in TASKS} | {"<OD>": 2.0, "<CAPTION>": 1.0, "<DETAILED_CAPTION>": 1.0,
                                              "<CAPTION_TO_PHRASE_GROUNDING>": 2.0, "<OCR_WITH_REGION>": 2.0, "<OCR>": 1.0}
# What a round's model trains on: the same, and <REGION_TO_CATEGORY>, which it answers when it relabels regions.
ROUND_MIXTURE = LEARNING_MIXTURE | {"<REGION_TO_CATEGORY>": 2.0}
# make demo's 9 minutes: <OD> alone for 5, then every task with <OD> most of the examples (12 copies of each,
# the rest at a quarter of ROUND_MIXTURE: 72%), so each answer format is trained from there on.  After <OD>
# alone, one minute of ROUND_MIXTURE even at 4% of the peak rate left <OD> answering a label and no box
# (<REGION_TO_CATEGORY>'s format); 5 minutes alone doubled AP50 over 3 (bench/results/demo_recipe.md).
DEMO_MIXTURE = {t: w / 4 for t, w in ROUND_MIXTURE.items()} | {"<OD>": 12.0}
DEMO_FIRST = "<OD>=5"
# The recipe settings of the best CPU learning figures (bench/results/learning_report_od9_one_schedule*.md);
# augmentation triples OD AP50 at 600 scenes and is neutral at 3,000 (learning_report_od_600_scenes_6min*.md);
# copying the prompt's words takes grounding R@1 from 0.05 to 0.65 (learning_report_od9_ovd0*_copy_curve.md).
LEARNED = ("lr=0.002", "warmup_steps=150", "region_prompts=true", "augment=dihedral", "copy_attention=1.0")
# The flywheel teaches a region label only where its claim was right this often on the audit slice.
TRUSTED_CLAIM_PRECISION = 0.5


def budget_overrides(minutes: float, checkpoint_every: int = 500, log_every: int = 100) -> list[str]:
    """Recipe overrides of a run budgeted in minutes (the schedule's cosine over the budget), batch 16."""
    return [f"max_minutes={minutes}", "max_steps=1000000", "epochs=1000", "batch_size=16",
            f"checkpoint_every={checkpoint_every}", f"log_every={log_every}"]


def first_phase(minutes: float, first: str | None = None) -> str | None:
    """The flywheel's curriculum: ``<OD>`` alone for the first 60% of ``minutes``, or ``first`` ('none': no phase)."""
    return None if first == "none" else first or f"<OD>={minutes * 0.6:g}"


def flywheel_train_args(minutes: float, first: str | None = None, mixture: dict | None = None) -> list[str]:
    """``jobs.train`` arguments of the flywheel bench's recipe: ``ROUND_MIXTURE`` (updated by ``mixture``), trusted
    label claims only, ``first_phase``, the learned settings, ``minutes`` of training."""
    phase = first_phase(minutes, first)
    return ([f"--mixture={json.dumps(ROUND_MIXTURE | (mixture or {}))}",
             f"--min-claim-precision={TRUSTED_CLAIM_PRECISION}"]
            + ([f"--first={phase}"] if phase else []) + [*LEARNED, *budget_overrides(minutes, 200, 50)])


def train(cfg: recipe.Config, data: dict, dist: recipe.Dist | None = None, log=print) -> dict:
    return recipe.train(cfg, data, dist, log, sources=SOURCES)


def _spark_fn(cfg_dict: dict, data: dict, env: dict):
    """Runs in each Horovod process that horovod.spark starts (must be importable)."""
    os.environ.update(env)
    return train(recipe.Config(**cfg_dict), data)


@dataclass(frozen=True)
class PinnedExamples:
    version: int          # training_examples Delta version
    round: int            # the FLD round it was built from
    files: list           # the train split's parquet files at that version
    rows: int             # train examples
    val_rows: int         # validation examples
    images: int = 0       # train images (rows of the table)


def pin_examples(spark, root, round_: int | None = None, version: int | None = None, mixture: dict | None = None,
                 val_fraction: float = 0.1, min_claim_precision: float | None = None) -> PinnedExamples:
    """Build ``training_examples`` from gold at ``round_`` (default: the latest published) unless ``version``
    pins an existing version; returns that version's train files."""
    from pyspark.sql import functions as F

    from lakehouse.examples import build_training_examples, example_count, write_training_examples
    from lakehouse.reader import delta_slice
    from lakehouse.rounds import latest_published_round
    from lakehouse.tables import current_version, read

    if version is None:
        rnd = round_ if round_ is not None else latest_published_round(spark, root)
        gold_version = current_version(spark, root, "gold_fld")
        df = build_training_examples(spark, root, rnd, gold_version, mixture, val_fraction, min_claim_precision)
        version = write_training_examples(spark, root, df, {"fld_round": rnd, "gold_version": gold_version,
                                                            "mixture": json.dumps(mixture) if mixture else None,
                                                            "val_fraction": val_fraction,
                                                            "min_claim_precision": min_claim_precision})
    ex = read(spark, root, "training_examples", version=version)
    sl = delta_slice(spark, root, version, "train")
    return PinnedExamples(version, ex.select(F.max("round")).collect()[0][0], list(sl.files), sl.rows,
                          example_count(ex.filter(F.col("split") == "val")), sl.images)


def training_tokenizer(spark, root, version: int, out_dir: Path) -> Path:
    """The tokenizer of a run trained from scratch: learned on the train split's targets (their words; the
    location tokens are added whole) and every prompt; kept when ``out_dir`` already has one (a resumed run)."""
    from florence2.tokenization import build_tokenizer
    from lakehouse.examples import example_rows
    from lakehouse.tables import read

    if not (out_dir / "tokenizer.json").exists():
        ex = example_rows(read(spark, root, "training_examples", version=version))
        texts = [r.target for r in ex.filter("split = 'train'").select("target").collect()]
        texts += [r.prompt for r in ex.select("prompt").distinct().collect()]
        build_tokenizer(texts, vocab_size=4000).save_pretrained(str(out_dir))
    return out_dir


def log_inputs(spark, root, cfg: recipe.Config, pinned: PinnedExamples, params: dict,
               first: PinnedExamples | None = None) -> None:
    """Into the active MLflow run: params, the dataset inputs (table, Delta version, round; a curriculum's
    first-phase version too) and the round's Great Expectations result."""
    import mlflow
    from pyspark.sql import functions as F

    from lakehouse.examples import example_rows
    from lakehouse.tables import read

    gate = (read(spark, root, "rounds").filter(f"round = {pinned.round} AND published")
            .orderBy(F.desc("attempt_at")).limit(1).collect())
    mlflow.log_params({**dataclasses.asdict(cfg), **params})
    mlflow.set_tags({"fld.round": pinned.round, "fld.examples_version": pinned.version,
                     "fld.examples_table": root.ident("training_examples"),
                     "fld.gold_version": gate[0]["gold_version"] if gate else "",
                     "fld.gate_success": bool(gate and gate[0]["gate_success"]),
                     **({"fld.first_phase_examples_version": first.version} if first else {})})
    for p, context in ((first, "training:first_phase"), (pinned, "training")):
        if p is None:
            continue
        train_df = example_rows(read(spark, root, "training_examples", version=p.version).filter("split = 'train'"))
        with warnings.catch_warnings():  # a dataset record, not a serving schema: missing ints cannot occur
            warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing.*")
            dataset = mlflow.data.from_spark(
                train_df, path=None if root.is_catalog else root.path("training_examples"),
                table_name=root.ident("training_examples") if root.is_catalog else None,
                version=str(p.version), name=f"training_examples@v{p.version}")
            mlflow.log_input(dataset, context=context, tags={"fld_round": str(p.round)})
    if gate:
        mlflow.log_dict(json.loads(gate[0]["gate_json"]), "quality/gate_result.json")


def launch(cfg: recipe.Config, data_file: Path, launcher: str = "local", np_: int = 2) -> dict:
    """Run the recipe on ``data.json`` in this process, under ``horovodrun`` or with ``horovod.spark.run``;
    returns rank 0's result."""
    import mlflow

    data = json.loads(Path(data_file).read_text())
    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    if launcher == "local":
        return train(cfg, data)
    if launcher == "horovodrun":
        cmd = [str(Path(sys.executable).with_name("horovodrun")), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo",
               sys.executable, "-m", "lakehouse.training", "--data", str(data_file),
               *[f"{k}={json.dumps(v)}" for k, v in dataclasses.asdict(cfg).items()]]
        subprocess.run(cmd, check=True, env=with_code_root({**os.environ, **env, "FLD_RECIPE_OWNS_RUN": "0"}))
        return json.loads((Path(cfg.output_dir) / "result.json").read_text())
    if launcher == "spark":
        import horovod.spark

        return horovod.spark.run(_spark_fn, args=(dataclasses.asdict(cfg), data, env), num_proc=np_, use_gloo=True,
                                 verbose=0)[0]
    raise ValueError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")


def run_training(settings: Settings, cfg: recipe.Config, round_: int | None = None, examples_version: int | None = None,
                 mixture: dict | None = None, val_fraction: float = 0.1, launcher: str = "local", np_: int = 2,
                 run_name: str | None = None, register: str | None = "florence2", first: str | None = None,
                 min_claim_precision: float | None = None, log=print) -> dict:
    """Pin the examples, write ``data.json``, then in one MLflow run: log the inputs, train, log the model as
    a pyfunc, register it and point ``candidate`` at it.

    ``first`` (``TASK[,TASK]=MINUTES``) is a curriculum under one schedule: a second pinned version holding
    only those tasks trains for MINUTES of ``cfg.max_minutes`` (``stop_minutes``), then the whole mixture
    resumes that checkpoint in the same run directory, so the learning rate decays on instead of warming
    up again.  Both phases share the whole mixture's tokenizer."""
    import mlflow

    from florence2.pyfunc import log_and_register
    from lakehouse.examples import default_mixture
    from lakehouse.rounds import latest_published_round
    from lakehouse.spark import get_spark
    from lakehouse.tables import ensure_tables
    from lakehouse.tracking import configure_mlflow

    spark = get_spark(settings, "fld-train")
    root = settings.tables
    ensure_tables(spark, root)
    pinned_first = None
    if first:
        tasks, first_minutes = recipe.parse_first(first, cfg.max_minutes, default_mixture())
        whole = {**default_mixture(), **(mixture or {})}
        only = {t: w if t in tasks else 0.0 for t, w in whole.items()}
        if examples_version is None:  # the first phase's version first: the latest version stays the whole mixture
            round_ = round_ if round_ is not None else latest_published_round(spark, root)
            pinned_first = pin_examples(spark, root, round_, None, only, val_fraction, min_claim_precision)
    pinned = pin_examples(spark, root, round_, examples_version, mixture, val_fraction, min_claim_precision)
    if first and pinned_first is None:
        pinned_first = pin_examples(spark, root, pinned.round, None, only, val_fraction, min_claim_precision)
    for p, what in ((pinned_first, f"first phase ({first})"), (pinned, "whole mixture")):
        if p is not None:
            log(f"[train] {what}: training_examples v{p.version} (round {p.round}): {p.rows} train examples of "
                f"{p.images} images in {len(p.files)} files, {p.val_rows} val examples")
    ranks = np_ if launcher != "local" else 1
    if pinned_first is not None and pinned_first.rows < cfg.batch_size * ranks:
        log(f"[train] phase 1 skipped: {first} has {pinned_first.rows} train examples, fewer than one batch "
            f"({cfg.batch_size} x {ranks} ranks); the whole mixture trains for all of max_minutes")
        pinned_first = None
    name = run_name or f"round{pinned.round}-v{pinned.version}"
    run_dir = Path(cfg.output_dir if os.path.isabs(cfg.output_dir) else settings.home / "runs" / name)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
    tok_dir = Path(cfg.init_from) if cfg.init_from else training_tokenizer(spark, root, pinned.version,
                                                                            run_dir / "tokenizer")
    for p, file in ((pinned_first, "data_first.json"), (pinned, "data.json")):
        if p is not None:
            (run_dir / file).write_text(json.dumps({"files": p.files, "rows": p.rows, "images": p.images,
                                                    "version": p.version, "split": "train",
                                                    "tokenizer": str(tok_dir)}, indent=1))

    configure_mlflow(settings)
    with mlflow.start_run(run_name=name) as run:
        log_inputs(spark, root, cfg, pinned, {"launcher": launcher, "np": np_ if launcher != "local" else 1,
                                              "mixture": json.dumps(mixture) if mixture else "uniform",
                                              "first_phase": first or "",
                                              "min_claim_precision": min_claim_precision}, pinned_first)
        cfg = dataclasses.replace(cfg, mlflow_run_id=run.info.run_id)
        phase1 = None
        if pinned_first is not None:
            log(f"[train] phase 1: {first} (stops at {first_minutes:g} of {cfg.max_minutes:g} min)")
            phase1 = launch(dataclasses.replace(cfg, stop_minutes=first_minutes), run_dir / "data_first.json",
                            launcher, np_)
            log(f"[train] phase 2: the whole mixture resumes step {phase1['steps']}")
        result = launch(cfg, run_dir / "data.json", launcher, np_)
        if phase1:
            result = result | {"first_phase": phase1}
            mlflow.log_metric("first_phase_steps", phase1["steps"])
        mlflow.log_metrics({"final_loss": result["final_loss"] or 0.0, "train_examples_per_s": result["examples_per_s"]})
        reg = log_and_register(run_dir / "model", register or None)
        log(f"[train] run {run.info.run_id}: {result}; model {reg}")
        return {"run_id": run.info.run_id, "result": result, "model": reg, "examples_version": pinned.version,
                "round": pinned.round, "model_dir": str(run_dir / "model"),
                "first_phase_examples_version": pinned_first.version if pinned_first else None}


def main(argv=None) -> dict:
    return recipe.main(argv, sources=SOURCES)


if __name__ == "__main__":
    main()
