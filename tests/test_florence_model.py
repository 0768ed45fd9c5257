"""The tiny Florence-2 model: learning, batched inference, save/load, official layout, bad inputs."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from florence2 import modeling
from florence2.predictor import PredictionInputError, Predictor, Request, one_by_one
from florence2.processing import Processor
from florence2.tasks import build_prompt
from lakehouse.synthetic import generate

from florence_fixtures import tokenizer, train_eight

@pytest.fixture(scope="module")
def trained():
    return train_eight(max_steps=600, stop_loss=0.01)


def test_tiny_model_learns_eight_examples(trained):
    model, proc, data = trained
    out = Predictor(model, proc, max_new_tokens=160).predict([Request(img, e.task, e.text, e.region) for img, e in data])
    exact = sum(o["text"] == e.target for o, (_, e) in zip(out, data))
    assert exact >= 7, [(o["text"], e.target) for o, (_, e) in zip(out, data)]


def _mixed_requests(data):
    scenes = [(s, img) for s, img in generate(6, seed=5)]
    reqs = [Request(img, e.task, e.text, e.region) for img, e in data]
    s, img = scenes[0]
    reqs += [Request(img, "<MORE_DETAILED_CAPTION>"), Request(scenes[1][1], "<REGION_PROPOSAL>"),
             Request(img, "<REGION_TO_CATEGORY>", region=tuple(s.objects[0].bbox)),
             Request(scenes[2][1], "<OPEN_VOCABULARY_DETECTION>", text="a very long query about a purple star on the left"),
             Request(scenes[3][1], "<OCR>")]
    return reqs


def test_batched_equals_one_by_one(trained):
    model, proc, data = trained
    reqs = _mixed_requests(data)
    pred = Predictor(model, proc, max_new_tokens=160, batch_size=len(reqs))
    batched, single = pred.predict(reqs), one_by_one(pred, reqs)
    assert len({len(build_prompt(r.task, r.text, r.region, (100, 100))) for r in reqs}) > 5   # prompt lengths differ
    assert [b["text"] for b in batched] == [s["text"] for s in single]
    for b, s in zip(batched, single):
        if isinstance(b["answer"], dict):
            assert {k: v for k, v in b["answer"].items() if "scores" not in k} == \
                   {k: v for k, v in s["answer"].items() if "scores" not in k}
            for k in (k for k in b["answer"] if "scores" in k):
                assert np.allclose(b["answer"][k], s["answer"][k], atol=1e-4)
                assert all(0.0 <= v <= 1.0 for v in b["answer"][k])
        else:
            assert b["answer"] == s["answer"]


def test_requests_sharing_an_image_share_its_vision_pass(trained):
    """A model specialist asks about every region of an image, and a caller may ask several tasks: the
    batch decodes and encodes each distinct image once (equal bytes, or one object passed twice), and
    the answers equal the one-by-one loop's."""
    model, proc, data = trained
    scene, img = next(iter(generate(1, seed=7)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    content = buf.getvalue()
    reqs = [Request(bytes(bytearray(content)), "<REGION_TO_CATEGORY>", region=tuple(o.bbox)) for o in scene.objects]
    reqs += [Request(data[0][0], "<OD>"), Request(content, "<CAPTION>"), Request(data[0][0], "<CAPTION>")]
    seen = []
    hook = model.model.vision_tower.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        pred = Predictor(model, proc, max_new_tokens=60, batch_size=len(reqs))
        batched = pred.predict(reqs)
        assert seen == [2]  # the scene's bytes (several copies) and data[0]'s image
        single = one_by_one(pred, reqs)
    finally:
        hook.remove()
    assert len(scene.objects) >= 2 and len(seen) == 1 + len(reqs)
    assert [b["text"] for b in batched] == [s["text"] for s in single]
    assert all(abs(b["score"] - s["score"]) < 1e-4 for b, s in zip(batched, single))


def _every_task_requests(data):
    """One request per task (all 15), on the learned images first, so that some answers are long."""
    from florence2.tasks import TASKS

    reqs = []
    for k, (name, task) in enumerate(TASKS.items()):
        img, ex = data[k % len(data)]
        text = (ex.text or "a red square") if task.input == "text" else None
        region = (ex.region or (10, 10, 60, 50)) if task.input == "region" else None
        reqs.append(Request(img, name, text, region))
    return reqs


def test_fast_greedy_loop_equals_generate_on_every_task(trained):
    """The predictor's own greedy loop (KV cache, no per-token host sync, here checking every 4 steps)
    gives generate's texts and scores, one request per task in one mixed batch."""
    model, proc, data = trained
    reqs = _every_task_requests(data) + [Request(img, e.task, e.text, e.region) for img, e in data]
    fast = Predictor(model, proc, max_new_tokens=120, batch_size=len(reqs), check_every=4).predict(reqs)
    reference = one_by_one(Predictor(model, proc, max_new_tokens=120, fast=False), reqs)
    assert len({r.task for r in reqs}) == 15
    assert sum(len(f["text"]) > 20 for f in fast) >= 8  # not a batch of empty answers
    assert [f["text"] for f in fast] == [r["text"] for r in reference]
    for f, r in zip(fast, reference):
        assert abs(f["score"] - r["score"]) < 1e-4
        if isinstance(f["answer"], dict):
            for k in (k for k in f["answer"] if "scores" in k):
                assert np.allclose(f["answer"][k], r["answer"][k], atol=1e-4)


def test_fast_loop_honours_min_and_max_new_tokens(trained):
    model, proc, data = trained
    reqs = [Request(img, "<CAPTION>") for img, _ in data[:3]]
    for kw in ({"max_new_tokens": 7, "min_new_tokens": 7}, {"max_new_tokens": 5}):
        a = Predictor(model, proc, **kw).generate(*Predictor(model, proc).prepare(reqs)[:2])
        b = Predictor(model, proc, fast=False, **kw).generate(*Predictor(model, proc).prepare(reqs)[:2])
        n = min(a[0].shape[1], b[0].shape[1])
        assert (a[0][:, :n] == b[0][:, :n]).all() and np.allclose(a[1][:, :n], b[1][:, :n], atol=1e-5)
        assert a[0].shape[1] <= kw["max_new_tokens"]


def test_tensor_preprocessing_matches_pil():
    """The device-side resize (antialiased bicubic, two passes rounded to uint8 like PIL's) stays
    within two uint8 levels of the PIL path, up- and down-sampling, odd sizes included."""
    rng = np.random.default_rng(0)
    proc = Processor(tokenizer(), 128, 17)
    images = [img for _, img in generate(3, seed=2)]
    images += [Image.fromarray(rng.integers(0, 255, (97, 211, 3), dtype=np.uint8)),
               Image.fromarray(rng.integers(0, 255, (640, 480, 3), dtype=np.uint8)).convert("L")]
    a, b = proc.preprocess(images), proc.preprocess_tensor(images).numpy()
    levels = np.abs(a - b) * np.asarray(proc.image_std, np.float32)[None, :, None, None] * 255
    assert a.shape == b.shape and levels.max() <= 2.01 and (levels > 0.5).mean() < 0.01


def test_model_specialist_batches_equal_one_image_at_a_time(trained, tmp_path):
    from lakehouse.specialists.florence import Florence2Specialist

    model, proc, data = trained
    modeling.save(model, proc, tmp_path / "m")
    sp = Florence2Specialist(str(tmp_path / "m"), max_new_tokens=120, batch_size=4, device="cpu")
    images = [img for img, _ in data[:5]]
    batched = sp.annotate_batch(images, [f"i{k}" for k in range(5)])
    single = [sp.annotate(img, f"i{k}") for k, img in enumerate(images)]

    def strip(anns):  # confidences differ in the last bits between batch shapes
        return [{k: v for k, v in a.items() if k != "confidence"} for a in anns]

    assert [strip(a) for a in batched] == [strip(a) for a in single]
    assert np.allclose([a["confidence"] for x in batched for a in x], [a["confidence"] for x in single for a in x],
                       atol=1e-4)
    assert any(a["kind"] == "region" for anns in batched for a in anns)


def test_relabelling_specialist_names_each_region_it_is_given_and_keeps_its_geometry(trained, tmp_path):
    from lakehouse.specialists.florence import Florence2Labels, renamed

    model, proc, data = trained
    modeling.save(model, proc, tmp_path / "m")
    sp = Florence2Labels(str(tmp_path / "m"), batch_size=4, device="cpu")
    scenes = list(generate(3, seed=5))
    images = [img for _, img in scenes]
    regions = [[{"bbox": list(o.bbox), "polygons": [list(o.polygon)], "text": o.category,
                 "description": f"{o.size} {o.color} {o.category}"} for o in s.objects] for s, _ in scenes]
    regions[1] = []  # an image without regions is asked nothing
    got = sp.annotate_batch(images, ["a", "b", "c"], regions)
    pred = Predictor(model, proc, max_new_tokens=16)
    for img, regs, anns in zip(images, regions, got):
        answers = pred.predict([Request(img, "<REGION_TO_CATEGORY>", region=tuple(r["bbox"])) for r in regs]) if regs else []
        expect = [(r, a) for r, a in zip(regs, answers) if a["answer"].strip()]
        assert [(a["text"], a["bbox"], a["polygons"], a["description"]) for a in anns] == \
            [(x["answer"].strip(), r["bbox"], r["polygons"], renamed(r, x["answer"].strip())) for r, x in expect]
        assert np.allclose([a["confidence"] for a in anns], [x["score"] for _, x in expect], atol=1e-4)
    assert got[1] == [] and sum(map(len, got)) > 0
    # one copy of the weights per worker: the whole-image specialist on the same model shares them
    from lakehouse.specialists.florence import Florence2Specialist

    other = Florence2Specialist(str(tmp_path / "m"), max_new_tokens=120, batch_size=8, device="cpu").model()
    assert other.model is sp.model().model and other.max_new_tokens == 120 and sp.model().max_new_tokens == 16
    assert renamed({"text": "circle", "description": "small red circle"}, "square") == "small red square"
    assert renamed({"text": "circle", "description": None}, "square") == "square"


def test_scores_are_high_on_learned_boxes(trained):
    model, proc, data = trained
    img, ex = next((i, e) for i, e in data if e.task == "<OD>")
    ans = Predictor(model, proc, max_new_tokens=160).predict([Request(img, "<OD>")])[0]["answer"]
    assert ans["bboxes"] and len(ans["scores"]) == len(ans["bboxes"]) and min(ans["scores"]) > 0.5


def test_beam_search_runs_and_parses(trained):
    model, proc, data = trained
    img, ex = next((i, e) for i, e in data if e.task == "<OD>")
    out = Predictor(model, proc, max_new_tokens=160, num_beams=3).predict([Request(img, "<OD>")])[0]
    assert out["text"] == ex.target and len(out["answer"]["scores"]) == len(out["answer"]["bboxes"])


@pytest.mark.parametrize("request_, message", [
    (Request(Image.new("RGB", (8, 8)), "<DETECT>"), r"request 1 \(<DETECT>\): unknown task"),
    (Request(Image.new("RGB", (8, 8)), "<OD>", region=(0, 0, 4, 4)), r"request 1 \(<OD>\): task <OD> takes no input"),
    (Request(Image.new("RGB", (8, 8)), "<CAPTION_TO_PHRASE_GROUNDING>"), r"needs a text input"),
    (Request(b"GIF89a but not really", "<CAPTION>"), r"request 1 \(<CAPTION>\): not an image"),
])
def test_wrong_inputs_fail_before_running(trained, request_, message):
    model, proc, _ = trained
    ok = Request(Image.new("RGB", (8, 8)), "<CAPTION>")
    with pytest.raises(PredictionInputError, match=message):
        Predictor(model, proc).predict([ok, request_])


def test_save_and_load_round_trip(trained, tmp_path):
    model, proc, data = trained
    modeling.save(model, proc, tmp_path / "m")
    pred2 = Predictor.from_pretrained(tmp_path / "m", max_new_tokens=160)
    reqs = [Request(img, e.task, e.text, e.region) for img, e in data[:3]]
    assert [o["text"] for o in pred2.predict(reqs)] == \
           [o["text"] for o in Predictor(model, proc, max_new_tokens=160).predict(reqs)]


def test_preprocessing_matches_reference_image_processor(tmp_path):
    from transformers import AutoProcessor

    _, proc = modeling.create("tiny", tokenizer())
    proc.save_pretrained(tmp_path)
    hf = AutoProcessor.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((50, 80), (300, 200), (128, 128))]
    imgs.append(Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8)))   # greyscale -> RGB
    ours = proc.preprocess(imgs)
    ref = hf.image_processor(imgs, return_tensors="np")["pixel_values"]
    assert ours.shape == ref.shape and np.allclose(ours, ref, atol=1e-5)
    # and the whole encoder input equals the reference processor's for the same task
    enc = hf(images=imgs[:1], text=["<OD>"], return_tensors="np")
    assert enc["input_ids"].tolist() == proc.encode_prompts([build_prompt("<OD>")])["input_ids"].tolist()


