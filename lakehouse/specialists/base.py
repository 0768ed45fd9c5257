from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import signal
import threading
from typing import Iterator

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lakehouse.tables import TABLES

# Loaded models, one per (specialist, config) per Python worker process.
_LOADED: dict[str, object] = {}


class Specialist:
    """Subclasses set ``name``, ``version``, ``kinds`` and implement ``load`` and ``annotate``."""

    name = "specialist"
    # a trained model whose output must earn its way into a round (lakehouse.acceptance)
    is_model = False
    version = "0"
    kinds: tuple[str, ...] = ()
    # one image's wall-clock budget; past it the image is an annotation error, not a stuck round
    timeout_s: float = 120.0

    def config_key(self) -> str:
        return f"{self.name}@{self.version}:{json.dumps(vars(self), sort_keys=True, default=str)}"

    def load(self):
        """Return the model (or anything heavy); called once per worker."""
        return None

    def model(self):
        key = self.config_key()
        if key not in _LOADED:
            _LOADED[key] = self.load()
        return _LOADED[key]

    def annotate(self, image, image_id: str) -> list[dict]:
        """One PIL image -> annotations: dicts with ``kind`` and any of ``text``, ``bbox``,
        ``polygons``, ``quad``, ``confidence`` (pixels, confidence in [0, 1])."""
        raise NotImplementedError

    # a specialist that batches (a model on a GPU) overrides ``annotate_batch`` and sets this
    batched = False
    # a specialist that works on the published round's regions gets them: ``annotate(image, image_id,
    # regions)`` / ``annotate_batch(images, image_ids, regions)``, each region a dict of bbox, polygons,
    # text and description (``run_specialists(regions=...)``)
    takes_regions = False
    # its regions are the published round's, renamed: acceptance judges their labels only
    relabels = False

    def annotate_batch(self, images: list, image_ids: list[str]) -> list[list[dict]]:
        """Many images at once; the default is one ``annotate`` call each."""
        return [self.annotate(im, i) for im, i in zip(images, image_ids)]


def annotation_id(image_id: str, annotator: str, a: dict) -> str:
    key = json.dumps([image_id, annotator, a.get("kind"), a.get("text"), a.get("bbox"), a.get("quad"),
                      a.get("polygons")], default=float)
    return hashlib.sha256(key.encode()).hexdigest()


def _clip_box(b, w, h):
    if b is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in b)
    return [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]


def provenance_rows(image_id: str, width: int, height: int, sp: Specialist, anns: list[dict], round_: int,
                    now) -> list[dict]:
    rows, version = [], sp.version
    for a in anns:
        bbox = _clip_box(a.get("bbox"), width, height)
        if bbox is not None and not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
            continue  # degenerate after clipping to the image
        conf = a.get("confidence")
        rows.append({
            "annotation_id": annotation_id(image_id, sp.name, a), "image_id": image_id, "round": round_,
            "kind": a["kind"], "annotator": sp.name, "annotator_version": version,
            "confidence": None if conf is None else float(min(max(conf, 0.0), 1.0)), "text": a.get("text"),
            "description": a.get("description"),
            "bbox": bbox, "polygons": a.get("polygons"), "quad": a.get("quad"), "created_at": now,
        })
    return rows


class AnnotationTimeout(Exception):
    """A specialist took longer than its ``timeout_s`` on one image."""


