"""Our metrics against the reference tools on fixed, hand-made fixtures."""

import pytest

from florence2 import evaluation as ev


def test_map_equals_pycocotools_on_a_hand_made_case(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = [{"image_id": "a", "bbox": [10, 10, 50, 50], "label": "circle"},
          {"image_id": "a", "bbox": [60, 60, 90, 95], "label": "square"},
          {"image_id": "b", "bbox": [0, 0, 30, 40], "label": "circle"}]
    pred = [{"image_id": "a", "bbox": [12, 11, 50, 52], "label": "circle", "score": 0.9},
            {"image_id": "a", "bbox": [60, 60, 70, 70], "label": "square", "score": 0.8},   # poor box
            {"image_id": "b", "bbox": [0, 0, 30, 40], "label": "circle", "score": 0.4},
            {"image_id": "b", "bbox": [50, 50, 60, 60], "label": "circle", "score": 0.95}]  # false positive
    ours = ev.coco_map(gt, pred)
    # the same case written directly in COCO's own format
    ds = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}, {"id": 2}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 35], "area": 1050, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 40], "area": 1200, "iscrowd": 0}]}
    cg = COCO()
    cg.dataset = ds
    cg.createIndex()
    cd = cg.loadRes([{"image_id": 1, "category_id": 1, "bbox": [12, 11, 38, 41], "score": 0.9},
                     {"image_id": 1, "category_id": 2, "bbox": [60, 60, 10, 10], "score": 0.8},
                     {"image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 40], "score": 0.4},
                     {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.95}])
    e = COCOeval(cg, cd, "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    assert ours["mAP"] == pytest.approx(e.stats[0]) and ours["AP50"] == pytest.approx(e.stats[1])
    assert 0 < ours["mAP"] < 1
    assert ev.coco_map(gt, [dict(g, score=1.0) for g in gt])["mAP"] == pytest.approx(1.0)


def test_cider_matches_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider

    refs = {"1": ["a red circle on a white background", "a red circle"], "2": ["two blue squares", "blue squares"],
            "3": ["a green star next to a pink hexagon", "a star and a hexagon"]}
    cands = {"1": "a red circle", "2": "a yellow triangle", "3": "a green star and a hexagon"}
    ours = ev.cider(cands, refs)
    # pycocoevalcap on the same (already lower-case, punctuation-free) text
    ref_score, _ = Cider().compute_score(refs, {k: [v] for k, v in cands.items()})
    assert ours == pytest.approx(ref_score, rel=1e-6)
    assert ev.cider({"1": refs["1"][0], "2": refs["2"][0], "3": refs["3"][0]}, refs) > ours


def test_grounding_rec_and_res():
    assert ev.grounding_recall_at_1([([[0, 0, 10, 10], [50, 50, 60, 60]], [[1, 1, 10, 10]]),
                                     ([[50, 50, 60, 60], [0, 0, 10, 10]], [[0, 0, 10, 10]]),
                                     ([], [[0, 0, 5, 5]])]) == pytest.approx(1 / 3)
    assert ev.rec_accuracy([([0, 0, 10, 10], [0, 0, 10, 12]), (None, [0, 0, 1, 1]), ([0, 0, 4, 4], [0, 0, 10, 10])]) == pytest.approx(1 / 3)
    sq = [0, 0, 10, 0, 10, 10, 0, 10]
    half = [5, 0, 15, 0, 15, 10, 5, 10]
    assert ev.res_miou([([sq], [sq]), ([half], [sq])]) == pytest.approx((1 + 1 / 3) / 2)


def test_mask_iou_agrees_with_rasterised_masks():
    from pycocotools import mask as M

    tri = [10, 10, 90, 20, 40, 80]
    poly = [20, 15, 80, 15, 80, 70, 20, 70]
    rle_a, rle_b = (M.merge(M.frPyObjects([p], 100, 100)) for p in (tri, poly))
    raster = float(M.iou([rle_a], [rle_b], [0])[0][0])
    assert ev.mask_iou([tri], [poly]) == pytest.approx(raster, abs=0.02)


def test_ocr_word_f1_and_cer():
    truth = [{"text": "STOP", "box": [0, 0, 40, 10]}, {"text": "cafe", "box": [50, 0, 90, 10]}]
    pred = [{"text": "stop", "bbox": [1, 0, 40, 10]}, {"text": "cafe", "bbox": [0, 50, 40, 60]},
            {"text": "x", "bbox": [0, 0, 5, 5]}]
    r = ev.word_f1(pred, truth)
    assert (r["tp"], r["precision"], r["recall"]) == (1, 1 / 3, 0.5)
    assert ev.cer("helo wrld", "hello world") == pytest.approx(2 / 11)
    assert ev.cer("", "abc") == 1.0 and ev.cer("abc", "abc") == 0.0


def test_coco_folder_examples_read_by_the_ingest_adapter_without_crowd_boxes(real_dev, tmp_path):
    """Evaluation reads COCO folders with the adapter ingest uses; COCO's crowd boxes are not scored
    (ingest keeps all 134 boxes of this sample, one of them a crowd box: tests/test_ingest.py)."""
    import shutil

    from lakehouse.evaluation import coco_folder_examples

    src, folder = real_dev / "coco_train2017_det_caption", tmp_path / "coco"
    (folder / "annotations").mkdir(parents=True)
    (folder / "images").symlink_to(src / "images")
    for f in ("instances_train2017.json", "captions_train2017.json"):  # as tests/test_ingest.py lands them
        shutil.copy(src / "annotations" / f, folder / "annotations" / f)
    exs = coco_folder_examples(folder)
    od = [e for e in exs if e["task"] == "<OD>"]
    assert len(od) == 20 and sum(e["task"] == "<CAPTION>" for e in exs) == 20
    assert sum(e["target"].count("<loc_") for e in od) == 4 * 133
    assert all(e["width"] > 0 and e["height"] > 0 and e["image"][:2] == b"\xff\xd8" for e in od)


def test_rec_is_the_first_box_open_vocabulary_detection_gives_for_a_referring_expression():
    """REC accuracy: the answers to ``Locate {expression} in the image.`` of the synthetic world's referring
    expressions, first box at IoU >= 0.5; a category's open-vocabulary example is not a REC item, even when
    the category has one instance. Answers are replayed texts (the scoring is under test, not a model)."""
    from florence2.parsing import format_answer, parse_instances
    from florence2.targets import build_examples, from_synthetic
    from lakehouse.synthetic import generate

    task = "<OPEN_VOCABULARY_DETECTION>"
    exs = []
    for i, (scene, _) in enumerate(generate(12, seed=5)):
        t = scene.to_dict()
        exs += [{"image": f"{i}|{e.text}".encode(), "width": t["width"], "height": t["height"],
                 "task": task, "text_input": e.text, "target": e.target, "refers": e.refers}
                for e in build_examples(from_synthetic(t), [task])]
    refs = [e for e in exs if e["refers"]]
    assert len(refs) > 10 and all(e["target"].count("<loc_") == 4 for e in refs)
    assert any(not e["refers"] and e["target"].count("<loc_") == 4 for e in exs)  # a category with one instance
    right = {id(e) for e in refs[: len(refs) // 3] + [e for e in exs if not e["refers"]]}

    class Replay:  # the target for a third of the referring expressions and every category, a corner box else
        def predict(self, requests):
            out = []
            for q, e in zip(requests, exs):
                text = e["target"] if id(e) in right else f"{e['text_input']}<loc_990><loc_990><loc_999><loc_999>"
                out.append({"answer": format_answer("description_with_bboxes_or_polygons",
                                                    parse_instances(text, "description_with_bboxes_or_polygons",
                                                                    (e["width"], e["height"])))})
            return out

    got = ev.evaluate_examples(Replay(), exs)
    assert got["model"]["rec_accuracy"] == pytest.approx((len(refs) // 3) / len(refs))
    assert 0 <= got["baseline"]["rec_accuracy"] < 0.5  # a whole-image box rarely fits one shape
