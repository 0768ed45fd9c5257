"""The items of a JSON document's top-level arrays, one at a time, from a file of any size.

COCO-style annotation files are one object whose members are large arrays (``images``,
``annotations``); ``json.load`` holds all of it, several times the file's size, in one worker.
``iter_arrays`` keeps one item (and a read buffer) in memory, with ``json``'s own C decoder doing
the work per item.
"""
from __future__ import annotations

import json
import re
from typing import Iterator

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
CHUNK_CHARS = 1 << 20


class _Cursor:
    def __init__(self, f):
        self.f, self.buf, self.pos, self.eof = f, "", 0, False

    def _more(self) -> bool:
        data = self.f.read(CHUNK_CHARS)
        if not data:
            self.eof = True
            return False
        self.buf, self.pos = self.buf[self.pos:] + data, 0
        return True

    def peek(self) -> str:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def take(self, allowed: str) -> str:
        c = self.peek()
        if not c or c not in allowed:
            raise ValueError(f"expected one of {allowed!r} at character {self.pos} of the buffer, got {c!r}")
        self.pos += 1
        return c

    def value(self):
        self.peek()
        while True:
            try:
                v, end = _DECODER.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number at the buffer's end may go on in the next chunk
                    self.pos = end
                    return v
            except json.JSONDecodeError:
                if self.eof:
                    raise
            if not self._more() and self.pos >= len(self.buf):
                raise ValueError("unexpected end of file")


def iter_arrays(path, keys: set[str]) -> Iterator[tuple[str, object]]:
    """``(key, item)`` for every item of the top-level arrays named in ``keys``, in file order.
    Other members are read and dropped item by item; a named member that is not an array raises."""
    with open(path, encoding="utf-8") as f:
        cur = _Cursor(f)
        cur.take("{")
        if cur.peek() == "}":
            return
        while True:
            key = cur.value()
            cur.take(":")
            if cur.peek() == "[":
                cur.take("[")
                if cur.peek() == "]":
                    cur.take("]")
                else:
                    while True:
                        item = cur.value()
                        if key in keys:
                            yield key, item
                        if cur.take(",]") == "]":
                            break
            else:
                cur.value()
                if key in keys:
                    raise ValueError(f"member {key!r} is not an array")
            if cur.take(",}") == "}":
                return
