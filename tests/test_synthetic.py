import json
import re

from florence2.geometry import overlaps
from lakehouse.synthetic import CATEGORIES, generate, write_world


def _matches(o, expr):
    words = expr.split()[1:]
    if words[0] in ("leftmost", "rightmost"):
        return None
    return all(w in (o["category"], o["color"], o["size"]) for w in words)


def test_deterministic_by_seed():
    a = [s.to_dict() for s, _ in generate(12, seed=3)]
    b = [s.to_dict() for s, _ in generate(12, seed=3)]
    c = [s.to_dict() for s, _ in generate(12, seed=4)]
    assert a == b and a != c


def test_ground_truth_is_complete_and_consistent():
    scenes = [s for s, _ in generate(150, seed=0)]
    assert {o.category for s in scenes for o in s.objects} == set(CATEGORIES)
    assert sum(len(s.words) for s in scenes) > 50
    assert any(overlaps(a.bbox, b.bbox) for s in scenes for a in s.objects for b in s.objects if a.id < b.id)
    for s in scenes:
        for o in s.objects:
            xs, ys = o.polygon[0::2], o.polygon[1::2]
            assert [min(xs), min(ys), max(xs), max(ys)] == o.bbox
            assert 0 <= min(xs) and max(xs) <= s.width and 0 <= min(ys) and max(ys) <= s.height
        for w in s.words:
            assert w.quad[0::2] == [w.bbox[0], w.bbox[2], w.bbox[2], w.bbox[0]]
        for g in s.grounding:
            assert s.captions[g["level"]][g["start"]:g["end"]] == g["phrase"]
            assert g["object_ids"] and all(0 <= i < len(s.objects) for i in g["object_ids"])
        for r in s.referring:
            target = s.objects[r["object_id"]]
            d = [o.__dict__ for o in s.objects]
            m = [o["id"] for o in d if _matches(o, r["expression"])]
            if _matches(target.__dict__, r["expression"]) is not None:
                assert m == [target.id], (r, d)
        # captions name what is in the scene
        for o in s.objects:
            assert o.category in s.captions["more_detailed"] and o.color in s.captions["more_detailed"]


def test_caption_lengths_per_granularity():
    scenes = [s for s, _ in generate(150, seed=1)]
    mean = {lvl: sum(len(re.findall(r"\w+", s.captions[lvl])) for s in scenes) / len(scenes)
            for lvl in ("brief", "detailed", "more_detailed")}
    # the paper: brief ~8 tokens, detailed ~32, more detailed ~71
    assert 5 <= mean["brief"] <= 11, mean
    assert 22 <= mean["detailed"] <= 42, mean
    assert 55 <= mean["more_detailed"] <= 95, mean


def test_write_world_writes_five_formats(tmp_path):
    exp = write_world(tmp_path / "landing", tmp_path / "truth", n_images=15, seed=0)
    land = tmp_path / "landing"
    assert (land / "coco/synthetic/annotations/instances.json").exists()
    assert (land / "openimages/synthetic/boxes/train-annotations-bbox.csv").exists()
    assert (land / "cc/synthetic/train.tsv").exists()
    assert (land / "laion/synthetic/part-00000.parquet").exists()
    assert list((land / "imagefolder/synthetic").glob("*/*.png"))
    truth = [json.loads(line) for line in open(tmp_path / "truth/ground_truth.jsonl")]
    assert len(truth) == 15 and exp["distinct_images"] == 15
    assert set(exp["quarantined"]) >= {"empty_file", "not_an_image", "truncated_image", "unsupported_format",
                                       "too_many_pixels", "missing_file", "malformed_record", "forbidden"}
