"""The training recipe: an explicit loop, a YAML config, command-line overrides.

    python -m florence2.recipe --config configs/train_tiny.yaml --data run/data.json source=files
    horovodrun -np 2 --gloo python -m lakehouse.training --config ... --data run/data.json

``--data`` is written by ``jobs.train`` (the Spark side): the exact parquet files
of one Delta version of ``training_examples``, their row count, and the
tokenizer directory.  Without Horovod in the environment (no ``horovodrun``) the
recipe runs as one process.  The recipe imports nothing from the lakehouse: it
reads the files itself (``source=files``) or is handed a batch source
(``lakehouse.training`` hands it Petastorm's).  Each step: read a batch, forward, per-example mean cross-entropy, backward,
(accumulate), all-reduce gradients, clip, AdamW, LR schedule.  Rank 0 writes
checkpoints every ``checkpoint_every`` steps and the run resumes from the
newest one after a crash.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import yaml


@dataclasses.dataclass
class Config:
    model_size: str = "tiny"
    image_size: int = 0                   # input size of a fresh model; 0: the size preset's (tiny 128)
    init_from: str | None = None          # a model directory to fine-tune instead of a fresh model
    batch_size: int = 8                   # per rank, per micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 20
    schedule: str = "cosine"              # cosine | linear | constant
    max_steps: int = 200
    max_minutes: float | None = None      # stop (all ranks together) after this much training time
    stop_minutes: float | None = None     # end this run sooner, the schedule still running to max_minutes: the
                                          # phases of a curriculum resume one schedule (same output_dir)
    epochs: int = 1000                    # upper bound; max_steps usually ends the run
    checkpoint_every: int = 50
    output_dir: str = "fld_home/runs/train"
    seed: int = 0
    source: str = "petastorm"             # petastorm (sharded, decoded in reader workers) | files (read whole)
    shuffle: bool = True                  # files: a seeded permutation per epoch, the same on every rank; without
                                          # it a batch holds the examples of 2-3 images (ids sort by image)
    reader_pool: str = "process"
    reader_workers: int = 2               # Petastorm workers, and the threads decoding batches ahead
    bf16: str = "auto"                    # auto: bf16 autocast on CUDA only
    # GPU efficiency (issue 11); each leaves the loss unchanged (tests/test_training.py)
    compile: bool = False                 # torch.compile the model (long first steps; worth it on a GPU)
    compile_backend: str = "inductor"     # aot_eager: the same graphs without code generation (CPU tests)
    fused_adamw: str = "auto"             # auto: fused AdamW kernels on CUDA, the reference loop on CPU
    pad_multiple: int = 0                 # token lengths rounded up to a multiple (few distinct shapes for a
                                          # compiled model); 0: 8 when compiling, else 1 (padding costs on CPU)
    log_every: int = 10                   # the loss is read back from the device only on these steps
    mlflow_run_id: str | None = None      # rank 0 logs step metrics into this run
    # From-scratch learning (issue 9): without these the model learns each target from its own
    # prefix and the visual features collapse to a constant, so the image is shut out.
    scratch_init: bool = True             # florence2.modeling.init_for_scratch on a fresh model
    loc_sigma: float = 8.0                # soft location targets: Gaussian over bins (std in bins); 0 = one-hot
    image_variance: float = 1.0           # weight of the anti-collapse term on the projected visual features
                                          # (a statistic of each rank's batch: Horovod runs differ slightly from one process)
    image_variance_floor: float = 0.5     # per-feature std across the batch below which the term pushes back
    # Region supervision from the targets themselves (every `label<loc>x4` box in a target): without
    # it the decoder learns box marginals and never finds out where to look (issue 9's probes).
    region_cells: float = 1.0             # each image token inside a target box predicts that box's label
                                          # through the tied output layer (background tokens predict </s>)
    region_attention: float = 1.0         # the decoder's cross-attention, while it writes a box and its
                                          # label, is pulled onto the image tokens inside that box
    region_edges: bool = True             # ... and while it writes x0 / y0 / x1 / y1, onto the box's
                                          # left column / top row / right column / bottom row only
    region_cells_balanced: bool = True    # the cell term averages object and background cells apart (most
                                          # cells are background, whose easy term otherwise drowns the shapes)
    region_prompts: bool = False          # a text answer about the prompt's region (<REGION_TO_CATEGORY>) is
                                          # supervised as that box's label (cells and attention); off: no gain
                                          # measured yet (6 CPU minutes left both arms image-blind)
    region_pool: float = 0.0              # each target box's image tokens, averaged (what the decoder reads
                                          # when its attention spreads over the box), predict the box's label
                                          # through the tied output layer: a whole shape, where one cell of a
                                          # large one sees flat colour
    free_copied_words: bool = False       # answer words the prompt's input holds (grounding's phrases) are read
                                          # from the prompt: region_attention leaves their positions alone
    copy_attention: float = 0.0           # ... and the cross-attention that writes such a word is pulled onto
                                          # the prompt tokens holding it (a pointer's supervision; implies
                                          # free_copied_words): grounding R@1 matches phrases word for word
    region_quads: bool = False            # <OCR_WITH_REGION>'s words count as boxes (their quads' bounding
                                          # boxes) for the region terms: cells name the word, attention looks there
    scratch_positions: str = "bins"       # florence2.modeling.init_for_scratch: grid | bins
    vision_lr_scale: float = 1.0          # the vision tower's and projector's rate, as a multiple of lr
    augment: str = "none"                 # each <OD> example takes a random symmetry of its image and boxes
                                          # (florence2.augment): none | hflip | dihedral
    zoom_out: float = 1.0                 # ... and shrinks by a random factor in [zoom_out, 1] onto a canvas of
                                          # its border colour, at a random place (1: never)


def parse_first(text: str, minutes: float | None, tasks) -> tuple[list[str], float]:
    """A curriculum's first phase, ``TASK[,TASK]=MINUTES``: those tasks alone for MINUTES of a run of
    ``minutes``; the tasks must be among ``tasks``."""
    names, _, mins = text.partition("=")
    chosen = [t for t in names.split(",") if t]
    try:
        m = float(mins)
    except ValueError:
        m = float("nan")
    if not chosen or set(chosen) - set(tasks) or not 0 < m < (minutes or 0):
        raise SystemExit(f"first phase {text!r}: expected TASK[,TASK]=MINUTES with tasks from {sorted(tasks)} and "
                         f"0 < MINUTES < the run's max_minutes ({minutes})")
    return chosen, m


def load_config(path: str | None, overrides: list[str]) -> Config:
    """YAML file, then ``key=value`` overrides (values parsed as YAML)."""
    values = yaml.safe_load(open(path)) if path else {}
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(Config)}
    for ov in overrides:
        if "=" not in ov:
            raise SystemExit(f"override {ov!r} is not key=value")
        k, v = ov.split("=", 1)
        values[k.strip()] = yaml.safe_load(v)
    unknown = set(values) - fields
    if unknown:
        raise SystemExit(f"unknown config keys: {sorted(unknown)}; known: {sorted(fields)}")
    for f in dataclasses.fields(Config):
        v = values.get(f.name)
        # YAML reads 2e-3 (no dot) as a string; numbers are what a numeric key means
        if isinstance(v, str) and f.type.split(" |")[0] in ("float", "int"):
            try:
                values[f.name] = float(v) if f.type.startswith("float") else int(v)
            except ValueError:
                raise SystemExit(f"config key {f.name} takes a number ({f.type}), not {v!r}") from None
    return Config(**values)


class Dist:
    """Horovod when launched by horovodrun / horovod.spark, else a single process."""

    def __init__(self, use_horovod: bool | None = None):
        if use_horovod is None:
            use_horovod = any(k in os.environ for k in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "HOROVOD_HOSTNAME"))
        self.hvd = None
        if use_horovod:
            import horovod.torch as hvd

            hvd.init()
            self.hvd = hvd
        self.rank = self.hvd.rank() if self.hvd else 0
        self.size = self.hvd.size() if self.hvd else 1

    def allreduce_min(self, value: int) -> int:
        if not self.hvd:
            return value
        import torch

        return int(self.hvd.allreduce(torch.tensor(value), op=self.hvd.Min, name="min").item())

    def allreduce_sum(self, value: int, name: str) -> int:
        if not self.hvd:
            return value
        import torch

        return int(self.hvd.allreduce(torch.tensor(value), op=self.hvd.Sum, name=name).item())

    def allreduce_max(self, value: float, name: str) -> float:
        if not self.hvd:
            return value
        import torch

        return float(self.hvd.allreduce(torch.tensor(float(value)), op=self.hvd.Max, name=name).item())


def lr_factor(step: int, cfg: Config, minutes: float | None = None) -> float:
    """Warm-up in steps, then the schedule over whichever budget ends first: ``max_steps``, or
    ``max_minutes`` of training time (``minutes`` so far), so a time-budgeted run still decays."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_minutes and minutes is not None:
        frac = max(frac, minutes / cfg.max_minutes)
    return max(0.0, 1 - frac) if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def example_loss(logits, labels, loc_range: tuple[int, int] | None = None, loc_sigma: float = 0.0):
    """Mean over examples of each example's mean token loss, so that averaging the
    ranks' losses equals one process over the union of their batches.

    With ``loc_range`` and ``loc_sigma`` > 0, a location token's target is a Gaussian
    over the neighbouring bins instead of one bin: predicting bin 411 for 412 is
    nearly right, and one-hot cross-entropy gives it no credit at all.
    """
    import torch
    import torch.nn.functional as F

    tok = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    if loc_range and loc_sigma > 0:
        # computed at every position and selected, not gathered: no data-dependent shapes, no host sync
        a, b = loc_range
        is_loc = (labels >= a) & (labels < b)
        lp = F.log_softmax(logits.float(), -1)[..., a:b]
        bins = torch.arange(b - a, device=labels.device, dtype=torch.float32)
        centre = (labels - a).clamp(0, b - a - 1).float()[..., None]
        q = torch.exp(-(bins - centre) ** 2 / (2 * loc_sigma ** 2))
        tok = torch.where(is_loc, -(q / q.sum(-1, keepdim=True) * lp).sum(-1), tok)
    mask = (labels != -100).float()
    return ((tok * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def image_variance_loss(features, floor: float):
    """Hinge on each visual feature's std across the batch (VICReg's variance term).

    Early in training the image is noise to a decoder that is still learning the
    targets' marginals, and the cheapest way to remove that noise is to make every
    image look the same: the tower learns a large constant output and the loss
    becomes exactly the same with the images shuffled.  This term makes that
    collapse cost something, so the features stay informative until they are used.
    """
    import torch

    if features.shape[0] < 2:
        return features.new_zeros(())
    std = torch.sqrt(features.float().var(0) + 1e-4)
    return torch.relu(floor - std).mean()


def target_boxes(labels, loc_range: tuple[int, int], skip_ids,
                 quads: list[bool] | None = None) -> list[list[tuple[int, tuple, list[int]]]]:
    """The boxes a batch of targets names: per example, (last token of the box's text, (x0, y0, x1, y1)
    in bins, positions in the target of the text and the four location tokens).  The last token, so
    that OD's 'circle' and grounding's 'a red circle' give the image tokens of a circle one name.  Only text followed by
    four location tokens that form a box counts (OD, dense captions, grounding, open-vocabulary
    detection); polygons do not form boxes and are skipped, and so are quads unless ``quads`` marks the
    example (``<OCR_WITH_REGION>``: eight location tokens, whose bounding box is the word's box)."""
    a, b = loc_range
    out = []
    for i, row in enumerate(labels.tolist()):
        boxes, word, span, locs, new = [], None, [], [], True
        n = 8 if quads and quads[i] else 4
        for pos, t in enumerate(row):
            if a <= t < b:
                locs.append(t - a)
                span.append(pos)
                if len(locs) == n:
                    x0, y0, x1, y1 = locs if n == 4 else (min(locs[0::2]), min(locs[1::2]), max(locs[0::2]), max(locs[1::2]))
                    if word is not None and x1 > x0 and y1 > y0:
                        boxes.append((word, (x0, y0, x1, y1), span))
                    locs, span = [], []
                new = True
            elif t < 0 or t in skip_ids:
                locs, span = [], []
            else:
                locs = []
                if new:  # the first text token after a box starts the next label
                    span, new = [], False
                word = t  # ends as the label's last token: its head noun ('a red circle', 'circle')
                span.append(pos)
        out.append(boxes)
    return out


def prompt_boxes(input_ids, labels, loc_range: tuple[int, int], skip_ids) -> list[tuple | None]:
    """Per example, the box its prompt asks about when the answer is text ((last answer token, box in bins,
    answer positions): ``<REGION_TO_CATEGORY>``, ``<REGION_TO_DESCRIPTION>``, ``<REGION_TO_OCR>``), else None.
    The answer is about that box, so it is supervised like a box the target names (``region_targets``)."""
    a, b = loc_range
    out = []
    for ids, row in zip(input_ids.tolist(), labels.tolist()):
        locs = [t - a for t in ids if a <= t < b]
        answer = [p for p, t in enumerate(row) if t >= 0 and t not in skip_ids]
        if len(locs) != 4 or not answer or any(a <= row[p] < b for p in answer):
            out.append(None)
            continue
        x0, y0, x1, y1 = locs
        out.append((row[answer[-1]], (x0, y0, x1, y1), answer) if x1 > x0 and y1 > y0 else None)
    return out


def box_cells(box: tuple, grid: int):
    """Boolean mask over a grid x grid image-token layout (row-major) of the cells whose centres lie
    in the box (bins of 1,000); a box smaller than a cell gets the cell of its centre."""
    import torch

    x0, y0, x1, y1 = box
    c = (torch.arange(grid) + 0.5) * 1000 / grid
    m = ((c[:, None] >= y0) & (c[:, None] <= y1) & (c[None, :] >= x0) & (c[None, :] <= x1)).flatten()
    if not bool(m.any()):
        m[min(grid - 1, int((y0 + y1) / 2 * grid / 1000)) * grid + min(grid - 1, int((x0 + x1) / 2 * grid / 1000))] = True
    return m


def _per_example_mean(values, mask):
    """Each example's mean over its masked entries, averaged over the whole batch (examples with none
    count as 0), so that averaging ranks' values equals one process over the union of their batches."""
    m = mask.float()
    return ((values * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def edge_cells(mask, grid: int):
    """The cells of a box mask (``box_cells``) on its left column, top row, right column and bottom row:
    where the position of x0, y0, x1 and y1 can be read."""
    import torch

    m = mask.view(grid, grid)
    rows, cols = torch.nonzero(m, as_tuple=True)
    out = []
    for axis, pick in ((cols, cols.min()), (rows, rows.min()), (cols, cols.max()), (rows, rows.max())):
        e = torch.zeros_like(m)
        keep = axis == pick
        e[rows[keep], cols[keep]] = True
        out.append(e.flatten())
    return out


def copied_words(input_ids: list[int], labels: list[int], loc_range, skip, heads=None,
                 template=frozenset()) -> dict[int, list[int]]:
    """Answer positions that write a word of the prompt's input -> the prompt positions holding that word.
    Words are ``head_tokens`` ids (' red' and 'red' are one word); the prompts' fixed text (``template``,
    ``tokenization.template_words``) and location tokens are never copied."""
    a, b = loc_range
    word = heads.__getitem__ if heads else int
    held: dict[int, list[int]] = {}
    for j, t in enumerate(input_ids):
        if t not in skip and not a <= t < b and word(t) not in template:
            held.setdefault(word(t), []).append(j)
    return {p: held[word(t)] for p, t in enumerate(labels)
            if t >= 0 and t not in skip and not a <= t < b and word(t) in held}


def region_targets(input_ids, labels, loc_range, text_config, image_token_id: int,
                   edges: bool = False, heads: list[int] | None = None, prompts: bool = False,
                   free_copied: bool = False, copy: bool = False, template=frozenset(),
                   quads: list[bool] | None = None) -> dict | None:
    """The targets of the region terms, built on the host from the batch's token ids (run it before the
    batch moves to the device: parsing boxes on device tensors would sync every step).

    ``cells`` (B, G*G): the label's last token for each image token inside a target box (larger boxes
    first, so a smaller box in front keeps its cells), ``</s>`` for the others, -100 for examples
    without boxes; ``where`` (B, L, G*G): for each target position that writes a box or its label, the
    image tokens of that box.  A text answer about the prompt's region (``prompt_boxes``) counts as that
    box's label, written at every answer position (``prompts``).  ``boxes`` (B, K, G*G) and ``box_labels``
    (B, K, -100 where an example has fewer) are each box's cells and label (``region_pool``).  ``first``/``grid`` locate the grid among the encoder's tokens.  ``heads``
    (``tokenization.head_tokens``) names a cell by its label's word without the leading space.
    ``free_copied``: a label's tokens that copy the prompt's input (``copied_words``: grounding copies its
    phrases from the caption) get no ``where``: pulling the attention that copies them onto the image would
    fight the copy.  ``copy`` (implies ``free_copied``): ``copy`` (B, L, S), for each such position the
    prompt positions that hold its word.  ``quads``: the examples whose words carry quads (``target_boxes``;
    no edges: a quad's corners are not a box's sides)."""
    import torch

    skip = {text_config.bos_token_id, text_config.eos_token_id, text_config.pad_token_id}
    per_example = target_boxes(labels, loc_range, skip, quads)
    asked = prompt_boxes(input_ids, labels, loc_range, skip) if prompts else [None] * labels.shape[0]
    per_example = [boxes or ([q] if q else []) for boxes, q in zip(per_example, asked)]
    if not any(per_example):
        return None
    is_image = (input_ids[0] == image_token_id).tolist()
    n_image = sum(is_image)
    grid = int(round(math.sqrt(n_image - 1)))  # the projector's global token comes first, then the grid
    first = is_image.index(True) + 1
    cells = torch.full((labels.shape[0], grid * grid), -100, dtype=torch.long)
    where = torch.zeros(tuple(labels.shape) + (grid * grid,), dtype=torch.bool)
    k = max(len(b) for b in per_example)
    pooled = torch.zeros((labels.shape[0], k, grid * grid), dtype=torch.bool)
    box_labels = torch.full((labels.shape[0], k), -100, dtype=torch.long)
    free_copied = free_copied or copy
    sources = torch.zeros(tuple(labels.shape) + (input_ids.shape[1],), dtype=torch.bool) if copy else None
    for i, boxes in enumerate(per_example):
        copied = (copied_words(input_ids[i].tolist(), labels[i].tolist(), loc_range, skip, heads, template)
                  if free_copied else {})
        for p, js in copied.items() if copy else ():
            sources[i, p, js] = True
        if not boxes:
            continue
        cells[i] = text_config.eos_token_id
        for j, (word, box, span) in enumerate(sorted(boxes, key=lambda wb: -(wb[1][2] - wb[1][0]) * (wb[1][3] - wb[1][1]))):
            m = box_cells(box, grid)
            cells[i][m] = box_labels[i, j] = heads[word] if heads else word
            pooled[i, j] = m
            where[i, [p for p in span if p not in copied]] = m
            if edges and not asked[i] and not (quads and quads[i]):  # a span ends with its four location tokens
                for pos, e in zip(span[-4:], edge_cells(m, grid)):
                    where[i, pos] = e
    out = {"cells": cells, "where": where, "boxes": pooled, "box_labels": box_labels, "first": first, "grid": grid}
    return out | ({"copy": sources} if copy else {})


def box_means(enc, boxes):
    """(B, K, D): each box's mean over its image tokens (``enc`` (B, G*G, D), ``boxes`` (B, K, G*G) masks)."""
    m = boxes.float()
    return (m @ enc.float() / m.sum(-1, keepdim=True).clamp(min=1)).to(enc.dtype)


def region_losses(model, out, targets: dict, cfg: Config):
    """(cell term, attention term, pooled term, copy term) of the region supervision (``Config.region_cells``
    / ``region_attention`` / ``region_pool`` / ``copy_attention``); each is a per-example mean like
    ``example_loss``, so Horovod ranks average to the one-process value."""
    import torch
    import torch.nn.functional as F

    zero = out.logits.new_zeros(())
    first, n = targets["first"], targets["grid"] ** 2
    cells, where = targets["cells"], targets["where"]
    cell_term = pool_term = zero
    enc = out.encoder_last_hidden_state[:, first:first + n]
    if cfg.region_pool > 0:
        mean = box_means(enc, targets["boxes"])
        ce = F.cross_entropy(model.lm_head(mean).float().transpose(1, 2), targets["box_labels"],
                             ignore_index=-100, reduction="none")
        pool_term = _per_example_mean(ce, targets["box_labels"] != -100)
    if cfg.region_cells > 0:
        ce = F.cross_entropy(model.lm_head(enc).float().transpose(1, 2), cells, ignore_index=-100, reduction="none")
        if cfg.region_cells_balanced:
            bg = cells == model.config.text_config.eos_token_id
            cell_term = _per_example_mean(ce, (cells != -100) & ~bg) + _per_example_mean(ce, bg)
        else:
            cell_term = _per_example_mean(ce, cells != -100)
    attn_term = copy_term = zero
    if (cfg.region_attention > 0 or cfg.copy_attention > 0) and not out.cross_attentions:
        # SDPA returns none, and the terms would silently be 0
        raise RuntimeError("region_attention / copy_attention > 0 need attention weights: call "
                           "model.set_attn_implementation('eager') first (SDPA returns none)")
    if cfg.region_attention > 0:
        # mean over layers and heads of the attention paid to each grid token
        att = torch.stack([c[..., first:first + n] for c in out.cross_attentions]).float().mean((0, 2))
        attn_term = _per_example_mean(-torch.log((att * where.float()).sum(-1) + 1e-6), where.any(-1))
    if cfg.copy_attention > 0 and "copy" in targets:
        src = targets["copy"]
        att = torch.stack(out.cross_attentions).float().mean((0, 2))
        copy_term = _per_example_mean(-torch.log((att * src.float()).sum(-1) + 1e-6), src.any(-1))
    return cell_term, attn_term, pool_term, copy_term


def make_optimizer(model, cfg: Config, device: str):
    import torch

    fused = device.startswith("cuda") if cfg.fused_adamw == "auto" else cfg.fused_adamw in (True, "true")
    vision = [p for n, p in model.named_parameters() if _is_vision(n)] if cfg.vision_lr_scale != 1.0 else []
    rest = [p for p in model.parameters() if all(p is not v for v in vision)]
    groups = [{"params": ps, "lr_scale": scale, "lr": cfg.lr * scale}
              for ps, scale in ((rest, 1.0), (vision, cfg.vision_lr_scale)) if ps]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01, fused=fused or None)


def _is_vision(name: str) -> bool:
    return ".vision_tower." in f".{name}" or ".multi_modal_projector." in f".{name}"


def _uses_regions(cfg: Config) -> bool:
    return cfg.region_cells > 0 or cfg.region_attention > 0 or cfg.region_pool > 0 or cfg.copy_attention > 0


def _needs_attention(cfg: Config) -> bool:
    return cfg.region_attention > 0 or cfg.copy_attention > 0


def batch_regions(input_ids, labels, cfg: Config, loc_range, model_config, tok=None) -> dict | None:
    """``region_targets`` of a batch under ``cfg`` (host tensors); ``tok`` names words and the prompts' fixed
    text (without it, token ids do, and ``copy_attention`` is refused)."""
    from florence2.tokenization import head_tokens, template_words

    if tok is None and (cfg.copy_attention > 0 or cfg.region_quads):
        raise ValueError("copy_attention > 0 and region_quads need the tokenizer: it tells the prompts' fixed words "
                         "from the input's, and which prompts ask for OCR with regions")
    quads = None
    if cfg.region_quads:
        from florence2.tasks import build_prompt

        ask = tok(build_prompt("<OCR_WITH_REGION>"), add_special_tokens=False)["input_ids"]
        quads = [_holds(row, ask) for row in input_ids.tolist()]
    return region_targets(input_ids, labels, loc_range, model_config.text_config, model_config.image_token_id,
                          cfg.region_edges, head_tokens(tok) if tok is not None else None, cfg.region_prompts,
                          cfg.free_copied_words, cfg.copy_attention > 0,
                          template_words(tok) if tok is not None else frozenset(), quads)


def _holds(row: list[int], part: list[int]) -> bool:
    return any(row[k:k + len(part)] == part for k in range(len(row) - len(part) + 1))


def step_loss(model, inputs: dict, cfg: Config, loc_range=None, regions: dict | None = None, tok=None):
    """The training objective of one (micro-)batch: (total, task cross-entropy).  ``regions`` is
    ``batch_regions`` of the batch; without it they are built here from ``inputs`` (and ``tok``)."""
    captured = []
    hook = None
    if cfg.image_variance > 0:
        hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.append(o))
    use_regions = loc_range is not None and _uses_regions(cfg)
    if use_regions and regions is None:
        regions = batch_regions(inputs["input_ids"].cpu(), inputs["labels"].cpu(), cfg, loc_range, model.config, tok)
        regions = regions and {k: v.to(inputs["labels"].device) if hasattr(v, "to") else v for k, v in regions.items()}
    try:
        labels = inputs["labels"]
        out = model(**inputs, output_attentions=bool(regions) and _needs_attention(cfg))
    finally:
        if hook is not None:
            hook.remove()
    ce = example_loss(out.logits, labels, loc_range, cfg.loc_sigma)
    total = ce + cfg.image_variance * image_variance_loss(captured[0], cfg.image_variance_floor) if captured else ce
    if use_regions and regions:
        cell_term, attn_term, pool_term, copy_term = region_losses(model, out, regions, cfg)
        total = (total + cfg.region_cells * cell_term + cfg.region_attention * attn_term + cfg.region_pool * pool_term
                 + cfg.copy_attention * copy_term)
    return total, ce


def prepare_batch(proc, pixels, prompts, targets, cfg: Config, model_config, loc_range, device: str,
                  moves: list | None = None):
    """(inputs, region targets) on ``device``: token ids padded to a multiple of ``cfg.pad_multiple``
    (fewer distinct shapes for a compiled model), region targets built on the host, then one
    non-blocking copy (from pinned memory on CUDA).  ``moves``: one ``florence2.augment.Move`` (or symmetry)
    per example (0: as it is; others only for ``<OD>`` examples)."""
    import torch

    from florence2 import augment

    if isinstance(pixels, list):  # decoded images: resize and normalise here (as tensors on a GPU)
        pixels = proc.preprocess_tensor(pixels, device) if device.startswith("cuda") else proc.preprocess(pixels)
    pixels = torch.as_tensor(pixels)
    if moves and any(moves):
        pixels = torch.stack([augment.pixels(p, m) for p, m in zip(pixels, moves)])
        targets = [augment.od_target(t, m, pixels.shape[-1]) for t, m in zip(targets, moves)]
    multiple = cfg.pad_multiple or (8 if cfg.compile else 1)
    inputs = proc.batch([], prompts, targets, pad_multiple=multiple) | {"pixel_values": pixels}
    regions = None
    if loc_range is not None and _uses_regions(cfg):
        regions = batch_regions(inputs["input_ids"], inputs["labels"], cfg, loc_range, model_config, proc.tokenizer)
    cuda = device.startswith("cuda")

    def move(v):
        if not hasattr(v, "to"):
            return v
        if cuda and v.device.type == "cpu":
            v = v.pin_memory()
        return v.to(device, non_blocking=cuda)

    inputs = {k: move(v) for k, v in inputs.items()}
    return inputs, regions and {k: move(v) for k, v in regions.items()}


def draw_moves(rng: random.Random, prompts: list[str], augment: str, zoom_out: float = 1.0) -> list | None:
    """One ``florence2.augment.Move`` per example: random for ``<OD>`` examples, none for the others (their
    targets name no boxes, or words and positions a move would falsify); None without augmentation."""
    from florence2.augment import SYMMETRIES, Move
    from florence2.tasks import build_prompt

    n, od = SYMMETRIES[augment], build_prompt("<OD>")
    if n == 1 and zoom_out >= 1.0:
        return None
    moves = []
    for p in prompts:
        if p != od:
            moves.append(Move())
            continue
        k = rng.randrange(n) if n > 1 else 0
        moves.append(Move(k, rng.uniform(zoom_out, 1.0), rng.random(), rng.random()) if zoom_out < 1.0 else Move(k))
    return moves


@dataclasses.dataclass(frozen=True)
class EpochEnd:
    """What a batch source yields after its last batch: the examples this rank read in the epoch."""
    rows: int


def _batches_files(data: dict, cfg: Config, dist: Dist, epoch: int, proc):
    """Fixed global order of examples (by ``example_id``, then permuted by ``seed`` and ``epoch`` when
    ``shuffle``): global batch k is examples [k*B*size, (k+1)*B*size); rank r takes its slice.  The files
    hold one row per image with its examples as a JSON list (``lakehouse.layout.EXAMPLE_FIELDS``).  Yields
    decoded images, each image decoded once per batch (``prepare_batch`` resizes them, on the GPU when there
    is one); a thread decodes the next batch while the current one trains."""
    import io
    import json
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq
    from PIL import Image

    contents, examples = [], []
    for f in data["files"]:
        for r in pq.read_table(f.replace("file:", "", 1) if f.startswith("file:") else f,
                               columns=["examples", "content"]).to_pylist():
            examples += [(e["example_id"], len(contents), e["prompt"], e["target"]) for e in json.loads(r["examples"])]
            contents.append(r["content"])
    examples.sort()
    if cfg.shuffle:
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(examples)
    global_b = cfg.batch_size * dist.size

    def load(k):
        part = examples[k * global_b + dist.rank * cfg.batch_size: k * global_b + (dist.rank + 1) * cfg.batch_size]
        decoded = {i: Image.open(io.BytesIO(contents[i])).convert("RGB") for i in {e[1] for e in part}}
        return [decoded[e[1]] for e in part], [e[2] for e in part], [e[3] for e in part]

    n = len(examples) // global_b
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(load, 0) if n else None
        for k in range(n):
            item = ahead.result()
            ahead = pool.submit(load, k + 1) if k + 1 < n else None
            yield item
    yield EpochEnd(len(examples) if dist.rank == 0 else 0)


class ShortReadError(RuntimeError):
    """An epoch read fewer (or more) rows than the data version holds."""


def check_count(read_rows: int, expected: int, what: str) -> None:
    if read_rows != expected:
        raise ShortReadError(f"{what}: read {read_rows} examples, the Delta version holds {expected}")


# source name -> batches(data, cfg, dist, epoch, proc): yields (pixels or images, prompts, targets) per
# batch, then EpochEnd(rows this rank read); callers add theirs (``train(sources=...)``)
SOURCES = {"files": _batches_files}


class Recipe:
    """One training run in explicit phases (torchtune's shape): ``setup`` (model, tokenizer, optimizer,
    resume, Horovod, compile, MLflow), ``train_epoch`` (one pass of the batch source, every rank taking
    the same number of steps), ``save_checkpoint`` and ``finish`` (final model and result)."""

    def __init__(self, cfg: Config, data: dict, dist: Dist | None = None, log=print, sources: dict | None = None):
        self.batches_fn = (SOURCES | (sources or {})).get(cfg.source)
        if self.batches_fn is None:
            raise ValueError(f"source={cfg.source!r} is not a batch source here (have: "
                             f"{', '.join(SOURCES | (sources or {}))}); source=petastorm runs through "
                             "python -m lakehouse.training")
        self.cfg, self.data, self.dist, self.log = cfg, data, dist or Dist(), log
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.step, self.epoch, self.prior_s, self.seen, self.last_loss = 0, 0, 0.0, 0, None

    def setup(self) -> "Recipe":
        import torch

        from florence2 import augment, modeling
        from florence2.tokenization import load_tokenizer

        cfg, dist = self.cfg, self.dist
        if cfg.augment not in augment.SYMMETRIES:
            raise SystemExit(f"augment={cfg.augment!r}: expected one of {sorted(augment.SYMMETRIES)}")
        if not 0.0 < cfg.zoom_out <= 1.0:
            raise SystemExit(f"zoom_out={cfg.zoom_out}: expected the smallest scale, in (0, 1] (1: no zoom)")
        # per rank, so ranks draw different symmetries; a resumed run draws afresh (any draw is a valid example)
        self.aug_rng = random.Random(cfg.seed * 7919 + dist.rank)
        torch.manual_seed(cfg.seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and dist.hvd:
            torch.cuda.set_device(dist.hvd.local_rank())
        tok = load_tokenizer(self.data["tokenizer"])
        if cfg.init_from:
            self.model, self.proc = modeling.load(cfg.init_from)
        else:
            self.model, self.proc = modeling.create(cfg.model_size, tok, seed=cfg.seed, scratch_init=cfg.scratch_init,
                                                     positions=cfg.scratch_positions, image_size=cfg.image_size or None)
        if _needs_attention(cfg):
            self.model.set_attn_implementation("eager")  # the only implementation that returns attention weights
        self.model.to(self.device).train()
        self.loc_range = modeling.loc_token_range(tok)
        self.opt = make_optimizer(self.model, cfg, self.device)
        self._resume()
        if dist.hvd:
            dist.hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
            dist.hvd.broadcast_optimizer_state(self.opt, root_rank=0)
            self.opt = dist.hvd.DistributedOptimizer(self.opt, named_parameters=self.model.named_parameters(),
                                                     backward_passes_per_step=cfg.grad_accum, op=dist.hvd.Average)
        self.bf16 = self.device == "cuda" and cfg.bf16 in ("auto", True, "true")
        if cfg.compile:
            self.model.compile(backend=cfg.compile_backend)  # in place: checkpoints keep the plain model's keys
        self.mlflow_run = _mlflow(cfg) if dist.rank == 0 else None
        self.t0 = time.time()
        self.lr = self._set_lr()
        return self

    def _resume(self) -> None:
        import torch

        latest = _latest_checkpoint(self.ckpt_dir)
        if latest is None:
            return
        # every rank loads the same files; tensors and plain containers only: a checkpoint on a shared
        # volume must not run code when loaded
        state = torch.load(latest / "state.pt", map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.prior_s = state["step"], state["epoch"], state.get("seconds", 0.0)
        torch.set_rng_state(state["rng"])
        if self.dist.rank == 0:
            self.log(f"[train] resumed from {latest} at step {self.step}")

    def minutes(self) -> float:
        """Training time, across resumes."""
        return (self.prior_s + time.time() - self.t0) / 60

    def out_of_time(self) -> bool:
        limit = min(m for m in (self.cfg.max_minutes, self.cfg.stop_minutes, math.inf) if m is not None)
        return self.minutes() > limit

    def done(self) -> bool:
        return self.step >= self.cfg.max_steps or self.epoch >= self.cfg.epochs or self.out_of_time()

    def _set_lr(self) -> float:
        # every rank must use the same rate: the slowest clock decides
        cfg = self.cfg
        lr = cfg.lr * lr_factor(self.step, cfg, self.dist.allreduce_max(self.minutes(), name=f"minutes_{self.step}")
                                if cfg.max_minutes else None)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def train_epoch(self) -> None:
        """One pass over the batch source.  Every rank must take the same number of steps, or the others
        hang in allreduce: all ranks vote before each batch, and the first rank out of data (or time, or
        steps) ends the epoch for all; the rows read are then checked against the data version."""
        cfg, dist = self.cfg, self.dist
        rows_read, training, stopped, self.micro = None, True, False, 0
        for item in self.batches_fn(self.data, cfg, dist, self.epoch, self.proc):
            end = isinstance(item, EpochEnd)
            if training:
                stopped = self.step >= cfg.max_steps or self.out_of_time()
                training = dist.allreduce_min(0 if end or stopped else 1) == 1
            if end:
                rows_read = item.rows
                break
            if not training and stopped:
                rows_read = -1  # stopped by max_steps/max_minutes mid-epoch: no full read to check
                break
            if training:  # otherwise keep reading only to count this rank's rows
                self._train_on(*item)
        if rows_read is None:
            raise RuntimeError("reader ended without a row count")
        partial = dist.allreduce_min(0 if rows_read < 0 else 1) == 0
        total = dist.allreduce_sum(max(rows_read, 0), name=f"rows_{self.epoch}_{self.step}")
        if dist.rank == 0 and not partial:
            check_count(total, self.data["rows"], f"epoch {self.epoch}")
        self.epoch += 1

    def _train_on(self, pixels, prompts, targets) -> None:
        """Forward and backward of one micro-batch; an optimizer step every ``grad_accum`` of them."""
        import torch

        cfg, dist = self.cfg, self.dist
        moves = draw_moves(self.aug_rng, prompts, cfg.augment, cfg.zoom_out)
        inputs, regions = prepare_batch(self.proc, pixels, prompts, targets, cfg, self.model.config, self.loc_range,
                                        self.device, moves)
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.bf16):
            total, ce = step_loss(self.model, inputs, cfg, self.loc_range, regions, self.proc.tokenizer)
        (total / cfg.grad_accum).backward()
        self.micro += 1
        self.seen += len(prompts) * dist.size
        if self.micro % cfg.grad_accum:
            return
        if dist.hvd:
            self.opt.synchronize()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        with self.opt.skip_synchronize() if dist.hvd else _null():
            self.opt.step()
        self.opt.zero_grad()  # Horovod's optimizer takes no set_to_none
        self.step += 1
        self.lr = self._set_lr()
        self.last_loss = ce.detach()  # the task loss; read back only when logged (a host sync)
        if dist.rank == 0 and (self.step % cfg.log_every == 0 or self.step == 1):
            self._log_progress()
        if dist.rank == 0 and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def _log_progress(self) -> None:
        cfg = self.cfg
        value = float(self.last_loss)
        rate = self.seen / (time.time() - self.t0)
        budget = (f"{self.minutes():.1f}/{cfg.max_minutes:g} min" if cfg.max_minutes and cfg.max_steps >= 10**5
                  else f"{self.step}/{cfg.max_steps}")
        self.log(f"[train] step {self.step} ({budget}) epoch {self.epoch} loss {value:.4f} lr {self.lr:.2e} "
                 f"{rate:.1f} examples/s")
        if self.mlflow_run:
            import mlflow

            mlflow.log_metrics({"loss": value, "lr": self.lr, "examples_per_s": rate}, step=self.step)

    def save_checkpoint(self) -> None:
        _save_checkpoint(self.ckpt_dir, self.model, self.opt, self.step, self.epoch, self.minutes() * 60)

    def finish(self) -> dict:
        from florence2 import modeling

        elapsed = time.time() - self.t0
        result = {"steps": self.step, "epochs": self.epoch,
                  "final_loss": None if self.last_loss is None else float(self.last_loss),
                  "examples_per_s": self.seen / max(elapsed, 1e-9), "seconds": elapsed}
        if self.dist.rank == 0:
            modeling.save(self.model, self.proc, self.out / "model")
            self.save_checkpoint()
            (self.out / "result.json").write_text(json.dumps(result))
            self.log(f"[train] done: {result}")
            if self.mlflow_run and os.environ.get("FLD_RECIPE_OWNS_RUN") == "1":
                import mlflow

                mlflow.end_run()
        return result


def train(cfg: Config, data: dict, dist: Dist | None = None, log=print, sources: dict | None = None) -> dict:
    """Set up, train epoch by epoch until ``max_steps``, ``epochs`` or ``max_minutes``, then save."""
    recipe = Recipe(cfg, data, dist, log, sources).setup()
    while not recipe.done():
        recipe.train_epoch()
    return recipe.finish()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _mlflow(cfg: Config):
    if not cfg.mlflow_run_id:
        return None
    import mlflow

    active = mlflow.active_run()
    if active and active.info.run_id == cfg.mlflow_run_id:
        return active  # in-process launch: the job owns the run
    return mlflow.start_run(run_id=cfg.mlflow_run_id)


def _latest_checkpoint(ckpt_dir: Path):
    cands = sorted((p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists()),
                   key=lambda p: int(p.name.split("-")[1]))
    return cands[-1] if cands else None


def _save_checkpoint(ckpt_dir: Path, model, opt, step: int, epoch: int, seconds: float) -> None:
    import torch

    dest = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    tmp.mkdir(parents=True, exist_ok=True)
    inner = getattr(opt, "_opt", opt)
    torch.save({"model": model.state_dict(), "optimizer": inner.state_dict(), "step": step, "epoch": epoch,
                "seconds": seconds, "rng": torch.get_rng_state()}, tmp / "state.pt")
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    tmp.rename(dest)  # atomic: a kill mid-write leaves no half checkpoint


def main(argv=None, sources: dict | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--data", required=True, help="data.json written by jobs.train")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the YAML config")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    return train(cfg, json.loads(Path(args.data).read_text()), sources=sources)


if __name__ == "__main__":
    main()
