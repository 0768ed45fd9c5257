"""Tokenizer: an official Florence-2 tokenizer directory when given, else one built here.

The built tokenizer is byte-level BPE (the ``tokenizers`` library) trained on
corpus text, with BART's special tokens at BART's ids (``<s>``=0, ``<pad>``=1,
``</s>``=2, ``<unk>``=3), the 1,000 location tokens, the polygon tokens and the
``<image>`` placeholder that transformers' ``Florence2Processor`` expects.
"""
from __future__ import annotations

import re
from typing import Iterable

from florence2.locations import LOC_TOKENS, POLY_END, POLY_SEP, POLY_START
from florence2.tasks import TASKS

SPECIAL = ("<s>", "<pad>", "</s>", "<unk>")
IMAGE_TOKEN = "<image>"
# Location and polygon tokens are added whole after training; in the corpus they would only spend merges on
# '<loc_' fragments, and a target's words between them are still words (a line break keeps 'star' unprefixed).
_ADDED = re.compile("|".join(re.escape(t) for t in (POLY_START, POLY_END, POLY_SEP)) + r"|<loc_\d+>")


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 2000):
    """Train a byte-level BPE on ``corpus`` (plus every task prompt; location and polygon tokens taken out of
    the texts, so an ``<OD>`` target teaches its label words) and add Florence-2's tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    prompts = [t.prompt.replace("{input}", "") for t in TASKS.values()]
    tok.train_from_iterator([_ADDED.sub("\n", t) for t in corpus] + prompts * 20, trainer)
    # Location and polygon tokens are ordinary added tokens (decoded, not skipped), as in the official vocabulary.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in (*LOC_TOKENS, POLY_START, POLY_END, POLY_SEP)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, model_max_length=1024)
    assert [fast.convert_tokens_to_ids(t) for t in SPECIAL] == [0, 1, 2, 3]
    return fast


def load_tokenizer(path):
    """An official (or previously saved) tokenizer directory."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if getattr(tok, "image_token", None) is None:
        raise ValueError(f"tokenizer at {path} has no image token; expected a converted Florence-2 tokenizer")
    return tok


def template_words(tok) -> frozenset[int]:
    """The words of the task prompts' fixed text (``florence2.tasks``) as ``head_tokens`` ids: an answer
    word among them is not taken to copy the prompt's input (a caption's 'the' is the model's own)."""
    cached = getattr(tok, "_fld_template_words", None)
    if cached is None:
        heads = head_tokens(tok)
        cached = frozenset(heads[i] for t in TASKS.values()
                           for i in tok(t.prompt.replace("{input}", " "), add_special_tokens=False)["input_ids"])
        tok._fld_template_words = cached
    return cached


def head_tokens(tok) -> list[int]:
    """Per token id, the id of the same word without its leading space where the vocabulary has it
    (byte-level BPE writes ' star' as 'Ġstar', another token than 'star'), else the id itself.  The
    region-cell term names cells by label tokens: OD's 'star' and grounding's 'a red star' must give
    the same cells one name, not two."""
    cached = getattr(tok, "_fld_head_tokens", None)
    if cached is not None:
        return cached
    vocab = tok.get_vocab()
    heads = list(range(max(len(tok), max(vocab.values()) + 1)))
    for piece, i in vocab.items():
        if piece.startswith("\u0120") and len(piece) > 1 and piece[1:] in vocab:
            heads[i] = vocab[piece[1:]]
    tok._fld_head_tokens = heads
    return heads
