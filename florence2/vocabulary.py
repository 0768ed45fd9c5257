"""The annotation vocabulary the data engine, the gate and the model share.

It sits in the lowest layer (``florence2``), so the tables, the filters, the gate and
the targets read the same names without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CaptionLevel:
    name: str                 # the level in ground truth and targets ("brief")
    kind: str                 # the annotation kind and gold column ("caption_brief")
    task: str                 # the task that writes and reads it
    words: tuple[int, int]    # words (``count_words``) a caption of this level may have: filters drop, gate expects
    human_up_to: int          # a human caption of at most this many words is of this level (the first that fits)


# the paper: brief ~8 tokens, detailed ~32, more detailed ~71
CAPTION_LEVELS = (
    CaptionLevel("brief", "caption_brief", "<CAPTION>", (3, 40), 15),
    CaptionLevel("detailed", "caption_detailed", "<DETAILED_CAPTION>", (8, 120), 50),
    CaptionLevel("more_detailed", "caption_more_detailed", "<MORE_DETAILED_CAPTION>", (15, 250), 10**9),
)
CAPTION_TASKS = {c.kind: c.task for c in CAPTION_LEVELS}
CAPTION_KINDS = tuple(CAPTION_TASKS)


def count_words(text: str) -> int:
    """Words of a caption: whitespace-separated (``quality.gate.word_count`` is the same rule in Spark)."""
    return len(text.split())
ANNOTATION_KINDS = CAPTION_KINDS + ("region", "word", "class")
# regions per image the filters keep at most; the gate checks the same number (rounds.gate_config)
MAX_REGIONS_PER_IMAGE = 40
# what ingest lands and what the served model accepts
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")


_SIBILANT = ("x", "ch", "sh", "ss", "s")


def plural(noun: str) -> str:
    return noun + "es" if noun.endswith(_SIBILANT) else noun + "s"


def singular(word: str) -> str:
    """The inverse of ``plural`` on a lower-cased word; words already singular ("cross", "glass") stay."""
    w = word.lower()
    if w.endswith("es") and w[:-2].endswith(_SIBILANT) and len(w) > 4:
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


def head_noun(phrase: str) -> str:
    """A phrase's last word, singular: how grounding is built (``lakehouse.fld``) and scored."""
    words = phrase.split()
    return singular(words[-1]) if words else ""


def position_name(cx: float, cy: float, w: int, h: int) -> str:
    """Where a point lies in a w x h image, in the words referring expressions use ("top left", "center")."""
    col = ("left", "", "right")[min(2, int(3 * cx / w))]
    row = ("top", "", "bottom")[min(2, int(3 * cy / h))]
    if not row and not col:
        return "center"
    return f"{row} {col}".strip()
