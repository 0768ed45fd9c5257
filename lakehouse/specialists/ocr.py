"""OCR specialists that run offline: Tesseract (Debian's tesseract-ocr) and RapidOCR (ONNX models in its wheel).
Both give words with quads (clockwise from top-left) and confidences in [0, 1]."""
from __future__ import annotations

import csv
import functools
import io
import math
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from florence2.geometry import bounding_box
from lakehouse.specialists.base import Specialist


def box_quad(x0, y0, x1, y1) -> list[float]:
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


class TesseractOCR(Specialist):
    name = "tesseract"
    kinds = ("word",)

    # threads: OpenMP threads per tesseract process (0 = its default, all cores).  Spark already runs one
    # image per core, and more threads per image only oversubscribe the cores
    def __init__(self, psm: int = 11, min_confidence: float = 0.0, lang: str = "eng", threads: int = 1):
        self.psm, self.min_confidence, self.lang, self.threads = psm, min_confidence, lang, threads

    @property
    def version(self) -> str:  # the engine's own version is the specialist's version
        return tesseract_version()

    def load(self):
        if self.version == "missing":
            raise RuntimeError("tesseract is not installed (Debian package tesseract-ocr; scripts/setup.sh installs it)")
        return True

    # one process per Arrow batch: each tesseract process loads its language model first (~0.1 s, half
    # of a photo's time); pages of a list file are read independently, so the words are the same
    batched = True

    def _tsv(self, args: list[str], stdin: bytes | None = None, images: int = 1) -> str:
        env = (os.environ | {"OMP_THREAD_LIMIT": str(self.threads)}) if self.threads else None
        return subprocess.run(["tesseract", *args, "--psm", str(self.psm), "-l", self.lang, "tsv"], input=stdin,
                              capture_output=True, check=True, timeout=self.timeout_s * images,
                              env=env).stdout.decode("utf-8", "replace")

    def annotate(self, image, image_id):
        self.model()
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "PPM")  # same words as PNG, without a 30-180 ms zlib encode per image
        return self._pages(self._tsv(["stdin", "stdout"], buf.getvalue())).get(1, [])

    def annotate_batch(self, images, image_ids):
        self.model()
        with tempfile.TemporaryDirectory(prefix="fld-tesseract-") as d:
            paths = [os.path.join(d, f"{i}.ppm") for i in range(len(images))]
            for p, im in zip(paths, images):
                im.convert("RGB").save(p, "PPM")
            listing = os.path.join(d, "images.txt")
            Path(listing).write_text("\n".join(paths) + "\n")
            pages = self._pages(self._tsv([listing, "stdout"], images=len(images)))
        return [pages.get(i + 1, []) for i in range(len(images))]

    def _pages(self, tsv: str) -> dict[int, list[dict]]:
        """Words of each page (1-based: the image's position in a list file) of Tesseract's TSV."""
        pages: dict[int, list[dict]] = {}
        for r in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
            text = (r.get("text") or "").strip()
            if r.get("level") != "5" or not text:
                continue
            conf = float(r["conf"]) / 100.0
            if conf < self.min_confidence:
                continue
            x, y, w, h = (int(r[k]) for k in ("left", "top", "width", "height"))
            pages.setdefault(int(r["page_num"]), []).append(
                {"kind": "word", "text": text, "quad": box_quad(x, y, x + w, y + h),
                 "bbox": [x, y, x + w, y + h], "confidence": max(conf, 0.0)})
        return pages


# once per process: every annotation row carries its annotator's version, and asking the engine for
# it each time spawned one `tesseract --version` per word (a third of the annotate stage on forms)
@functools.lru_cache(maxsize=None)
def tesseract_version() -> str:
    try:
        return subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        return "missing"


@functools.lru_cache(maxsize=None)
def _package_version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"   # load() says what to install


class Float32DetPreProcess:
    """The text detector's preprocessing (``op``: the engine's) in float32: the engine's mean and std are
    float64 arrays, which made normalising a form ~65 ms, 4% of its RapidOCR time."""

    def __init__(self, op):
        self.op = op
        self.a = (op.scale / op.std).astype(np.float32)
        self.b = (-op.mean / op.std).astype(np.float32)

    def __call__(self, img: np.ndarray) -> np.ndarray | None:
        img = self.op.resize(img)
        if img is None:
            return None
        out = np.empty((1, 3, *img.shape[:2]), dtype=np.float32)
        for c in range(3):
            np.multiply(img[:, :, c], self.a[c], out=out[0, c])
            out[0, c] += self.b[c]
        return out


def stretch_line(shape, step: int, img: np.ndarray, max_wh_ratio: float) -> np.ndarray:
    """The recogniser's input for one text line: resized to height ``H`` and to its width rounded up to a
    multiple of ``step``, normalised as the engine does, then padded as the engine pads: to the shape's
    width, and in a batch to the width its widest line (``max_wh_ratio``) rounds to."""
    import cv2

    c, H, min_w = shape
    h, w = img.shape[:2]
    width = math.ceil(H * w / h / step) * step
    out = np.zeros((c, H, max(width, min_w, math.ceil(H * max_wh_ratio / step) * step)), dtype=np.float32)
    line = cv2.resize(img, (width, H)).astype(np.float32).transpose((2, 0, 1)) / 255
    out[:, :, :width] = (line - 0.5) / 0.5
    return out


