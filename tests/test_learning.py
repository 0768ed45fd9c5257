"""Does the recipe's model look at the image?  The image-ablation check of issue 9.

A tiny model trained from scratch by the production recipe (``florence2.recipe.train``,
its default objective) on synthetic scenes must reach a lower loss on held-out scenes
with their own images than with the images shuffled across the batch.  Before the
fix the two losses were bit-identical: the visual features collapsed to a constant.
"""
from __future__ import annotations

import math

import pytest

from florence2 import modeling, recipe
from florence2.evaluation import image_ablation
from lakehouse.synthetic import synthetic_rows, write_recipe_data

TASKS = ["<CAPTION>"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("learn")
    data = write_recipe_data(synthetic_rows(1200, 31, TASKS), d / "data", vocab_size=800)
    cfg = recipe.Config(source="files", max_steps=300, batch_size=16, lr=1e-3, warmup_steps=20,
                        checkpoint_every=0, log_every=100, output_dir=str(d / "run"))
    recipe.train(cfg, data)
    model, proc = modeling.load(d / "run" / "model")
    return model, proc, cfg


def test_trained_model_uses_the_image(trained):
    model, proc, cfg = trained
    held_out = synthetic_rows(64, 32, TASKS)
    ab = image_ablation(model, proc, [r["content"] for r in held_out], [r["prompt"] for r in held_out],
                        [r["target"] for r in held_out], cfg.loc_sigma)
    assert ab["gap"] > 0.005, ab


def test_region_supervision_reads_boxes_from_targets():
    """Boxes come from `text<loc>x4` in any target; quads and polygons give none."""
    import sys

    import torch
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    from florence2.locations import box_tokens

    tok = tokenizer()
    proc = modeling.create("tiny", tok)[1]
    targets = ["circle" + box_tokens([10, 20, 60, 90], (100, 100)) + "red square" + box_tokens([50, 50, 52, 51], (100, 100)),
               "SALE<loc_10><loc_10><loc_90><loc_10><loc_90><loc_30><loc_10><loc_30>",   # an OCR quad
               "<loc_1><loc_2><loc_300><loc_4><loc_5><loc_600>",                         # a polygon
               "a red circle on a white background"]
    labels = proc.batch([], ["<OD>"] * 4, targets)["labels"]
    boxes = recipe.target_boxes(labels, modeling.loc_token_range(tok), {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id})
    assert [b[1] for b in boxes[0]] == [(100, 200, 600, 900), (500, 500, 520, 510)] and boxes[1:] == [[], [], []]
    first_of = tok.convert_tokens_to_ids
    assert boxes[0][0][0] == tok("circle", add_special_tokens=False).input_ids[0]
    assert boxes[0][1][0] == tok("red square", add_special_tokens=False).input_ids[-1] != first_of("<loc_500>")
    assert boxes[0][1][0] != tok("red square", add_special_tokens=False).input_ids[0]   # the head noun, not 'red'
    # positions cover the label and its four location tokens (label position 0 is <s>)
    assert boxes[0][0][2][0] == 1 and len(boxes[0][0][2]) == 5
    cells = recipe.box_cells((100, 200, 600, 900), 8)
    rows, cols = cells.view(8, 8).nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 6, 1, 4)
    assert int(recipe.box_cells((500, 500, 520, 510), 8).sum()) == 1  # smaller than a cell: its centre cell
    # region_edges: x0 / y0 / x1 / y1 look at the left column / top row / right column / bottom row
    edges = [e.view(8, 8).nonzero().unbind(1) for e in recipe.edge_cells(cells, 8)]
    assert [(sorted(set(r.tolist())), sorted(set(c.tolist()))) for r, c in edges] == [
        ([2, 3, 4, 5, 6], [1]), ([2], [1, 2, 3, 4]), ([2, 3, 4, 5, 6], [4]), ([6], [1, 2, 3, 4])]
    batch = proc.batch([], ["<OD>"] * 4, targets)
    cfg = modeling.create("tiny", tok)[0].config
    whole, edged = (recipe.region_targets(batch["input_ids"], batch["labels"], modeling.loc_token_range(tok),
                                          cfg.text_config, cfg.image_token_id, edges=e) for e in (False, True))
    label_pos, loc_pos = boxes[0][0][2][0], boxes[0][0][2][1:]
    assert torch.equal(whole["where"][0, label_pos], cells) and torch.equal(edged["where"][0, label_pos], cells)
    assert all(torch.equal(whole["where"][0, p], cells) for p in loc_pos)
    assert [torch.equal(edged["where"][0, p], e) for p, e in zip(loc_pos, recipe.edge_cells(cells, 8))] == [True] * 4


