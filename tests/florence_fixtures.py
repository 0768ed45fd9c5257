"""Shared helpers for the Florence-2 tests: a tiny tokenizer and processor built here."""
from __future__ import annotations

import functools

from florence2.targets import build_examples, from_synthetic
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


LEARN_TASKS = ["<CAPTION>", "<OD>", "<CAPTION_TO_PHRASE_GROUNDING>", "<OCR_WITH_REGION>",
               "<REFERRING_EXPRESSION_SEGMENTATION>"]


def _eight_examples():
    """8 examples over 5 tasks; a task appears on two different images, so the model must look."""
    chosen = []
    for s, img in generate(60, seed=21):
        if not s.words or any(o.category == "circle" for o in s.objects) or len(s.objects) > 2:
            continue
        exs = {e.task: e for e in build_examples(from_synthetic(s.to_dict()))}
        for t in sorted(LEARN_TASKS, key=lambda t: sum(c[1].task == t for c in chosen)):
            if (t in exs and sum(c[1].task == t for c in chosen) < 2 and len(chosen) < 8
                    and sum(c[0] is img for c in chosen) < 2):
                chosen.append((img, exs[t]))
    assert {c[1].task for c in chosen} == set(LEARN_TASKS) and len(chosen) == 8
    return chosen


def train_eight(max_steps: int, stop_loss: float):
    """A tiny model fitted to the 8 examples (teacher forcing, AdamW); returns (model, processor, data)."""
    import torch

    from florence2 import modeling, recipe
    from florence2.tasks import build_prompt

    torch.manual_seed(0)
    model, proc = modeling.create("tiny", tokenizer(), seed=0)
    model.set_attn_implementation("eager")  # the recipe's region attention term reads attention weights
    data = _eight_examples()
    batch = proc.batch([img for img, _ in data], [build_prompt(e.task, e.text, e.region, img.size) for img, e in data],
                       [e.target for _, e in data])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    # the recipe's objective (anti-collapse term included), with one-hot location targets so
    # that the exact answers are what is learned
    cfg = recipe.Config(loc_sigma=0.0)
    model.train()
    for _ in range(max_steps):
        total, ce = recipe.step_loss(model, batch, cfg, modeling.loc_token_range(proc.tokenizer),
                                     tok=proc.tokenizer)
        opt.zero_grad()
        total.backward()
        opt.step()
        if ce.item() < stop_loss:
            break
    return model.eval(), proc, data
