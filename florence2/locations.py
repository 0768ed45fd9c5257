"""Location tokens: 1,000 bins per axis, exactly as the reference quantises.

``q = clamp(floor(x / (W / 1000)), 0, 999)``; dequantised to the bin centre
``(q + 0.5) * (W / 1000)``.  Image sizes are (width, height).  The reference
post-processor truncates dequantised coordinates to integers; ``as_int`` does the same.
"""
from __future__ import annotations

import math
import re

BINS = 1000
LOC_TOKENS = tuple(f"<loc_{i}>" for i in range(BINS))
POLY_START, POLY_END, POLY_SEP = "<poly>", "</poly>", "<sep>"
LOC_RE = re.compile(r"<loc_(\d+)>")


def quantize(v: float, extent: float) -> int:
    return int(min(max(math.floor(v / (extent / BINS)), 0), BINS - 1))


def dequantize(q: int, extent: float, as_int: bool = False):
    v = (q + 0.5) * (extent / BINS)
    return int(v) if as_int else v


def quantize_points(coords, image_size) -> list[int]:
    """Flat x, y, x, y, ... -> bins, x against width and y against height."""
    w, h = image_size
    return [quantize(v, w if i % 2 == 0 else h) for i, v in enumerate(coords)]


def tokens(bins) -> str:
    return "".join(f"<loc_{q}>" for q in bins)


def box_tokens(box, image_size) -> str:
    return tokens(quantize_points(box, image_size))


# a region (REGION_TO_* prompts) and an OCR quad serialise like a box: each x, y pair in order
region_tokens = quad_tokens = box_tokens


def polygon_tokens(polygons, image_size) -> str:
    """One instance's polygons, separated by ``<sep>``."""
    return POLY_SEP.join(tokens(quantize_points(p, image_size)) for p in polygons)
