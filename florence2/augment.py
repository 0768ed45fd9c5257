"""Label-preserving symmetries of an ``<OD>`` example: its image and its boxes, moved together.

A few hundred scenes seen for dozens of epochs are memorised, not learned (issue 9: 600 scenes, 6 CPU
minutes, validation loss 6.2 against 2.6 in training). A flipped or rotated scene names the same objects at
other places, so each symmetry is a new example for free. Symmetry ``k`` (0-7) of the square the
processor resizes every image to: bit 2 transposes (x <-> y) first, then bit 0 flips x, bit 1 flips y;
``hflip`` uses 0-1 (what suits photos), ``dihedral`` all 8 (shapes, which have no up). The target stays
in the task language: the same labels and location bins, re-sorted in reading order
(``florence2.targets.reading_order``'s key on the new bins).

``zoom_out`` adds the other free move a detector learns positions from: the image shrunk by a random
factor and put down at a random place on a canvas of its own border colour (SSD's zoom-out), so a few
hundred scenes put their objects at every place and size; no object is cut, so every label stays true.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from florence2.locations import BINS, LOC_RE, tokens

SYMMETRIES = {"none": 1, "hflip": 2, "dihedral": 8}
_BOX = re.compile(r"([^<]*)((?:<loc_\d+>){4})")


@dataclass(frozen=True)
class Move:
    """What one example undergoes: symmetry ``k``, then (``scale`` < 1) a shrink to ``scale`` of the side,
    placed at fractions ``u``, ``v`` (0: left / top, 1: right / bottom) of the room left on the canvas."""
    k: int = 0
    scale: float = 1.0
    u: float = 0.0
    v: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.k) or self.scale < 1.0

    def place(self, side: int) -> tuple[int, int, int]:
        """(size, x, y) in pixels of the shrunk image on a ``side`` x ``side`` canvas."""
        size = max(1, round(self.scale * side))
        return size, round(self.u * (side - size)), round(self.v * (side - size))


def zoom_bins(box: list[int], size: int, x: int, y: int, side: int) -> list[int]:
    """(x0, y0, x1, y1) in bins of an image shrunk to ``size`` pixels at (x, y) on a ``side`` canvas: each bin's
    centre, moved, falls in the new bin (what quantising the moved pixel box gives)."""
    def one(b, o):
        return min(BINS - 1, max(0, int(((b + 0.5) * size / BINS + o) * BINS / side)))
    return [one(box[0], x), one(box[1], y), one(box[2], x), one(box[3], y)]


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


def od_target(target: str, k: int | Move, side: int = 0) -> str:
    """An ``<OD>`` target (``label<loc>x4`` repeated) as the image under symmetry (or ``Move``) ``k`` answers it;
    ``side``: the square's side in pixels, which a zoom needs."""
    move = k if isinstance(k, Move) else Move(k)
    if not move:
        return target
    items = _BOX.findall(target)
    if "".join(label + locs for label, locs in items) != target:
        raise ValueError(f"not an <OD> target (label followed by 4 location tokens, repeated): {target[:80]!r}")
    moved = [(label, box_bins([int(b) for b in LOC_RE.findall(locs)], move.k)) for label, locs in items]
    if move.scale < 1.0:
        size, x, y = move.place(side)
        moved = [(label, zoom_bins(b, size, x, y, side)) for label, b in moved]
    moved.sort(key=lambda it: (it[1][1], it[1][0], it[1][3], it[1][2]))
    return "".join(label + tokens(b) for label, b in moved)


def pixels(px, k: int | Move):
    """One image tensor (C, H, W; H == W) under symmetry (or ``Move``) ``k``."""
    move = k if isinstance(k, Move) else Move(k)
    px = _symmetry(px, move.k)
    if move.scale < 1.0:
        import torch.nn.functional as F

        side = px.shape[-1]
        size, x, y = move.place(side)
        edge = border_colour(px)
        canvas = edge[:, None, None].expand(-1, side, side).clone()
        canvas[:, y:y + size, x:x + size] = F.interpolate(px[None], size=(size, size), mode="bilinear",
                                                          antialias=True, align_corners=False)[0]
        px = canvas
    return px


def border_colour(px):
    """Per channel, the median of the image's outermost pixels: the colour the canvas around a zoom takes."""
    import torch

    return torch.cat([px[:, 0], px[:, -1], px[:, :, 0], px[:, :, -1]], dim=1).median(dim=1).values


def _symmetry(px, k: int):
    if k & 4:
        px = px.transpose(-1, -2)
    if k & 1:
        px = px.flip(-1)
    if k & 2:
        px = px.flip(-2)
    return px
