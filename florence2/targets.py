"""Annotations -> the exact target strings Florence-2 learns, for all 15 tasks.

Ordering rules (they change what the model learns, so they are fixed here):
- regions and words are in reading order: by quantised top edge, then quantised
  left edge (then bottom, right), i.e. top-to-bottom, left-to-right on the
  location grid the model sees;
- phrase-grounding phrases follow their order in the caption;
- open-vocabulary detection lists the queried category's boxes in reading order;
- one instance's polygons are joined by ``<sep>``; the polygon tasks answer one
  instance, without a ``<poly>`` wrapper.
Labels are stripped and ASCII-only, as the reference parser returns them.
Grounding phrases that the reference parser would drop (its blacklist) are left
out of targets, so that what the model learns is what it can be scored on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from florence2.geometry import bounding_box
from florence2.locations import box_tokens, polygon_tokens, quad_tokens, quantize_points
from florence2.parsing import BANNED_GROUNDING_TOKENS
from florence2.tasks import TASKS
from florence2.vocabulary import CAPTION_LEVELS


@dataclass
class Region:
    bbox: list[float]
    label: str | None = None              # category name
    description: str | None = None        # a short region description
    polygons: list[list[float]] | None = None
    label_trusted: bool = True            # False: its label is not taught (a claim the audit slice distrusts)


@dataclass
class Word:
    text: str
    quad: list[float]                     # 8 numbers, clockwise from top-left

    @property
    def bbox(self) -> list[float]:
        return bounding_box(self.quad)


@dataclass
class Phrase:
    phrase: str
    start: int                            # character offset in the caption
    boxes: list[list[float]]


@dataclass
class Referring:
    expression: str
    bbox: list[float]
    polygons: list[list[float]]


@dataclass
class ImageAnnotations:
    width: int
    height: int
    captions: dict[str, str] = field(default_factory=dict)     # brief / detailed / more_detailed
    regions: list[Region] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    grounding_caption: str | None = None
    phrases: list[Phrase] = field(default_factory=list)
    referring: list[Referring] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True)
class Example:
    task: str
    target: str
    text: str | None = None
    region: tuple | None = None
    refers: bool = False  # the input is a referring expression (names one object): REC scores these


CAPTION_TASKS = {c.name: c.task for c in CAPTION_LEVELS}


def _label(s: str | None) -> str:
    return (s or "").encode("ascii", "ignore").decode("ascii").replace("<", " ").strip()


def reading_order(items, box_of, size):
    def key(it):
        q = quantize_points(box_of(it), size)
        return (q[1], q[0], q[3], q[2])
    return sorted(items, key=key)


def build_examples(ann: ImageAnnotations, tasks=None) -> list[Example]:
    """Every example the annotations support, for the given tasks (default: all 15)."""
    size, out = ann.size, []
    tasks = set(tasks or TASKS)
    regions = reading_order(ann.regions, lambda r: r.bbox, size)
    words = reading_order(ann.words, lambda w: w.bbox, size)

    def add(task, target, **kw):
        if task in tasks and target:
            out.append(Example(task, target, **kw))

    for level, task in CAPTION_TASKS.items():
        if ann.captions.get(level):
            add(task, ann.captions[level].strip())
    labelled = [r for r in regions if _label(r.label)]
    # a whole-image answer lists every object: one label that may be wrong takes the image out of them
    whole = all(r.label_trusted for r in labelled)
    if whole:
        add("<OD>", "".join(_label(r.label) + box_tokens(r.bbox, size) for r in labelled))
        add("<DENSE_REGION_CAPTION>", "".join(_label(r.description) + box_tokens(r.bbox, size)
                                              for r in regions if _label(r.description)))
    add("<REGION_PROPOSAL>", "".join(box_tokens(r.bbox, size) for r in regions))
    if ann.grounding_caption and ann.phrases:
        banned = set(BANNED_GROUNDING_TOKENS)
        target = "".join(_label(p.phrase) + "".join(box_tokens(b, size) for b in p.boxes)
                         for p in sorted(ann.phrases, key=lambda p: p.start)
                         if _label(p.phrase) and _label(p.phrase) not in banned and p.boxes)
        add("<CAPTION_TO_PHRASE_GROUNDING>", target, text=ann.grounding_caption)
    for r in ann.referring:
        add("<REFERRING_EXPRESSION_SEGMENTATION>", polygon_tokens(r.polygons, size), text=r.expression)
        # referring expression comprehension in the task language: the expression's one box
        add("<OPEN_VOCABULARY_DETECTION>", _label(r.expression) + box_tokens(r.bbox, size), text=r.expression,
            refers=True)
    for r in regions:
        if r.polygons:
            add("<REGION_TO_SEGMENTATION>", polygon_tokens(r.polygons, size), region=tuple(r.bbox))
        if _label(r.label) and r.label_trusted:
            add("<REGION_TO_CATEGORY>", _label(r.label), region=tuple(r.bbox))
        if _label(r.description) and r.label_trusted:
            add("<REGION_TO_DESCRIPTION>", _label(r.description), region=tuple(r.bbox))
    for cat in sorted({_label(r.label) for r in labelled} if whole else ()):
        add("<OPEN_VOCABULARY_DETECTION>", cat + "".join(box_tokens(r.bbox, size) for r in labelled
                                                          if _label(r.label) == cat), text=cat)
    if words:
        add("<OCR>", " ".join(w.text.strip() for w in words))
        add("<OCR_WITH_REGION>", "".join(_label(w.text) + quad_tokens(w.quad, size) for w in words if _label(w.text)))
        for w in words:
            add("<REGION_TO_OCR>", w.text.strip(), region=tuple(w.bbox))
    return out


def from_synthetic(truth: dict, grounding_level: str = "brief") -> ImageAnnotations:
    """Ground truth of a synthetic-world scene (``lakehouse.synthetic``) as annotations."""
    objs = truth["objects"]
    regions = [Region(o["bbox"], o["category"], f"{o['size']} {o['color']} {o['category']}", [o["polygon"]])
               for o in objs]
    words = [Word(w["text"], w["quad"]) for w in truth["words"]]
    phrases = [Phrase(g["phrase"], g["start"], [objs[i]["bbox"] for i in g["object_ids"]])
               for g in truth["grounding"] if g["level"] == grounding_level]
    referring = [Referring(r["expression"], objs[r["object_id"]]["bbox"], [objs[r["object_id"]]["polygon"]])
                 for r in truth["referring"]]
    return ImageAnnotations(truth["width"], truth["height"], dict(truth["captions"]), regions, words,
                            truth["captions"].get(grounding_level), phrases, referring)
