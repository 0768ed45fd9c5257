"""Model text -> structured answers, exactly as ``transformers``' ``Florence2Processor``.

This is a pure-Python reimplementation (no torch, no tokenizer) so it can run in
Spark workers; ``tests/test_parsing.py`` checks it against the reference on
generated answers.  Two things are added: each instance remembers the character
offsets of its location tokens (the predictor turns them into confidences), and
``as_int=False`` returns exact bin centres instead of the reference's truncated
integers (used for round trips).
"""
from __future__ import annotations

import re

import numpy as np

from florence2.locations import LOC_RE
from florence2.tasks import get_task

# Equals the post-processing config of the official converted checkpoints
# (transformers' convert_florence2_original_pytorch_to_hf.py).
BANNED_GROUNDING_TOKENS = (
    "it", "I", "me", "mine", "you", "your", "yours", "he", "him", "his", "she", "her", "hers", "they", "them",
    "their", "theirs", "one", "oneself", "we", "us", "our", "ours", "you", "your", "yours", "they", "them",
    "their", "theirs", "mine", "yours", "his", "hers", "its", "ours", "yours", "theirs", "myself", "yourself",
    "himself", "herself", "itself", "ourselves", "yourselves", "themselves", "this", "that", "these", "those",
    "who", "whom", "whose", "which", "what", "who", "whom", "whose", "which", "that", "all", "another", "any",
    "anybody", "anyone", "anything", "each", "everybody", "everyone", "everything", "few", "many", "nobody",
    "none", "one", "several", "some", "somebody", "someone", "something", "each other", "one another", "myself",
    "yourself", "himself", "herself", "itself", "ourselves", "yourselves", "themselves", "the image", "image",
    "images", "the", "a", "an", "a group", "other objects", "lots", "a set",
)
OCR_PATTERN = r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"
POST_PROCESSOR_CONFIG = {
    "ocr": {"pattern": OCR_PATTERN, "area_threshold": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": list(BANNED_GROUNDING_TOKENS)},
    "pure_text": {}, "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {},
    "bboxes": {}, "description_with_bboxes_or_polygons": {},
}

_TEXT_PATTERN = r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)"
_BOX_PATTERN = r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"
_P = len("<loc_")  # ``locs`` are offsets of the "<loc_" that starts each location token


def _clean(text: str) -> str:
    return text.replace("<s>", "").replace("</s>", "").replace("<pad>", "")


def _deq(bins, image_size, as_int: bool) -> list:
    """Bin centres; x against width, y against height.  With ``as_int`` this reproduces
    the reference bit for bit: float32 arithmetic, then truncation."""
    w, h = image_size
    if as_int:
        per = (np.float32(w / 1000), np.float32(h / 1000))
        return [int(np.float32(q + 0.5) * per[i % 2]) for i, q in enumerate(bins)]
    return [(q + 0.5) * ((w if i % 2 == 0 else h) / 1000) for i, q in enumerate(bins)]


def parse_ocr(text, image_size, as_int=True, area_threshold: float = 0.0):
    text = _clean(text)
    out = []
    width, height = image_size
    for m in re.finditer(OCR_PATTERN, text):
        bins = [int(g) for g in m.groups()[1:]]
        quad = _deq(bins, image_size, as_int)
        if area_threshold > 0:
            xs, ys = quad[0::2], quad[1::2]
            area = 0.5 * abs(sum(xs[i] * ys[i + 1] - xs[i + 1] * ys[i] for i in range(4 - 1)))
            if area < (width * height) * area_threshold:
                continue
        out.append({"quad_box": quad, "text": m.group(1).strip(), "locs": [m.start(k) - _P for k in range(2, 10)]})
    return out


def _boxes(phrase_text: str, offset: int, image_size, as_int):
    ms = list(re.finditer(_BOX_PATTERN, phrase_text))
    return ([_deq([int(m.group(j)) for j in range(1, 5)], image_size, as_int) for m in ms],
            [[offset + m.start(j) - _P for j in range(1, 5)] for m in ms])


def parse_phrase_grounding(text, image_size, as_int=True, banned=BANNED_GROUNDING_TOKENS):
    text = _clean(text)
    banned = set(banned)
    out = []
    for pm in re.finditer(r"([^<]+(?:<loc_\d+>){4,})", text):
        phrase_text = pm.group(1)
        phrase_text = phrase_text.replace("<ground>", "", 1).replace("<obj>", "", 1)
        if not phrase_text:
            continue
        match = re.search(_TEXT_PATTERN, phrase_text)
        if not match:
            continue
        phrase = match.group().strip()
        if phrase in banned:
            continue
        boxes, locs = _boxes(phrase_text, pm.start(1), image_size, as_int)
        if not boxes:
            continue
        out.append({"bbox": boxes, "cat_name": phrase.encode("ascii", "ignore").decode("ascii"), "locs": locs})
    return out


def parse_description_with_bboxes(text, image_size, as_int=True, allow_empty_phrase=False):
    text = _clean(text)
    pattern = r"((?:<loc_\d+>){4,})" if allow_empty_phrase else r"([^<]+(?:<loc_\d+>){4,})"
    out = []
    for pm in re.finditer(pattern, text):
        phrase_text = pm.group(1).replace("<ground>", "", 1).replace("<obj>", "", 1)
        if not phrase_text and not allow_empty_phrase:
            continue
        match = re.search(_TEXT_PATTERN, phrase_text)
        if not match:
            continue
        phrase = match.group().strip()
        boxes, locs = _boxes(phrase_text, pm.start(1), image_size, as_int)
        phrase = phrase.encode("ascii", "ignore").decode("ascii")
        out.extend({"bbox": b, "cat_name": phrase, "locs": loc} for b, loc in zip(boxes, locs))
    return out


