"""Training examples for the prompt tasks, built from FLD at a pinned round or Delta version.

Each published FLD row becomes one ``training_examples`` row: the image once, and its
(task, prompt, target) examples for every task its annotations support
(``florence2.targets``), which readers sample from after decoding the image once.  Task mixture weights scale
how many examples of a task are kept (0 drops the task; 0.5 keeps about half, by a
stable hash; 2 repeats each twice).  The train/validation split is keyed on the
image hash, so an image and all its examples are on one side, whatever the round.
"""
from __future__ import annotations

import functools
import hashlib
import json

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from florence2.targets import ImageAnnotations, Phrase, Region, Word, build_examples
from lakehouse.images import read_stored
from lakehouse.layout import image_row
from lakehouse.spark import json_columns, parse_json_columns
from lakehouse.tables import EXAMPLE, TABLES, TableRoot, current_version, read


def _seq(x) -> list:
    """Arrow arrays arrive as numpy arrays in pandas UDFs and as lists elsewhere."""
    return [] if x is None else list(x)


def gold_annotations(row: dict, trusted=None) -> ImageAnnotations:
    """A published FLD row (with the image's width and height) as annotations; ``trusted(annotator, label)``
    says whether a region's label is taught (default: all)."""
    regions = [Region([float(v) for v in r["bbox"]], r["label"], r["description"],
                      None if r["polygons"] is None else [[float(v) for v in p] for p in r["polygons"]],
                      trusted is None or not r["label"] or trusted(r.get("annotator"), r["label"]))
               for r in _seq(row.get("regions"))]
    words = [Word(w["text"], [float(v) for v in w["quad"]]) for w in _seq(row.get("words"))]
    phrases = [Phrase(g["phrase"], int(g["start"]), [[float(v) for v in b] for b in g["boxes"]])
               for g in _seq(row.get("grounding"))]
    caps = {k: row.get(f"caption_{k}") for k in ("brief", "detailed", "more_detailed") if row.get(f"caption_{k}")}
    return ImageAnnotations(int(row["width"]), int(row["height"]), caps, regions, words, row.get("caption_brief"), phrases)


def split_of(image_id: str, val_fraction: float) -> str:
    return "val" if int(image_id[:8], 16) % 10_000 < val_fraction * 10_000 else "train"