def test_a_shape_names_its_cells_alike_in_od_and_grounding():
    """OD's 'circle' and grounding's 'a red circle' (' circle', another BPE token) give the cells one name."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    from florence2.locations import box_tokens
    from florence2.tokenization import head_tokens

    tok = tokenizer()
    model, proc = modeling.create("tiny", tok)
    box = box_tokens([10, 20, 60, 90], (100, 100))
    batch = proc.batch([], ["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>"], ["circle" + box, "a red circle" + box])
    args = (batch["input_ids"], batch["labels"], modeling.loc_token_range(tok), model.config.text_config,
            model.config.image_token_id)
    inside = recipe.box_cells((100, 200, 600, 900), 8)
    plain = recipe.region_targets(*args)["cells"][:, inside]
    assert plain[0, 0] != plain[1, 0]  # without the map: 'circle' vs 'Gcircle'
    named = recipe.region_targets(*args, heads=head_tokens(tok))["cells"][:, inside]
    assert (named == tok.convert_tokens_to_ids("circle")).all()


def test_region_pool_names_each_box_by_its_label_and_scores_the_mean_of_its_cells():
    """``region_pool``: every box a target names, as its cells and its label's head token, padded with -100;
    the term is the cross-entropy of the box's mean encoder output through the tied output layer."""
    import sys
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    from florence2.locations import box_tokens
    from florence2.tokenization import head_tokens

    tok = tokenizer()
    model, proc = modeling.create("tiny", tok)
    big, small = box_tokens([10, 20, 60, 90], (100, 100)), box_tokens([70, 70, 80, 80], (100, 100))
    batch = proc.batch([], ["<OD>", "<OD>", "<CAPTION>"], ["star" + small + "circle" + big, "a red square" + big, "a star"])
    got = recipe.region_targets(batch["input_ids"], batch["labels"], modeling.loc_token_range(tok),
                                model.config.text_config, model.config.image_token_id, True, head_tokens(tok))
    ids = tok.convert_tokens_to_ids
    # larger boxes first, as for the cells
    assert got["box_labels"].tolist() == [[ids("circle"), ids("star")], [ids("square"), -100], [-100, -100]]
    assert torch.equal(got["boxes"][0, 0], recipe.box_cells((100, 200, 600, 900), 8))
    assert torch.equal(got["boxes"][0, 1], recipe.box_cells((700, 700, 800, 800), 8))
    assert not got["boxes"][0, 0].logical_and(got["boxes"][0, 1]).any() and not got["boxes"][2].any()
    inputs = batch | {"pixel_values": torch.rand(3, 3, 128, 128)}
    cfg = recipe.Config(region_pool=1.0, region_attention=0.0)
    with torch.no_grad():
        out = model(**inputs)
        _, _, pool, _ = recipe.region_losses(model, out, got, cfg)
        enc = out.encoder_last_hidden_state[:, got["first"]:got["first"] + 64]
        ce = [F.cross_entropy(model.lm_head(enc[i][got["boxes"][i, j]].mean(0)), got["box_labels"][i, j])
              for i, j in ((0, 0), (0, 1), (1, 0))]
    # per-example means, averaged over all three examples (the caption counts 0)
    assert float(pool) > 0 and abs(float(pool) - float((ce[0] + ce[1]) / 2 + ce[2]) / 3) < 1e-4
    total, _ = recipe.step_loss(model, inputs, cfg, modeling.loc_token_range(tok), got)
    plain, _ = recipe.step_loss(model, inputs, recipe.Config(region_attention=0.0), modeling.loc_token_range(tok), got)
    assert abs(float(total.detach()) - float(plain.detach()) - float(pool.detach())) < 1e-3


