"""Train Florence-2 on FLD: pin examples to a Delta version, launch the recipe, track it in MLflow.

1. Build ``training_examples`` from gold at a round (default: the latest published) unless
   ``--examples-version`` pins an existing version.
2. Write ``data.json``: the parquet files of that version's train split, their row count
   and the tokenizer directory.
3. Open an MLflow run: params, the dataset input (table, Delta version, round), the round's
   Great Expectations result; then run the recipe: in this process (``--launcher local``),
   under ``horovodrun -np N`` or with ``horovod.spark.run`` on the Spark cluster.
4. Log the trained model as a pyfunc, register it, and point the ``candidate`` alias at it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from jobs.common import base_parser, settings_from
from lakehouse.tracking import configure_mlflow


def _spark_fn(cfg_dict: dict, data: dict, env: dict):
    """Runs in each Horovod process that horovod.spark starts (must be importable)."""
    os.environ.update(env)
    from florence2.recipe import Config
    from lakehouse.training import train

    return train(Config(**cfg_dict), data)


def main(argv=None) -> dict:
    p = base_parser(__doc__)
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "train_tiny.yaml"))
    p.add_argument("--round", type=int, default=None)
    p.add_argument("--examples-version", type=int, default=None, help="reuse this training_examples version")
    p.add_argument("--mixture", default=None, help='JSON task weights, e.g. {"<OCR>": 0.5, "<OD>": 2}')
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--launcher", choices=("local", "horovodrun", "spark"), default="local")
    p.add_argument("--np", type=int, default=2, help="Horovod processes (horovodrun / spark)")
    p.add_argument("--run-name", default=None)
    p.add_argument("--register", default="florence2", help="registered model name ('' to skip)")
    p.add_argument("overrides", nargs="*", help="recipe config overrides key=value")
    args = p.parse_args(argv)
    s = settings_from(args)

    import mlflow
    from pyspark.sql import functions as F

    from florence2.pyfunc import log_and_register
    from florence2.recipe import load_config
    from florence2.tokenization import build_tokenizer
    from lakehouse.examples import build_training_examples, write_training_examples
    from lakehouse.reader import delta_slice
    from lakehouse.rounds import latest_published_round
    from lakehouse.spark import get_spark
    from lakehouse.tables import current_version, ensure_tables, read

    spark = get_spark(s, "fld-train")
    root = s.tables
    ensure_tables(spark, root)
    cfg = load_config(args.config, args.overrides)
    if args.examples_version is None:
        rnd = args.round if args.round is not None else latest_published_round(spark, root)
        gold_version = current_version(spark, root, "gold_fld")
        df = build_training_examples(spark, root, rnd, gold_version, json.loads(args.mixture) if args.mixture else None,
                                     args.val_fraction)
        version = write_training_examples(spark, root, df, {"fld_round": rnd, "gold_version": gold_version,
                                                            "mixture": args.mixture, "val_fraction": args.val_fraction})
    else:
        version = args.examples_version
    ex = read(spark, root, "training_examples", version=version)
    rnd = ex.select(F.max("round")).collect()[0][0]
    sl = delta_slice(spark, root, version, "train")
    n_val = ex.filter(F.col("split") == "val").count()
    print(f"[train] training_examples v{version} (round {rnd}): {sl.rows} train rows in {len(sl.files)} files, "
          f"{n_val} val rows")

    run_dir = Path(cfg.output_dir if os.path.isabs(cfg.output_dir) else s.home / "runs" / (args.run_name or f"round{rnd}-v{version}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
    tok_dir = run_dir / "tokenizer"
    if cfg.init_from:
        tok_dir = Path(cfg.init_from)
    elif not (tok_dir / "tokenizer.json").exists():
        texts = [r.target for r in ex.filter("split = 'train'").select("target").collect() if "<loc_" not in r.target]
        texts += [r.prompt for r in ex.select("prompt").distinct().collect()]
        build_tokenizer(texts, vocab_size=4000).save_pretrained(str(tok_dir))
    data = {"files": list(sl.files), "rows": sl.rows, "version": version, "split": "train", "tokenizer": str(tok_dir)}
    (run_dir / "data.json").write_text(json.dumps(data, indent=1))

    configure_mlflow(s)
    gate = read(spark, root, "rounds").filter(f"round = {rnd} AND published").orderBy(F.desc("attempt_at")).limit(1).collect()
    with mlflow.start_run(run_name=args.run_name or f"round{rnd}-v{version}") as run:
        mlflow.log_params({**dataclasses.asdict(cfg), "launcher": args.launcher, "np": args.np if args.launcher != "local" else 1,
                           "mixture": args.mixture or "uniform"})
        mlflow.set_tags({"fld.round": rnd, "fld.examples_version": version, "fld.examples_table": root.ident("training_examples"),
                         "fld.gold_version": gate[0]["gold_version"] if gate else "", "fld.gate_success": bool(gate and gate[0]["gate_success"])})
        train_df = read(spark, root, "training_examples", version=version).filter("split = 'train'").drop("content")
        dataset = mlflow.data.from_spark(train_df, path=root.path("training_examples") if not root.is_catalog else None,
                                         table_name=root.ident("training_examples") if root.is_catalog else None,
                                         version=str(version), name=f"training_examples@v{version}")
        mlflow.log_input(dataset, context="training", tags={"fld_round": str(rnd)})
        if gate:
            mlflow.log_dict(json.loads(gate[0]["gate_json"]), "quality/gate_result.json")
        cfg = dataclasses.replace(cfg, mlflow_run_id=run.info.run_id)
        env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        if args.launcher == "local":
            from lakehouse.training import train

            result = train(cfg, data)
        elif args.launcher == "horovodrun":
            cmd = [str(Path(sys.executable).with_name("horovodrun")), "-np", str(args.np), "-H", f"localhost:{args.np}", "--gloo", sys.executable, "-m",
                   "lakehouse.training", "--data", str(run_dir / "data.json"),
                   *[f"{k}={json.dumps(v)}" for k, v in dataclasses.asdict(cfg).items()]]
            subprocess.run(cmd, check=True, env={**os.environ, **env, "FLD_RECIPE_OWNS_RUN": "0"})
            result = json.loads((run_dir / "result.json").read_text())
        else:
            import horovod.spark

            results = horovod.spark.run(_spark_fn, args=(dataclasses.asdict(cfg), data, env), num_proc=args.np,
                                        use_gloo=True, verbose=0)
            result = results[0]
        mlflow.log_metrics({"final_loss": result["final_loss"] or 0.0, "train_examples_per_s": result["examples_per_s"]})
        reg = log_and_register(run_dir / "model", args.register or None)
        print(f"[train] run {run.info.run_id}: {result}; model {reg}")
        return {"run_id": run.info.run_id, "result": result, "model": reg, "examples_version": version, "round": rnd,
                "model_dir": str(run_dir / "model")}


if __name__ == "__main__":
    main()
