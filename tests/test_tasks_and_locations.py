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
