"""Model factory: named Florence-2 configurations over transformers' own
``Florence2ForConditionalGeneration`` (not reimplemented here).

``base`` and ``large`` have the official dimensions; ``tiny`` and ``small`` are
for CPU training and tests.  Models save and load in the Hugging Face layout,
which is also the layout of converted official checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from florence2.processing import Processor, num_image_tokens


@dataclass(frozen=True)
class ModelSize:
    image_size: int
    embed_dim: tuple
    num_heads: tuple
    depths: tuple
    window_size: int
    d_model: int
    layers: int           # encoder and decoder each
    heads: int
    ffn: int
    max_positions: int
    patch_stride: tuple = (4, 2, 2, 2)    # DaViT stage strides; the product is the visual grid's cell size


SIZES = {
    # tiny's last stage keeps stride 1: an 8x8 grid of 16-px cells instead of 4x4 of 32 px, which is
    # what lets it learn from the image at all (issue 9's ablation); it costs ~nothing on CPU
    "tiny": ModelSize(128, (32, 64, 96, 128), (1, 2, 3, 4), (1, 1, 1, 1), 4, 128, 2, 4, 512, 512, (4, 2, 2, 1)),
    "small": ModelSize(256, (48, 96, 192, 384), (2, 4, 8, 12), (1, 1, 3, 1), 8, 256, 3, 4, 1024, 512),
    "base": ModelSize(768, (128, 256, 512, 1024), (4, 8, 16, 32), (1, 1, 9, 1), 12, 768, 6, 12, 3072, 1024),
    "large": ModelSize(768, (256, 512, 1024, 2048), (8, 16, 32, 64), (1, 1, 9, 1), 12, 1024, 12, 16, 4096, 1024),
}


def make_config(size: str, vocab_size: int, image_token_id: int, pad_token_id=1, bos_token_id=0, eos_token_id=2):
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    s = SIZES[size]
    vision = Florence2VisionConfig(
        depths=s.depths, embed_dim=s.embed_dim, num_heads=s.num_heads, num_groups=s.num_heads,
        window_size=s.window_size, projection_dim=s.d_model, patch_stride=s.patch_stride, drop_path_rate=0.1 if size in ("base", "large") else 0.0)
    text = BartConfig(
        vocab_size=vocab_size, d_model=s.d_model, encoder_layers=s.layers, decoder_layers=s.layers,
        encoder_attention_heads=s.heads, decoder_attention_heads=s.heads, encoder_ffn_dim=s.ffn,
        decoder_ffn_dim=s.ffn, max_position_embeddings=s.max_positions, pad_token_id=pad_token_id,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, decoder_start_token_id=eos_token_id,
        forced_eos_token_id=eos_token_id, dropout=0.1 if size in ("base", "large") else 0.0, scale_embedding=False)
    return Florence2Config(text_config=text, vision_config=vision, image_token_id=image_token_id)


def create(size: str, tokenizer, seed: int = 0, scratch_init: bool = True, positions: str = "bins",
           image_size: int | None = None):
    """A randomly initialised model of a named size, and its processor (``image_size``: another input
    size than the preset's, in multiples of the grid's cell; the grid grows with it).

    ``scratch_init`` gives the two image-side position signals a structure a
    from-scratch model cannot afford to learn first (see ``init_for_scratch``).
    """
    import torch
    from transformers import Florence2ForConditionalGeneration

    cfg = make_config(size, len(tokenizer), tokenizer.image_token_id, tokenizer.pad_token_id,
                      tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(cfg)
    image_size = image_size or SIZES[size].image_size
    cell = math.prod(cfg.vision_config.patch_stride)
    if image_size % cell:
        raise ValueError(f"image_size {image_size} is not a multiple of the {size} grid's cell ({cell} px)")
    n_tokens = num_image_tokens(image_size, cfg.vision_config)
    if scratch_init:
        init_for_scratch(model, tokenizer, positions, int(round(math.sqrt(n_tokens - 1))))
    model.generation_config.decoder_start_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    proc = Processor(tokenizer, image_size, n_tokens)
    return model, proc


def loc_token_range(tokenizer) -> tuple[int, int] | None:
    """(first id, end id) of ``<loc_0>``..``<loc_999>`` when they are contiguous (ours and the official vocab)."""
    first = tokenizer.convert_tokens_to_ids("<loc_0>")
    last = tokenizer.convert_tokens_to_ids("<loc_999>")
    if first is None or last is None or last - first != 999:
        return None
    return first, last + 1


def _sinusoid(positions, dim: int, max_period: float):
    import torch

    freqs = torch.exp(-torch.arange(0, dim, 2).float() / dim * math.log(max_period))
    ang = positions.float()[:, None] * freqs[None, :]
    out = torch.empty(len(positions), dim)
    out[:, 0::2] = torch.sin(ang)[:, : (dim + 1) // 2]
    out[:, 1::2] = torch.cos(ang)[:, : dim // 2]
    return out


LOC_PERIOD = 2000.0  # the <loc_k> sinusoids' longest period, in bins


def init_for_scratch(model, tokenizer, positions: str = "grid", grid: int = 0) -> None:
    """Initialisation that lets a model trained from scratch localise.

    - The DaViT grid's 2D position embeddings start as sinusoids at the scale of
      the visual features.  At the default N(0, 0.02) they are ~50x smaller than
      the features, so the text side cannot tell where an image token is.
      ``positions="grid"``: sinusoids of the grid index; ``"bins"``: sinusoids of
      the cell centre in location bins at the ``<loc_k>`` frequencies, so that a
      column's embedding is (half of) the embedding of its centre's ``<loc_k>``
      and reading a position out is a linear map (``grid``: cells per side).
    - ``<loc_k>`` embeddings (tied with the output layer) start as sinusoids of
      k, so neighbouring bins start close and a near miss already earns gradient.
    """
    import torch

    if positions not in ("grid", "bins") or (positions == "bins" and grid < 1):
        raise ValueError(f"positions must be 'grid', or 'bins' with the grid size; got {positions!r}, {grid}")
    with torch.no_grad():
        pe = model.model.multi_modal_projector.image_position_embed
        for emb in (pe.row_embeddings, pe.column_embeddings):
            n, d = emb.weight.shape
            if positions == "bins":
                emb.weight.copy_(_sinusoid((torch.arange(n) + 0.5) * 1000.0 / grid, d, LOC_PERIOD))
            else:
                emb.weight.copy_(_sinusoid(torch.arange(n), d, 100.0))
        rng = loc_token_range(tokenizer)
        if rng:
            w = model.get_input_embeddings().weight
            d = w.shape[1]
            w[rng[0]:rng[1]] = _sinusoid(torch.arange(1000), d, LOC_PERIOD) * w.std()


def save(model, processor: Processor, path) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))


def load(path, device: str = "cpu"):
    """A model directory in the Hugging Face layout (ours, or a converted official checkpoint)."""
    from transformers import Florence2ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor bar on every load floods job output
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
    model = Florence2ForConditionalGeneration.from_pretrained(str(path)).to(device).eval()
    return model, Processor.from_pretrained(path)