@contextlib.contextmanager
def _deadline(seconds: float | None):
    # SIGALRM interrupts Python code and waits on subprocesses; it exists only in the main thread,
    # which is where Spark's Python worker runs mapInPandas
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def _raise(signum, frame):
        raise AnnotationTimeout(f"no answer within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def error_text(exc: BaseException) -> str:
    """A short, single-line reason: the exception class and the first 300 characters of its message."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:300]}" if msg else type(exc).__name__


# mapInPandas output: silver's columns plus ``error``, set on rows that stand for one failed
# (image, specialist); ``split_errors`` separates them
ANNOTATE_SCHEMA = T.StructType(TABLES["silver_annotations"].schema.fields + [T.StructField("error", T.StringType())])


def _error_row(image_id: str, annotator: str, version: str, round_: int, now, error: str) -> dict:
    # every column explicitly None: a missing key becomes NaN in pandas, which Arrow refuses for arrays
    return dict.fromkeys(ANNOTATE_SCHEMA.fieldNames()) | {
        "annotation_id": annotation_id(image_id, annotator, {"kind": "error"}), "image_id": image_id,
        "round": round_, "kind": "error", "annotator": annotator, "annotator_version": version,
        "created_at": now, "error": error}


def _annotate_partition(specialists, round_, batches) -> Iterator:
    import pandas as pd

    from lakehouse.images import decode_rgb, read_stored

    cols = ANNOTATE_SCHEMA.fieldNames()
    for pdf in batches:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        rows, good = [], []
        for r in pdf.itertuples(index=False):
            try:
                good.append((r, decode_rgb(read_stored(r.content_path))))
            except Exception as e:  # bronze was validated, but a round must not die on one image
                rows.append(_error_row(r.image_id, "decode", "-", round_, now, error_text(e)))
        regions = [_regions(r) for r, _ in good]
        for sp in specialists:
            for (r, _), result in zip(good, _annotate_all(sp, good, regions)):
                if isinstance(result, BaseException):  # one (image, specialist) fails, the round goes on
                    rows.append(_error_row(r.image_id, sp.name, str(sp.version), round_, now, error_text(result)))
                else:
                    rows += provenance_rows(r.image_id, r.width, r.height, sp, result, round_, now)
        yield pd.DataFrame(rows, columns=cols)


def _regions(row) -> list[dict]:
    """The published round's regions of an image row (``run_specialists(regions=...)``) as plain dicts."""
    regs = getattr(row, "regions", None)
    if regs is None or (isinstance(regs, float) and regs != regs):  # no regions: null, or NaN from pandas
        return []
    return [{"bbox": [float(v) for v in g["bbox"]], "text": g["text"], "description": g["description"],
             "polygons": None if g["polygons"] is None else [[float(v) for v in p] for p in g["polygons"]]}
            for g in regs]


def _annotate_one(sp: Specialist, img, image_id: str, regions: list[dict]):
    try:
        with _deadline(sp.timeout_s):
            return sp.annotate(img, image_id, regions) if sp.takes_regions else sp.annotate(img, image_id)
    except Exception as e:
        return e


def _annotate_all(sp: Specialist, good: list, regions: list[list[dict]] | None = None) -> list:
    """Each image's annotations, or the exception it raised.  A batching specialist gets the whole
    Arrow batch in one call (its deadline scaled by the batch); if that call fails, the batch is
    retried one image at a time, so only the images that fail are errors.  ``regions``: each image's,
    for a specialist that ``takes_regions``."""
    regions = regions if regions is not None else [[] for _ in good]
    if sp.batched and len(good) > 1:
        images, ids = [img for _, img in good], [r.image_id for r, _ in good]
        try:
            with _deadline(sp.timeout_s * len(good)):
                out = sp.annotate_batch(images, ids, regions) if sp.takes_regions else sp.annotate_batch(images, ids)
            if len(out) == len(good):
                return out
        except Exception:
            pass
    return [_annotate_one(sp, img, r.image_id, regs) for (r, img), regs in zip(good, regions)]


def region_lists(annotations: DataFrame) -> DataFrame:
    """(image_id, regions) of the region annotations given: what ``run_specialists(regions=...)`` takes."""
    from pyspark.sql import functions as F

    return (annotations.filter(F.col("kind") == "region")
            .groupBy("image_id")
            .agg(F.collect_list(F.struct("bbox", "polygons", "text", "description")).alias("regions")))


def run_specialists(images: DataFrame, specialists: list[Specialist], round_: int,
                    regions: DataFrame | None = None) -> DataFrame:
    """Annotate ``images`` (image_id, content_path, width, height: ``bronze_images``) with every specialist,
    inside Spark; each task reads its images from the image store.  ``regions`` (``region_lists``): the
    regions that specialists with ``takes_regions`` work on.

    The result has silver's columns plus ``error``: a specialist that raises or times out on an
    image gives one row with ``error`` set instead of annotations (see ``split_errors``).
    """
    import functools

    fn = functools.partial(_annotate_partition, specialists, round_)
    src = images.select("image_id", "content_path", "width", "height")
    if regions is not None and any(sp.takes_regions for sp in specialists):
        src = src.join(regions.select("image_id", "regions"), "image_id", "left")
    return src.mapInPandas(fn, schema=ANNOTATE_SCHEMA)


def split_errors(annotated: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(annotations in silver's schema, ``annotation_errors`` rows) of ``run_specialists``' output."""
    from pyspark.sql import functions as F

    anns = annotated.filter(F.col("error").isNull()).drop("error")
    errors = annotated.filter(F.col("error").isNotNull()).select(
        "round", "image_id", "annotator", "annotator_version", "error", F.col("created_at").alias("logged_at"))
    return anns, errors