def parse_description_with_polygons(text, image_size, as_int=True, allow_empty_phrase=False):
    text = _clean(text)
    tok = r"(?:<loc_\d+>|<sep>|<poly>|</poly>)"
    pattern = rf"({tok}{{4,}})" if allow_empty_phrase else rf"([^<]+{tok}{{4,}})"
    out = []
    for pm in re.finditer(pattern, text):
        phrase_text, base = pm.group(1), pm.start(1)
        stripped = re.sub(r"^<loc_\d+>", "", phrase_text, count=1)
        if not stripped and not allow_empty_phrase:
            continue
        match = re.search(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_|<poly>)", stripped)
        if not match:
            continue
        phrase = match.group().strip()
        if "<poly>" in phrase_text and "</poly>" in phrase_text:
            insts = [(m.group(1), base + m.start(1)) for m in re.finditer(r"<poly>(.*?)</poly>", phrase_text)]
        else:
            insts = [(phrase_text, base)]
        for inst, ioff in insts:
            matches = list(re.finditer(r"((?:<loc_\d+>)+)(?:<sep>|$)", inst))
            if not matches:
                continue
            polygons, locs = [], []
            for m in matches:
                lm = list(LOC_RE.finditer(m.group(1)))
                if len(lm) % 2 == 1:
                    lm = lm[:-1]
                polygons.append(_deq([int(x.group(1)) for x in lm], image_size, as_int))
                locs.extend(ioff + m.start(1) + x.start() for x in lm)
            out.append({"cat_name": phrase, "polygons": polygons, "locs": locs})
    return out


def parse_instances(text: str, parse_type: str, image_size, as_int: bool = True):
    """Reference parse of one answer into instances (each with ``locs``), or a string for pure text."""
    if parse_type == "pure_text":
        return text
    if parse_type == "ocr":
        return parse_ocr(text, image_size, as_int)
    if parse_type == "phrase_grounding":
        return parse_phrase_grounding(text, image_size, as_int)
    if parse_type == "description_with_bboxes":
        return parse_description_with_bboxes(text, image_size, as_int)
    if parse_type == "bboxes":
        return parse_description_with_bboxes(text, image_size, as_int, allow_empty_phrase=True)
    if parse_type == "description_with_polygons":
        return parse_description_with_polygons(text, image_size, as_int)
    if parse_type == "polygons":
        return parse_description_with_polygons(text, image_size, as_int, allow_empty_phrase=True)
    if parse_type == "description_with_bboxes_or_polygons":
        if "<poly>" in text:
            return parse_description_with_polygons(text, image_size, as_int)
        return parse_description_with_bboxes(text, image_size, as_int)
    raise ValueError(f"unknown parse type {parse_type!r}")


def format_answer(parse_type: str, parsed, scores: list[float] | None = None):
    """Instances -> the reference's answer structure; ``scores`` (one per instance) are added when given."""
    if parse_type == "pure_text":
        return parsed.replace("<s>", "").replace("</s>", "").strip()
    if parse_type in ("description_with_bboxes", "bboxes"):
        ans = {"bboxes": [i["bbox"] for i in parsed], "labels": [i["cat_name"] for i in parsed]}
    elif parse_type == "ocr":
        ans = {"quad_boxes": [i["quad_box"] for i in parsed], "labels": [i["text"] for i in parsed]}
    elif parse_type == "phrase_grounding":
        ans = {"bboxes": [b for i in parsed for b in i["bbox"]],
               "labels": [i["cat_name"] for i in parsed for _ in i["bbox"]]}
        if scores is not None:  # one score per box, not per phrase
            ans["scores"] = [s for i, s in zip(parsed, scores) for _ in i["bbox"]]
            return ans
    elif parse_type in ("description_with_polygons", "polygons"):
        ans = {"polygons": [i["polygons"] for i in parsed], "labels": [i["cat_name"] for i in parsed]}
    elif parse_type == "description_with_bboxes_or_polygons":
        polys = [i for i in parsed if "polygons" in i]
        boxes = [i for i in parsed if "polygons" not in i]
        ans = {"bboxes": [i["bbox"] for i in boxes], "bboxes_labels": [i["cat_name"] for i in boxes],
               "polygons": [i["polygons"] for i in polys], "polygons_labels": [i["cat_name"] for i in polys]}
        if scores is not None:
            ans["bboxes_scores"] = [s for i, s in zip(parsed, scores) if "polygons" not in i]
            ans["polygons_scores"] = [s for i, s in zip(parsed, scores) if "polygons" in i]
        return ans
    else:
        raise ValueError(f"unknown parse type {parse_type!r}")
    if scores is not None:
        ans["scores"] = list(scores)
    return ans


def post_process_generation(text: str, task: str, image_size, as_int: bool = True) -> dict:
    """Same contract as ``Florence2Processor.post_process_generation(text=..., task=..., image_size=...)``."""
    parse_type = get_task(task).parse_type
    return {task: format_answer(parse_type, parse_instances(text, parse_type, image_size, as_int))}
