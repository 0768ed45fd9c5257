"""Evaluation data and bookkeeping around ``florence2.evaluation``'s protocol: the validation split of a
pinned ``training_examples`` version, referring expressions from the synthetic world's truth, any
COCO-format folder (read by the COCO source adapter ingest uses), MLflow logging, and the champion
through MLflow on freshly generated scenes (promotion is in ``lakehouse.tracking``)."""
from __future__ import annotations

import collections
import io
import json
from pathlib import Path

from florence2.evaluation import evaluate_examples, score
from lakehouse.config import Settings


def synthetic_referring_examples(truth_dir: Path, images, image_ids: set, limit: int) -> list[dict]:
    """Referring-expression examples from the synthetic ground truth of the given images (``images``: a
    DataFrame of ``bronze_images``): segmentation (RES) and the expression's box (REC, as open-vocabulary
    detection)."""
    from florence2.targets import build_examples, from_synthetic
    from lakehouse.images import read_stored

    truth = [json.loads(x) for x in open(Path(truth_dir) / "ground_truth.jsonl")]
    truth = [t for t in truth if t["image_id"] in image_ids]
    content = {r.image_id: read_stored(r.content_path) for r in
               images.filter(images.image_id.isin([t["image_id"] for t in truth])).collect()}
    out = []
    for t in truth:
        if t["image_id"] not in content:
            continue
        for e in build_examples(from_synthetic(t), ["<REFERRING_EXPRESSION_SEGMENTATION>", "<OPEN_VOCABULARY_DETECTION>"]):
            if e.task == "<OPEN_VOCABULARY_DETECTION>" and not e.refers:  # a category's boxes: not REC
                continue
            out.append({"image": content[t["image_id"]], "width": t["width"], "height": t["height"], "task": e.task,
                        "text_input": e.text, "region": None, "target": e.target, "refers": e.refers})
    return out[:limit]


def coco_folder_examples(folder: Path, limit: int | None = None) -> list[dict]:
    """A COCO-format folder (``images/`` + ``annotations/*.json``) as <OD> and <CAPTION> examples, parsed by
    the same adapter that ingests such folders (``lakehouse.sources.coco``)."""
    from PIL import Image

    from florence2.locations import box_tokens
    from lakehouse.sources.coco import CocoJSON

    folder = Path(folder).resolve()
    labels, uris = collections.defaultdict(list), {}
    for f in sorted((folder / "annotations").glob("*.json")):
        for row in CocoJSON(skip_crowd=True).parse(str(f), str(folder.parent)):
            if row["error_reason"]:
                raise ValueError(f"{f}: {row['original_id']}: {row['error_reason']}: {row['error_detail']}")
            iid = row["original_id"].split("#", 1)[1]
            uris[iid] = row["uri"]
            labels[iid] += row["labels"]
    out = []
    for iid in sorted(uris, key=lambda k: (len(k), k))[:limit]:
        data = Path(uris[iid]).read_bytes()
        w, h = Image.open(io.BytesIO(data)).size
        boxes = [lab for lab in labels[iid] if lab["kind"] == "box"]
        if boxes:
            out.append({"image": data, "width": w, "height": h, "task": "<OD>",
                        "target": "".join(b["text"] + box_tokens(b["bbox"], (w, h)) for b in boxes)})
        for c in [lab["text"] for lab in labels[iid] if lab["kind"] == "caption"][:1]:
            out.append({"image": data, "width": w, "height": h, "task": "<CAPTION>", "target": c})
    return out


def validation_examples(spark, settings: Settings, version: int | None, limit: int,
                        synthetic_referring: bool = False) -> tuple[list[dict], int]:
    """(examples, version): the val split of ``training_examples`` at ``version`` (default: latest)."""
    from lakehouse.examples import example_rows
    from lakehouse.tables import current_version, read

    root = settings.tables
    version = version if version is not None else current_version(spark, root, "training_examples")
    rows = (example_rows(read(spark, root, "training_examples", version=version).filter("split = 'val'"), True)
            .orderBy("example_id").limit(limit).collect())
    exs = [dict(r.asDict(), image=bytes(r.content)) for r in rows]
    if synthetic_referring:
        exs += synthetic_referring_examples(settings.synthetic_dir, read(spark, root, "bronze_images"),
                                            {r.image_id for r in rows}, limit)
    return exs, version


def log_evaluation(results: dict, model_uri: str) -> dict:
    """One MLflow run with each source's metrics and baselines and the ranking ``score``."""
    import mlflow

    with mlflow.start_run(run_name=f"evaluate {model_uri}") as run:
        mlflow.set_tag("fld.evaluates", model_uri)
        for name, r in results.items():
            mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in r["model"].items()})
            mlflow.log_metrics({f"{name}.baseline.{k}": float(v) for k, v in r["baseline"].items()})
        primary = score(results.get("val", results.get("coco", {})).get("model", {}))
        mlflow.log_metric("score", primary)
        mlflow.log_dict(results, "evaluation.json")
    return results | {"score": primary, "run_id": run.info.run_id}


def evaluate(settings: Settings, model_uri: str, examples_version: int | None = None, coco: str | None = None,
             limit: int = 200, synthetic_referring: bool = False) -> dict:
    """Score a model (directory or MLflow URI) on the val split (unless only ``coco`` is given) and/or a
    COCO folder, and log it."""
    from florence2.predictor import Predictor
    from lakehouse.specialists.florence import resolve_model_dir
    from lakehouse.tracking import configure_mlflow

    configure_mlflow(settings)
    predictor = Predictor.from_pretrained(resolve_model_dir(model_uri), max_new_tokens=256)
    results = {}
    if coco is None or examples_version is not None:
        from lakehouse.spark import get_spark

        exs, version = validation_examples(get_spark(settings, "fld-evaluate"), settings, examples_version, limit,
                                           synthetic_referring)
        results["val"] = evaluate_examples(predictor, exs) | {"examples_version": version}
    if coco:
        results["coco"] = evaluate_examples(predictor, coco_folder_examples(Path(coco), limit)) | {"folder": coco}
    return log_evaluation(results, model_uri)


class PyfuncPredictor:
    """A logged/registered model loaded through MLflow (what ``mlflow models serve`` runs), behind the
    predictor interface ``evaluate_examples`` calls."""

    def __init__(self, model_uri: str, batch: int = 16):
        import mlflow

        self.model, self.batch = mlflow.pyfunc.load_model(model_uri), batch

    def predict(self, requests) -> list[dict]:
        import base64

        import pandas as pd

        out = []
        for i in range(0, len(requests), self.batch):
            part = requests[i:i + self.batch]
            df = pd.DataFrame([{"image": base64.b64encode(bytes(r.image)).decode(), "task": r.task, "text": r.text,
                                "region": None if r.region is None else json.dumps(list(r.region))} for r in part])
            res = self.model.predict(df)
            out += [{"task": t, "text": raw, "answer": json.loads(a)}
                    for t, raw, a in zip(res["task"], res["raw_text"], res["answer"])]
        return out


def fresh_scenes(model_uri: str, n_images: int = 50, seed: int = 10_007, tasks=("<OD>",)) -> dict:
    """Score a model, loaded through MLflow, on synthetic scenes generated now from ``seed`` (none of them
    in any training set built from another seed), next to the trivial baselines."""
    from lakehouse.synthetic import synthetic_rows

    rows = synthetic_rows(n_images, seed, list(tasks))
    res = evaluate_examples(PyfuncPredictor(model_uri), [{"image": r["content"], **r} for r in rows])
    return res | {"model_uri": model_uri, "images": n_images, "seed": seed}