def _official_layout_checkpoint(path):
    """A random-weight checkpoint written the way transformers' conversion script writes one:
    BART-style tokenizer files + added location/image tokens, Florence2Processor with a 768 px
    CLIP image processor (577 image tokens), and Florence2ForConditionalGeneration with its
    vocabulary padded to a multiple of 64.  Dimensions are shrunk so the test stays fast."""
    from tokenizers import AddedToken
    from transformers import BartTokenizer, CLIPImageProcessorPil, Florence2ForConditionalGeneration
    from transformers import Florence2Processor as HFProcessor

    from florence2.locations import LOC_TOKENS
    from florence2.parsing import POST_PROCESSOR_CONFIG

    ours = tokenizer()
    vocab_dir = path / "bpe"
    vocab_dir.mkdir(parents=True)
    ours.backend_tokenizer.model.save(str(vocab_dir))
    tok = BartTokenizer(vocab_file=str(vocab_dir / "vocab.json"), merges_file=str(vocab_dir / "merges.txt"))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in LOC_TOKENS + ("<poly>", "</poly>", "<sep>")])
    tok.add_tokens(AddedToken("<image>", special=True, normalized=False), special_tokens=True)
    # transformers 5 takes named extra special tokens at construction; round-trip through save to set it
    tok.save_pretrained(str(vocab_dir / "tok"))
    tok = BartTokenizer.from_pretrained(str(vocab_dir / "tok"), extra_special_tokens={"image_token": "<image>"})
    assert tok.image_token == "<image>"
    ip = CLIPImageProcessorPil(do_resize=True, size={"height": 768, "width": 768}, resample=3, do_center_crop=False,
                               do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    ip.image_seq_length = 577
    HFProcessor(image_processor=ip, tokenizer=tok, post_processor_config=POST_PROCESSOR_CONFIG).save_pretrained(str(path))
    cfg = modeling.make_config("tiny", len(tok), tok.image_token_id, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    cfg.text_config.max_position_embeddings = 1024   # 577 image tokens + prompt, as the official models
    cfg.vision_config.patch_stride = [4, 2, 2, 2]      # the official strides (our tiny keeps stride 1 last)
    model = Florence2ForConditionalGeneration(cfg)
    model.resize_token_embeddings(len(tok), 64)
    model.save_pretrained(str(path))
    return tok


def test_loads_a_converted_official_layout_checkpoint(tmp_path):
    tok = _official_layout_checkpoint(tmp_path / "official")
    cfg = json.loads((tmp_path / "official" / "config.json").read_text())
    assert cfg["model_type"] == "florence2" and cfg["text_config"]["vocab_size"] % 64 == 0
    model, proc = modeling.load(tmp_path / "official")
    assert isinstance(proc, Processor)
    assert (proc.image_size, proc.num_image_tokens) == (768, 577)
    assert proc.tokenizer.image_token_id == tok.image_token_id
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 200, 30)).save(buf, "JPEG")
    out = Predictor(model, proc, max_new_tokens=8).predict([Request(buf.getvalue(), "<OD>"),
                                                            Request(buf.getvalue(), "<CAPTION>")])
    assert [o["task"] for o in out] == ["<OD>", "<CAPTION>"] and out[0]["image_size"] == [640, 480]
