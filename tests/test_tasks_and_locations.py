import math

import pytest
import torch

from florence2.locations import dequantize, quantize
from florence2.tasks import TASKS, TaskInputError, build_prompt

from florence_fixtures import tiny


def test_fifteen_tasks_match_the_reference_table():
    _, proc = tiny()
    hf = proc.to_hf()
    assert len(TASKS) == 15
    for token, task in TASKS.items():
        ref_type = hf.tasks_answer_post_processing_type[token]
        assert task.parse_type == ref_type
        if task.input == "none":
            assert hf.task_prompts_without_inputs[token] == task.prompt
        else:
            assert hf.task_prompts_with_input[token] == task.prompt


def test_prompts_equal_reference_construction():
    _, proc = tiny()
    hf = proc.to_hf()
    assert build_prompt("<OD>") == hf._construct_prompts(["<OD>"])[0]
    assert build_prompt("<CAPTION_TO_PHRASE_GROUNDING>", text="a red circle") == \
        hf._construct_prompts(["<CAPTION_TO_PHRASE_GROUNDING>a red circle"])[0]
    assert build_prompt("<REGION_TO_CATEGORY>", region=(10, 20, 30, 40), image_size=(100, 200)) == \
        "What is the region <loc_100><loc_100><loc_300><loc_200>?"


