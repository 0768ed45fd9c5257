"""The annotation vocabulary the data engine, the gate and the model share.

It sits in the lowest layer (``florence2``), so the tables, the filters, the gate and
the targets read the same names without importing each other.
"""
from __future__ import annotations

# caption levels: annotation kind -> the task that writes and reads it
CAPTION_TASKS = {"caption_brief": "<CAPTION>", "caption_detailed": "<DETAILED_CAPTION>",
                 "caption_more_detailed": "<MORE_DETAILED_CAPTION>"}
CAPTION_KINDS = tuple(CAPTION_TASKS)
ANNOTATION_KINDS = CAPTION_KINDS + ("region", "word", "class")
# regions per image the filters keep at most; the gate checks the same number (rounds.gate_config)
MAX_REGIONS_PER_IMAGE = 40
# what ingest lands and what the served model accepts
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")


def position_name(cx: float, cy: float, w: int, h: int) -> str:
    """Where a point lies in a w x h image, in the words referring expressions use ("top left", "center")."""
    col = ("left", "", "right")[min(2, int(3 * cx / w))]
    row = ("top", "", "bottom")[min(2, int(3 * cy / h))]
    if not row and not col:
        return "center"
    return f"{row} {col}".strip()