def test_a_text_answer_about_the_prompts_region_is_supervised_on_that_region():
    """<REGION_TO_CATEGORY>'s box is in the prompt and its answer is the label: the box's cells are named
    by the answer and every answer position looks at them, as for a box a target names; a region prompt
    whose answer is a polygon, and a prompt without a region, get nothing."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    from florence2.tasks import build_prompt
    from florence2.tokenization import head_tokens

    tok = tokenizer()
    model, proc = modeling.create("tiny", tok)
    box = (10, 20, 60, 90)
    prompts = [build_prompt("<REGION_TO_CATEGORY>", region=box, image_size=(100, 100)),
               build_prompt("<REGION_TO_SEGMENTATION>", region=box, image_size=(100, 100)), "<CAPTION>"]
    batch = proc.batch([], prompts, ["star", "<loc_1><loc_2><loc_300><loc_4><loc_5><loc_600>", "a star"])
    args = (batch["input_ids"], batch["labels"], modeling.loc_token_range(tok), model.config.text_config,
            model.config.image_token_id, True, head_tokens(tok))
    got = recipe.region_targets(*args, prompts=True)
    inside = recipe.box_cells((100, 200, 600, 900), 8)
    assert (got["cells"][0, inside] == tok.convert_tokens_to_ids("star")).all()
    assert (got["cells"][0, ~inside] == tok.eos_token_id).all() and (got["cells"][1:] == -100).all()
    answer = [p for p, t in enumerate(batch["labels"][0].tolist()) if t >= 0 and t not in (tok.bos_token_id, tok.eos_token_id)]
    assert answer and all(torch.equal(got["where"][0, p], inside) for p in answer)
    assert int(got["where"][0].any(-1).sum()) == len(answer) and not got["where"][1:].any()
    assert recipe.region_targets(*args) is None  # Config.region_prompts is off by default


def test_bins_positions_name_each_cell_by_its_location_token():
    """scratch_positions=bins: a grid column's (row's) embedding is, at the frequencies they share, the
    embedding of the <loc_k> at the cell's centre, so reading a position out is a linear map."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    tok = tokenizer()
    a, b = modeling.loc_token_range(tok)
    for positions, expect_match in (("bins", True), ("grid", False)):
        model = modeling.create("tiny", tok, positions=positions)[0]
        pe = model.model.multi_modal_projector.image_position_embed
        loc = model.get_input_embeddings().weight[a:b].detach()
        for emb in (pe.column_embeddings.weight, pe.row_embeddings.weight):
            d = emb.shape[1]
            shared = [k for j in range(d // 2) for k in (2 * j * loc.shape[1] // d, 2 * j * loc.shape[1] // d + 1)]
            nearest = (emb[:8].detach() @ loc[:, shared].T).argmax(1)
            centres = (torch.arange(8) + 0.5) * 1000 / 8
            assert ((nearest - centres).abs() <= 1).all().item() is expect_match, (positions, nearest)
    with pytest.raises(ValueError, match="positions"):
        modeling.create("tiny", tok, positions="diagonal")


def test_vision_lr_scale_gives_the_vision_side_its_own_rate():
    """vision_lr_scale: the tower and projector in a group of their own at that multiple of the rate, through
    warm-up and schedule; every parameter in exactly one group."""
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    model = modeling.create("tiny", tokenizer())[0]
    cfg = recipe.Config(lr=1e-3, vision_lr_scale=3.0, warmup_steps=10, max_steps=100, source="files")
    opt = recipe.make_optimizer(model, cfg, "cpu")
    text, vision = opt.param_groups
    assert {id(p) for p in vision["params"]} == {id(p) for n, p in model.named_parameters() if
                                                 n.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    assert len(text["params"]) + len(vision["params"]) == len(list(model.parameters()))
    assert any(p is model.get_input_embeddings().weight for p in text["params"])  # tied with the output layer
    rec = recipe.Recipe(cfg, {}, recipe.Dist(False))
    rec.opt, rec.t0 = opt, time.time()
    for rec.step in (0, 5, 50):
        lr = rec._set_lr()
        assert text["lr"] == pytest.approx(lr) and vision["lr"] == pytest.approx(3 * lr)
    assert len(recipe.make_optimizer(model, recipe.Config(), "cpu").param_groups) == 1


def test_image_size_override_grows_the_grid_and_the_region_terms_follow(tmp_path):
    """image_size=192 on tiny: a 12x12 grid (16-px cells), region targets on that grid, and the saved model
    loads with its processor at 192 px."""
    import io

    from PIL import Image

    rows = synthetic_rows(4, 5, ["<OD>"])
    data = write_recipe_data(rows, tmp_path / "data", vocab_size=600)
    cfg = recipe.Config(source="files", image_size=192, max_steps=1, batch_size=4, checkpoint_every=0,
                        output_dir=str(tmp_path / "run"))
    recipe.train(cfg, data, log=lambda *a: None)
    model, proc = modeling.load(tmp_path / "run" / "model")
    assert proc.image_size == 192 and proc.num_image_tokens == 12 * 12 + 1
    images = [Image.open(io.BytesIO(r["content"])).convert("RGB") for r in rows]
    _, regions = recipe.prepare_batch(proc, images, [r["prompt"] for r in rows], [r["target"] for r in rows], cfg,
                                      model.config, modeling.loc_token_range(proc.tokenizer), "cpu")
    assert regions["grid"] == 12 and regions["cells"].shape == (4, 144)
    with pytest.raises(ValueError, match="multiple"):
        modeling.create("tiny", proc.tokenizer, image_size=200)


@pytest.fixture(scope="module")
def trained_od(tmp_path_factory):
    d = tmp_path_factory.mktemp("learn-od")
    data = write_recipe_data(synthetic_rows(1500, 33, ["<OD>"]), d / "data", vocab_size=800)
    runs = {}
    for name, over in (("recipe", {}), ("without region terms", {"region_cells": 0.0, "region_attention": 0.0})):
        cfg = recipe.Config(source="files", max_steps=250, batch_size=16, lr=1e-3, warmup_steps=20,
                            checkpoint_every=0, log_every=100, output_dir=str(d / name.replace(" ", "-")), **over)
        recipe.train(cfg, data)
        runs[name] = modeling.load(d / name.replace(" ", "-") / "model")
    return runs


def test_region_terms_make_detection_look_at_the_image(trained_od):
    """On <OD> the task loss alone barely uses the image; the region terms make it depend on it."""
    held_out = synthetic_rows(64, 34, ["<OD>"])
    gaps = {name: image_ablation(model, proc, [r["content"] for r in held_out], [r["prompt"] for r in held_out],
                                 [r["target"] for r in held_out], recipe.Config().loc_sigma)["gap"]
            for name, (model, proc) in trained_od.items()}
    assert gaps["recipe"] > 0.05 and gaps["recipe"] > 5 * gaps["without region terms"], gaps


def test_a_curriculum_phase_stops_early_and_the_next_resumes_its_schedule(tmp_path):
    """``stop_minutes`` ends a run before its schedule does; the next phase (other tasks, same run directory)
    resumes its step, clock and optimizer, so the learning rate goes on decaying instead of warming up again."""
    rows = synthetic_rows(40, 7, ["<OD>", "<CAPTION>"])
    data = write_recipe_data(rows, tmp_path / "all", vocab_size=600)
    od = write_recipe_data([r for r in rows if r["task"] == "<OD>"], tmp_path / "od") | {"tokenizer": data["tokenizer"]}
    common = dict(source="files", batch_size=4, lr=1e-3, warmup_steps=3, max_steps=10**6, max_minutes=0.5,
                  checkpoint_every=0, log_every=1, output_dir=str(tmp_path / "run"))
    first, second = [], []
    r1 = recipe.train(recipe.Config(**common, stop_minutes=0.08), od, log=first.append)
    assert 0.07 < r1["seconds"] / 60 < 0.3 and r1["steps"] > 3
    r2 = recipe.train(recipe.Config(**common), data, log=second.append)
    assert any("resumed from" in line for line in second), second
    assert r2["steps"] > r1["steps"]  # counted on from phase 1
    lrs = [float(line.split(" lr ")[1].split()[0]) for line in second if " lr " in line]
    assert lrs[0] < 1e-3 and lrs == sorted(lrs, reverse=True), lrs  # no second warm-up: it only decays


def test_the_files_source_mixes_images_in_a_batch_and_reads_every_example_once(tmp_path):
    """Example ids sort by image, so the unshuffled order gives a batch the examples of 2-3 images; shuffled,
    a batch spans many images, each epoch is another permutation, and ranks slice one permutation."""
    import types

    rows = synthetic_rows(12, 9, ["<OD>", "<CAPTION>", "<DETAILED_CAPTION>", "<CAPTION_TO_PHRASE_GROUNDING>"])
    data = write_recipe_data(rows, tmp_path / "data", vocab_size=600)
    by_target = {}
    for r in rows:
        by_target.setdefault((r["prompt"], r["target"]), set()).add(r["image_id"])

    def epoch(shuffle, n, rank=0, size=1):
        cfg = recipe.Config(source="files", batch_size=8, shuffle=shuffle)
        batches = list(recipe._batches_files(data, cfg, types.SimpleNamespace(rank=rank, size=size), n, None))
        assert isinstance(batches[-1], recipe.EpochEnd)
        return [list(zip(b[1], b[2])) for b in batches[:-1]]

    def images_per_batch(batches):
        return [len({i for ex in b for i in by_target[ex]}) for b in batches]

    fixed, one, two = epoch(False, 0), epoch(True, 0), epoch(True, 1)
    flat = sorted(ex for b in one for ex in b)
    assert flat == sorted(ex for b in fixed for ex in b) and len(flat) == len(rows) // 8 * 8
    assert max(images_per_batch(fixed)) <= 3 and min(images_per_batch(one)) >= 4
    assert one != two and one == epoch(True, 0)
    halves = [epoch(True, 0, rank, 2) for rank in (0, 1)]  # a global batch of 16: rank r takes its 8
    assert [a + b for a, b in zip(*halves)] == [x + y for x, y in zip(one[::2], one[1::2])]


def test_free_copied_words_leave_the_attention_that_copies_a_phrase_alone():
    """free_copied_words: grounding's phrase words, which its prompt holds, are not pulled onto the box;
    its location tokens are, and so is an <OD> label, which no prompt holds; the cells are named as before."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    from florence2.locations import box_tokens
    from florence2.tasks import build_prompt
    from florence2.tokenization import head_tokens

    tok = tokenizer()
    model, proc = modeling.create("tiny", tok)
    box = box_tokens([10, 20, 60, 90], (100, 100))
    prompts = [build_prompt("<CAPTION_TO_PHRASE_GROUNDING>", text="A red star on grey."), build_prompt("<OD>")]
    batch = proc.batch([], prompts, ["A red star" + box, "star" + box])
    loc = modeling.loc_token_range(tok)
    args = (batch["input_ids"], batch["labels"], loc, model.config.text_config, model.config.image_token_id, True,
            head_tokens(tok))
    pulled, free = recipe.region_targets(*args), recipe.region_targets(*args, free_copied=True)
    assert torch.equal(pulled["cells"], free["cells"])
    labels = batch["labels"][0].tolist()
    words = [p for p, t in enumerate(labels) if t >= 0 and not loc[0] <= t < loc[1]
             and t not in (tok.bos_token_id, tok.eos_token_id)]
    locs = [p for p, t in enumerate(labels) if loc[0] <= t < loc[1]]
    heads = head_tokens(tok)
    held = {heads[t] for t in batch["input_ids"][0].tolist()}
    copied = [p for p in words if heads[labels[p]] in held]  # 'A' copies the prompt's ' A'
    assert copied and all(pulled["where"][0, p].any() for p in copied)
    assert not any(free["where"][0, p].any() for p in copied)
    assert all(torch.equal(free["where"][0, p], pulled["where"][0, p]) for p in locs + [p for p in words if p not in copied])
    assert torch.equal(free["where"][1], pulled["where"][1]) and free["where"][1].any()  # <OD>: nothing copied


def test_copy_attention_points_each_copied_word_at_the_prompt_tokens_that_hold_it():
    """copy_attention: a grounding phrase's words point at the prompt
    positions holding them ('A' at ' A'); location tokens, an <OD> label and a caption's 'the' (a word of
    the prompts' fixed text) point nowhere; the term is -log of the attention those positions get, averaged
    over layers and heads, and the image pull leaves copied words alone."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    from florence2.locations import box_tokens
    from florence2.tasks import build_prompt
    from florence2.tokenization import head_tokens, template_words

    tok = tokenizer()
    model, proc = modeling.create("tiny", tok)
    box = box_tokens([10, 20, 60, 90], (100, 100))
    prompts = [build_prompt("<CAPTION_TO_PHRASE_GROUNDING>", text="A red star on grey."), build_prompt("<OD>"),
               build_prompt("<CAPTION>")]
    batch = proc.batch([], prompts, ["A red star" + box, "star" + box, "the red star"])
    loc = modeling.loc_token_range(tok)
    cfg = recipe.Config(copy_attention=1.0)
    got = recipe.batch_regions(batch["input_ids"], batch["labels"], cfg, loc, model.config, tok)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    heads = head_tokens(tok)
    for p, t in enumerate(labels):
        want = [j for j, u in enumerate(ids) if heads[u] == heads[t]] if t >= 0 and not loc[0] <= t < loc[1] \
            and t not in (tok.bos_token_id, tok.eos_token_id) else []
        assert got["copy"][0, p].nonzero().flatten().tolist() == want, (p, tok.convert_ids_to_tokens([t]))
    phrase = [p for p, t in enumerate(labels) if got["copy"][0, p].any()]
    assert len(phrase) == len(tok("A red star", add_special_tokens=False)["input_ids"])
    assert not got["copy"][1:].any()  # <OD>'s label is not in its prompt; 'the' is the prompts' own word
    assert heads[tok(" the", add_special_tokens=False)["input_ids"][0]] in template_words(tok)
    assert not any(got["where"][0, p].any() for p in phrase)  # implies free_copied_words
    assert got["where"][0].any() and got["where"][1].any()
    with pytest.raises(ValueError, match="tokenizer"):
        recipe.batch_regions(batch["input_ids"], batch["labels"], cfg, loc, model.config, None)

    model.set_attn_implementation("eager")
    model.eval()
    inputs = batch | {"pixel_values": torch.rand(3, 3, proc.image_size, proc.image_size)}
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
        *_, copy_term = recipe.region_losses(model, out, got, cfg)
    att = torch.stack(out.cross_attentions).float().mean((0, 2))[0]  # (L, S) of the grounding example
    want = sum(-math.log(float(att[p][got["copy"][0, p]].sum()) + 1e-6) for p in phrase) / len(phrase) / 3
    assert float(copy_term) == pytest.approx(want, rel=1e-5)
    with torch.no_grad():
        total, _ = recipe.step_loss(model, inputs, cfg, loc, got)
        plain, _ = recipe.step_loss(model, inputs, recipe.Config(copy_attention=0.0), loc, got)
    assert float(total) - float(plain) == pytest.approx(float(copy_term), rel=1e-4)


def test_the_recipe_trains_with_copy_attention_and_region_quads_on_batches_that_name_no_box(tmp_path):
    """A batch without boxes (captions alone: real sources have many) builds its region targets in the recipe's
    step with the tokenizer the pointers need (it once failed there, on the real images)."""
    data = write_recipe_data(synthetic_rows(4, 5, ["<CAPTION>", "<OCR>"]), tmp_path / "data", vocab_size=600)
    cfg = recipe.Config(source="files", max_steps=2, batch_size=4, checkpoint_every=0, copy_attention=1.0,
                        region_quads=True, output_dir=str(tmp_path / "run"))
    assert recipe.train(cfg, data, log=lambda *a: None)["steps"] == 2


def test_region_quads_make_ocr_words_boxes_and_leave_two_boxes_of_a_phrase_two():
    """region_quads: an <OCR_WITH_REGION> word and its eight location tokens are one box (the quad's bounding
    box) named by the word, with no edge cells; a grounding phrase's two boxes (also eight location tokens in
    a row) stay two boxes; without the flag the OCR example names no box."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from florence_fixtures import tokenizer

    from florence2.locations import box_tokens, quad_tokens
    from florence2.tasks import build_prompt

    tok = tokenizer()
    model, proc = modeling.create("tiny", tok)
    quad = [20, 40, 80, 40, 80, 60, 20, 60]  # on a 100 x 100 image: the box (20, 40, 80, 60)
    prompts = [build_prompt("<OCR_WITH_REGION>"), build_prompt("<CAPTION_TO_PHRASE_GROUNDING>", text="two stars")]
    targets = ["HELLO" + quad_tokens(quad, (100, 100)),
               "two stars" + box_tokens([0, 0, 30, 30], (100, 100)) + box_tokens([60, 60, 90, 90], (100, 100))]
    batch = proc.batch([], prompts, targets)
    loc = modeling.loc_token_range(tok)
    on = recipe.batch_regions(batch["input_ids"], batch["labels"], recipe.Config(region_quads=True), loc,
                              model.config, tok)
    off = recipe.batch_regions(batch["input_ids"], batch["labels"], recipe.Config(), loc, model.config, tok)
    grid = on["grid"]
    want = recipe.box_cells(tuple(round(v * 10) for v in (20, 40, 80, 60)), grid)
    assert want.any() and torch.equal(on["boxes"][0, 0], want)
    labels = batch["labels"][0].tolist()
    word = tok("HELLO", add_special_tokens=False)["input_ids"]
    assert on["box_labels"][0, 0] == word[-1] and (on["box_labels"][0, 1:] == -100).all()
    answer = [p for p, t in enumerate(labels) if t >= 0 and t not in (tok.bos_token_id, tok.eos_token_id)]
    assert len(answer) == len(word) + 8 and all(torch.equal(on["where"][0, p], want) for p in answer)
    assert (on["box_labels"][1] != -100).sum() == 2  # the phrase's two boxes
    assert not off["where"][0].any() and (off["cells"][0] == -100).all()
    assert torch.equal(on["where"][1], off["where"][1])