@pytest.mark.parametrize("call, message", [
    (lambda: build_prompt("<DETECT>"), "unknown task '<DETECT>'"),
    (lambda: build_prompt("<OD>", region=(1, 2, 3, 4), image_size=(9, 9)), "task <OD> takes no input, but a region"),
    (lambda: build_prompt("<OD>", text="cat"), "task <OD> takes no input, but text"),
    (lambda: build_prompt("<CAPTION_TO_PHRASE_GROUNDING>"), "task <CAPTION_TO_PHRASE_GROUNDING> needs a text input"),
    (lambda: build_prompt("<REGION_TO_CATEGORY>", text="x"), "takes a region"),
    (lambda: build_prompt("<REGION_TO_OCR>", image_size=(9, 9)), "needs a region"),
    (lambda: build_prompt("<REGION_TO_OCR>", region=(5, 5, 1, 1), image_size=(9, 9)), "x0 < x1"),
    (lambda: build_prompt("<REGION_TO_OCR>", region="abc", image_size=(9, 9)), "4 numbers"),
])
def test_wrong_inputs_name_task_and_expectation(call, message):
    with pytest.raises(TaskInputError, match=message.replace("<", "<").replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.parametrize("w", [1, 7, 100, 333, 640, 768, 1000, 1920, 4032])
def test_quantisation_equals_reference(w):
    _, proc = tiny()
    pp = proc.to_hf().post_processor
    xs = [0, 0.3, w / 3, w / 2, w - 1e-6, w, w * 1.2, -3]
    for x in xs:
        q = quantize(x, w)
        # same input precision as ours (python floats are float64)
        ref = pp.quantize(torch.tensor([[x, 0.0]], dtype=torch.float64), (w, 1))[0, 0].item()
        assert q == ref == min(max(math.floor(x / (w / 1000)), 0), 999)
        assert abs(dequantize(q, w) - min(max(x, 0), w)) <= 0.5 * w / 1000 + 1e-9 or x > w or x < 0
        assert dequantize(q, w, as_int=True) == pp.dequantize(torch.tensor([[q, 0]]), (w, 1))[0, 0].item()


_PIL_SYMMETRY = {4: "TRANSPOSE", 1: "FLIP_LEFT_RIGHT", 2: "FLIP_TOP_BOTTOM"}


def _moved(img, box, k):
    """A PIL image and a pixel box under symmetry k, done in pixel space (the reference for florence2.augment)."""
    from PIL import Image

    x0, y0, x1, y1 = box
    w, h = img.size
    for bit in (4, 1, 2):
        if k & bit:
            img = img.transpose(getattr(Image.Transpose, _PIL_SYMMETRY[bit]))
            if bit == 4:
                x0, y0, x1, y1, w, h = y0, x0, y1, x1, h, w
            elif bit == 1:
                x0, x1 = w - x1, w - x0
            else:
                y0, y1 = h - y1, h - y0
    return img, [x0, y0, x1, y1]


@pytest.mark.parametrize("k", range(8))
def test_a_symmetry_moves_the_image_and_its_od_target_together(k):
    """What the recipe's `augment` trains on equals the example built from the flipped / rotated scene:
    pixels as the processor makes them from the moved image, the same labels in reading order, every box
    within one bin (the moved box's edge can land on a bin boundary)."""
    from florence2 import augment
    from florence2.locations import LOC_RE
    from florence2.targets import ImageAnnotations, Region, build_examples, from_synthetic
    from lakehouse.synthetic import generate

    _, proc = tiny()
    for scene, img in generate(3, seed=5):
        ann = from_synthetic(scene.to_dict())
        (od,) = [e.target for e in build_examples(ann, ["<OD>"])]
        moved = [(_moved(img, r.bbox, k)) for r in ann.regions]
        img_k = moved[0][0]
        ref = ImageAnnotations(*img_k.size, regions=[Region(b, r.label) for (_, b), r in zip(moved, ann.regions)])
        (ref_od,) = [e.target for e in build_examples(ref, ["<OD>"])]
        got = augment.od_target(od, k)
        assert LOC_RE.sub("", got) == LOC_RE.sub("", ref_od)  # labels, in the same order
        bins = [int(b) for b in LOC_RE.findall(got)]
        ref_bins = [int(b) for b in LOC_RE.findall(ref_od)]
        assert len(bins) == len(ref_bins) == 4 * len(ann.regions)
        assert max(abs(a - b) for a, b in zip(bins, ref_bins)) <= 1
        diff = (augment.pixels(torch.as_tensor(proc.preprocess([img]))[0], k)
                - torch.as_tensor(proc.preprocess([img_k]))[0]).abs()
        # PIL resizes in two passes, rounding to 8 bits between them: a transposed image rounds in the
        # other order (up to 2 levels, ~0.07 after normalisation, on ~1% of the values)
        assert diff.max() < 0.08 and diff.mean() < 1e-3
    assert augment.od_target(od, 0) is od
    with pytest.raises(ValueError, match="not an <OD> target"):
        augment.od_target("a red circle", 1)


@pytest.mark.parametrize("k", [0, 5])
def test_a_zoom_out_shrinks_the_image_and_its_od_target_together(k):
    """`zoom_out`: the scene shrunk onto a canvas of its background (done here in pixel space with PIL, on
    the scene at its own size) gives the example the recipe trains on: the same labels in reading order,
    every box within one bin, and the pixels the processor makes of that canvas."""
    from PIL import Image

    from florence2 import augment
    from florence2.locations import LOC_RE
    from florence2.targets import ImageAnnotations, Region, build_examples, from_synthetic
    from lakehouse.synthetic import generate

    _, proc = tiny()
    move = augment.Move(k, 0.5, 0.25, 1.0)
    for scene, img in generate(3, seed=7):
        ann = from_synthetic(scene.to_dict())
        (od,) = [e.target for e in build_examples(ann, ["<OD>"])]
        img_k, boxes = img, []
        for r in ann.regions:
            img_k, b = _moved(img, r.bbox, k)
            boxes.append(b)
        w, h = img_k.size
        side = proc.preprocess([img])[0].shape[-1]
        size, x, y = move.place(side)
        sx, sy = w / side, h / side  # the square's pixels in the scene's
        canvas = Image.new("RGB", (w, h), img_k.getpixel((0, 0)))
        canvas.paste(img_k.resize((round(size * sx), round(size * sy)), Image.BICUBIC), (round(x * sx), round(y * sy)))
        ref = ImageAnnotations(w, h, regions=[Region([x * sx + b[0] * size / side, y * sy + b[1] * size / side,
                                                      x * sx + b[2] * size / side, y * sy + b[3] * size / side], r.label)
                                              for b, r in zip(boxes, ann.regions)])
        (ref_od,) = [e.target for e in build_examples(ref, ["<OD>"])]
        got = augment.od_target(od, move, side)
        assert LOC_RE.sub("", got) == LOC_RE.sub("", ref_od)
        bins = [int(b) for b in LOC_RE.findall(got)]
        ref_bins = [int(b) for b in LOC_RE.findall(ref_od)]
        assert max(abs(a - b) for a, b in zip(bins, ref_bins)) <= 1
        assert max(bins) > 500 and min(bins[1::2]) >= 500  # placed at the bottom, a quarter to the right
        diff = (augment.pixels(torch.as_tensor(proc.preprocess([img]))[0], move)
                - torch.as_tensor(proc.preprocess([canvas]))[0]).abs()
        # two resamplings in either order: shape edges differ, the rest agrees
        assert diff.mean() < 0.05, diff.mean()
        assert (diff < 0.1).float().mean() > 0.9
    assert augment.od_target(od, augment.Move(0, 1.0, 0.3, 0.3)) is od


def test_a_tokenizer_built_from_od_targets_alone_learns_their_label_words():
    # A run whose whole mixture is <OD> alone once learned a vocabulary without its
    # labels ('square' as six letters) and spent merges on '<loc_' fragments.
    from florence2.tokenization import build_tokenizer

    targets = [f"{a}<loc_{i}><loc_{i + 3}><loc_{i + 9}><loc_{i + 20}>{b}<loc_7><loc_8><loc_900><loc_950>"
               for i in range(0, 900, 7) for a, b in (("square", "star"), ("hexagon", "circle"))]
    tok = build_tokenizer(targets + ["<poly><loc_1><loc_2><sep><loc_3><loc_4></poly>"], vocab_size=400)
    ids = tok("hexagon<loc_5><loc_6><loc_7><loc_8>star<loc_9><loc_10><loc_11><loc_12>")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["hexagon", "<loc_5>", "<loc_6>", "<loc_7>", "<loc_8>",
                                              "star", "<loc_9>", "<loc_10>", "<loc_11>", "<loc_12>"]
    added = set(tok.get_added_vocab())
    fragments = [t for t in tok.get_vocab() if ("<" in t or ">" in t or "loc_" in t) and len(t) > 1 and t not in added]
    assert not fragments, fragments
