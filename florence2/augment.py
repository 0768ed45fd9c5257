"""Label-preserving symmetries of an ``<OD>`` example: its image and its boxes, moved together.

A few hundred scenes seen for dozens of epochs are memorised, not learned (issue 9: 600 scenes, 6 CPU
minutes, validation loss 6.2 against 2.6 in training). A flipped or rotated scene names the same objects at
other places, so each symmetry is a new example for free. Symmetry ``k`` (0-7) of the square the
processor resizes every image to: bit 2 transposes (x <-> y) first, then bit 0 flips x, bit 1 flips y;
``hflip`` uses 0-1 (what suits photos), ``dihedral`` all 8 (shapes, which have no up). The target stays
in the task language: the same labels and location bins, re-sorted in reading order
(``florence2.targets.reading_order``'s key on the new bins).
"""
from __future__ import annotations

import re

from florence2.locations import BINS, LOC_RE, tokens

SYMMETRIES = {"none": 1, "hflip": 2, "dihedral": 8}
_BOX = re.compile(r"([^<]*)((?:<loc_\d+>){4})")


def box_bins(box: list[int], k: int) -> list[int]:
    """(x0, y0, x1, y1) in bins under symmetry ``k``."""
    x0, y0, x1, y1 = box
    top = BINS - 1
    if k & 4:
        x0, y0, x1, y1 = y0, x0, y1, x1
    if k & 1:
        x0, x1 = top - x1, top - x0
    if k & 2:
        y0, y1 = top - y1, top - y0
    return [x0, y0, x1, y1]


def od_target(target: str, k: int) -> str:
    """An ``<OD>`` target (``label<loc>x4`` repeated) as the image under symmetry ``k`` answers it."""
    if not k:
        return target
    items = _BOX.findall(target)
    if "".join(label + locs for label, locs in items) != target:
        raise ValueError(f"not an <OD> target (label followed by 4 location tokens, repeated): {target[:80]!r}")
    moved = [(label, box_bins([int(b) for b in LOC_RE.findall(locs)], k)) for label, locs in items]
    moved.sort(key=lambda it: (it[1][1], it[1][0], it[1][3], it[1][2]))
    return "".join(label + tokens(b) for label, b in moved)


def pixels(px, k: int):
    """One image tensor (C, H, W; H == W) under symmetry ``k``."""
    if k & 4:
        px = px.transpose(-1, -2)
    if k & 1:
        px = px.flip(-1)
    if k & 2:
        px = px.flip(-2)
    return px
