"""Shared helpers for the Florence-2 tests: a tiny tokenizer and processor built here."""
from __future__ import annotations

import functools

from lakehouse.synthetic import generate


@functools.lru_cache(maxsize=None)
def corpus(n: int = 60) -> tuple[str, ...]:
    texts = []
    for s, _ in generate(n, seed=11):
        texts += list(s.captions.values()) + [o.category for o in s.objects] + [w.text for w in s.words]
        texts += [r["expression"] for r in s.referring]
    return tuple(texts)


@functools.lru_cache(maxsize=None)
def tokenizer():
    from florence2.tokenization import build_tokenizer

    return build_tokenizer(corpus(), vocab_size=1500)


@functools.lru_cache(maxsize=None)
def tiny():
    from florence2 import modeling

    return modeling.create("tiny", tokenizer(), seed=0)