def mixture_copies(example_key: str, weight: float) -> int:
    """How many copies of an example a mixture weight keeps (stable across runs)."""
    whole, frac = int(weight), weight - int(weight)
    u = int(hashlib.sha256(example_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return whole + (1 if u < frac else 0)


DEEP_COLUMNS = ["regions", "grounding"]  # see lakehouse.spark.json_columns


class ClaimTrust:
    """Which region labels are taught: an annotator's claim of a label (``lakehouse.acceptance``) must be
    right at least ``min_precision`` of the time on the round's audit slice.  Annotators the slice does
    not score (human labels: withheld from it) are trusted."""

    def __init__(self, claims: list, min_precision: float, prior: float):
        from lakehouse.acceptance import Calibration, label_precision

        tally = {(a, lab): [hit, n] for a, lab, hit, n in claims}
        self.cal = Calibration({}, label_precision(tally), {}, tally, prior)
        self.min_precision = min_precision

    def __call__(self, annotator, label) -> bool:
        return annotator not in self.cal.label_precision or self.cal.claim(annotator, label) >= self.min_precision


def _examples(mixture: dict, val_fraction: float, round_: int, trusted, batches):
    import pandas as pd

    from florence2.tasks import build_prompt

    cols = TABLES["training_examples"].schema.fieldNames()
    for pdf in batches:
        rows = []
        for row in parse_json_columns(pdf, DEEP_COLUMNS).to_dict("records"):
            ann = gold_annotations(row, trusted)
            examples = []
            for k, ex in enumerate(build_examples(ann, [t for t, w in mixture.items() if w > 0])):
                key = f"{row['image_id']}|{ex.task}|{ex.text}|{ex.region}|{k}"
                for copy in range(mixture_copies(key, mixture[ex.task])):
                    examples.append({
                        "example_id": hashlib.sha256(f"{key}|{copy}".encode()).hexdigest(), "task": ex.task,
                        "text_input": ex.text, "region": None if ex.region is None else [float(v) for v in ex.region],
                        "prompt": build_prompt(ex.task, ex.text, ex.region, ann.size), "target": ex.target,
                    })
            if examples:
                rows.append(image_row(row["image_id"], examples, read_stored(row["content_path"]), row["width"],
                                      row["height"], round_, split_of(row["image_id"], val_fraction)))
        yield pd.DataFrame(rows, columns=cols)


def check_layout(images: DataFrame, what: str) -> None:
    """Versions written before the table held one row per image cannot be read as examples."""
    if "n_examples" not in images.columns:
        raise ValueError(f"{what} has the old one-row-per-example layout; build the examples again "
                         "(jobs.train without --examples-version)")


def example_rows(images: DataFrame, with_image: bool = False) -> DataFrame:
    """``training_examples`` (one row per image) as one row per example: image_id, round, split and the
    EXAMPLE fields (example_id, task, text_input, region, prompt, target), plus content, width and height
    with ``with_image``.  What notebooks, evaluation and the tokenizer read."""
    from pyspark.sql import types as T

    check_layout(images, "training_examples")

    keep = ["image_id", "round", "split"] + (["content", "width", "height"] if with_image else [])
    return (images.select(*keep, F.explode(F.from_json("examples", T.ArrayType(EXAMPLE))).alias("e"))
            .select(*keep, "e.*"))


def example_count(images: DataFrame) -> int:
    """Examples (not images) in a slice of ``training_examples``."""
    return int(images.agg(F.sum("n_examples")).collect()[0][0] or 0)


def default_mixture() -> dict:
    from florence2.tasks import TASKS

    return {t: 1.0 for t in TASKS}


def build_training_examples(spark, root: TableRoot, round_: int | None = None, gold_version: int | None = None,
                            mixture: dict | None = None, val_fraction: float = 0.1,
                            min_claim_precision: float | None = None) -> DataFrame:
    """Examples from gold at ``gold_version`` (default: the version the round's publication recorded)
    for ``round_`` (default: latest published).  A round that is not published is refused.

    ``min_claim_precision``: a region label whose claim (annotator, label) was right less often than this
    on the round's audit slice is not taught: no ``<REGION_TO_CATEGORY>``/``<REGION_TO_DESCRIPTION>``
    for it, and its image gets no whole-image label answers (``<OD>``, dense captions, open vocabulary)."""
    from lakehouse.rounds import latest_published_round, published_versions

    mixture = {**default_mixture(), **(mixture or {})}
    unknown = set(mixture) - set(default_mixture())
    if unknown:
        raise ValueError(f"unknown tasks in mixture: {sorted(unknown)}")
    round_ = round_ if round_ is not None else latest_published_round(spark, root)
    if round_ is None:
        raise ValueError("no published round yet; run jobs.refine_round first")
    pinned = published_versions(spark, root, round_)
    if pinned is None:
        raise ValueError(f"round {round_} is not published (latest published round: "
                         f"{latest_published_round(spark, root)}); only published rounds are trained on")
    gold_version = pinned["gold"] if gold_version is None else gold_version
    gold = read(spark, root, "gold_fld", version=gold_version).filter(F.col("round") == round_)
    trusted = None
    if min_claim_precision is not None:
        from lakehouse.acceptance import AcceptanceConfig

        if "claims" not in pinned["audit"]:
            raise ValueError(f"round {round_} was published before rounds recorded label claims; refine it again "
                             "or train without min_claim_precision")
        trusted = ClaimTrust(pinned["audit"]["claims"], min_claim_precision, AcceptanceConfig().label_prior)
    return examples_from_gold(gold, read(spark, root, "bronze_images"), mixture, val_fraction, round_, trusted)


def examples_from_gold(gold: DataFrame, images: DataFrame, mixture: dict, val_fraction: float,
                       round_: int, trusted=None) -> DataFrame:
    """Training examples of gold rows (their images' sizes from ``images``, ``bronze_images``, and bytes from
    the image store)."""
    src = json_columns(gold.join(images.select("image_id", "content_path", "width", "height"), "image_id"),
                       DEEP_COLUMNS)
    return src.mapInPandas(functools.partial(_examples, mixture, val_fraction, round_, trusted),
                           TABLES["training_examples"].schema)


def write_training_examples(spark, root: TableRoot, df: DataFrame, meta: dict) -> int:
    """Overwrite the examples table in one commit whose metadata names the source; returns its version.

    Rows are stored in ``image_id`` order (a hash, so sources and scene kinds are mixed in a row group).
    ``overwriteSchema``: a table written by the one-row-per-example layout is replaced whole."""
    mixed = df.repartition(spark.sparkContext.defaultParallelism, "image_id").sortWithinPartitions("split", "image_id")
    root.save(mixed.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
              .partitionBy(*TABLES["training_examples"].partition_by)
              .option("userMetadata", json.dumps(meta)), "training_examples")
    return current_version(spark, root, "training_examples")