def split_line(quad, text: str, conf: float) -> list[dict]:
    """A detected text line -> its words, each with the share of the line quad its characters take."""
    tokens = text.split()
    if not tokens:
        return []
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = np.asarray(quad, dtype=float).reshape(4, 2)
    total = len(text)
    out, pos = [], 0
    for t in tokens:
        start = text.index(t, pos)
        pos = start + len(t)
        f0, f1 = start / total, pos / total
        top0, top1 = (ax + (bx - ax) * f0, ay + (by - ay) * f0), (ax + (bx - ax) * f1, ay + (by - ay) * f1)
        bot0, bot1 = (dx + (cx - dx) * f0, dy + (cy - dy) * f0), (dx + (cx - dx) * f1, dy + (cy - dy) * f1)
        q = [float(v) for v in (*top0, *top1, *bot1, *bot0)]
        out.append({"kind": "word", "text": t, "quad": q, "bbox": bounding_box(q), "confidence": float(conf)})
    return out


RUNTIMES = ("openvino", "onnxruntime")


class OpenVINOSession:
    """One of the engine's ONNX models compiled by OpenVINO, called like the engine's ``OrtInferSession``."""

    def __init__(self, model_path: str, threads: int = 1):
        try:
            import openvino as ov
        except ImportError as e:
            raise RuntimeError('RapidOCR\'s default runtime needs openvino (requirements/lock.txt); install it, '
                               'or configure {"type": "rapidocr", "runtime": "onnxruntime"}') from e

        # no pinning: Spark runs one of these per core in separate processes, and pinned threads of two
        # processes can land on the same core
        # f32: on CPUs with bf16 (AVX-512 BF16, AMX) OpenVINO's default is bf16, and the words read changed
        cfg = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False, "NUM_STREAMS": 1,
               "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = threads
        self.request = ov.Core().compile_model(str(model_path), "CPU", cfg).create_infer_request()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        # the request reuses its output buffer on the next call: copy
        return [np.array(self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0])]


class RapidOCRSpecialist(Specialist):
    """``threads``: ONNX Runtime threads per session (0 = its default, all cores), for the same reason as
    Tesseract's.  ``det_max_side``: the text detector sees the image with its longer side at most this.
    0 (default) keeps the engine's own rule, which scales a shorter side under 736 up to 736: it costs 5-7x
    on small images and is what finds the synthetic world's words (recall 1.0 against 0.82 at the
    image's own 320 px: ``bench/specialists_real.py --entry '{"type": "rapidocr", "det_max_side": 960}'``).

    ``rec_min_width`` / ``rec_batch``: the recogniser's cost is linear in its input's width, and the engine
    pads every line to at least 320 px and to the widest line of a batch of 6.  On one CPU thread, lines read
    alone at their own width cost 1.9x less to recognise on FUNSD's forms, at a slightly better word F1
    (0.459 vs 0.434, ``bench/specialists_real.py``);
    a GPU session would want the engine's batches back (``rec_min_width=320, rec_batch=6``).

    ``rec_width_step``: each line is stretched to its width rounded up to a multiple of this (0: the engine's
    own resize, which pads).  OpenVINO reuses a compiled shape, and FUNSD's ~54 lines per form have ~33
    distinct widths unrounded: recognition 12% cheaper per form, word F1 0.463 vs 0.459 (ICDAR 0.343 vs
    0.296; zero-padding to the step instead cost F1: 0.454).

    ``runtime``: ``"openvino"`` (default) runs the engine's ONNX models with OpenVINO: the same outputs (within
    3e-6), 1.36x (detector) and 1.38x (recogniser, at a fixed width) faster than ONNX Runtime on one x86 core;
    a new input shape costs it more, hence the width step. ``"onnxruntime"`` keeps the engine's own."""

    name = "rapidocr"
    kinds = ("word",)

    def __init__(self, threads: int = 1, det_max_side: int = 0, rec_min_width: int = 48, rec_batch: int = 1,
                 rec_width_step: int = 32, runtime: str = "openvino"):
        if runtime not in RUNTIMES:
            raise ValueError(f"rapidocr runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
        self.threads, self.det_max_side = threads, det_max_side
        self.rec_min_width, self.rec_batch, self.runtime = rec_min_width, rec_batch, runtime
        self.rec_width_step = rec_width_step

    @property
    def version(self) -> str:
        v = _package_version("rapidocr-onnxruntime")
        return v if self.runtime == "onnxruntime" else f"{v}+openvino-{_package_version('openvino')}"

    def load(self):
        from rapidocr_onnxruntime import RapidOCR

        kw = {"intra_op_num_threads": self.threads, "inter_op_num_threads": 1} if self.threads else {}
        if self.det_max_side:
            kw |= {"det_limit_type": "max", "det_limit_side_len": self.det_max_side}
        engine = RapidOCR(**kw)
        c, h, _ = engine.text_rec.rec_image_shape
        engine.text_rec.rec_image_shape = [c, h, self.rec_min_width]
        engine.text_rec.rec_batch_num = self.rec_batch
        get = engine.text_det.get_preprocess
        engine.text_det.get_preprocess = lambda max_wh: Float32DetPreProcess(get(max_wh))
        if self.rec_width_step:
            engine.text_rec.resize_norm_img = functools.partial(stretch_line, engine.text_rec.rec_image_shape,
                                                                self.rec_width_step)
        if self.runtime == "openvino":
            for part, attr in ((engine.text_det, "infer"), (engine.text_cls, "infer"), (engine.text_rec, "session")):
                setattr(part, attr, OpenVINOSession(getattr(part, attr).session._model_path, self.threads))
        return engine

    def annotate(self, image, image_id):
        # contiguous BGR: a reversed-stride view is copied whole by OpenCV once per text line it crops
        result, _ = self.model()(np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]))
        words = []
        for quad, text, score in result or []:
            words += split_line(quad, text, score)
        return words
