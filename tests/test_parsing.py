"""Our parser against transformers' Florence2Processor.post_process_generation, on generated answers."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from florence2.parsing import BANNED_GROUNDING_TOKENS, POST_PROCESSOR_CONFIG, post_process_generation
from florence2.targets import build_examples, from_synthetic
from florence2.tasks import TASKS
from lakehouse.synthetic import generate

from florence_fixtures import tiny

N = 1000
PROPERTY = settings(max_examples=N, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def ref():
    _, proc = tiny()
    hf = proc.to_hf()
    assert hf.post_processor_config == POST_PROCESSOR_CONFIG
    return hf


loc = st.integers(0, 999).map(lambda q: f"<loc_{q}>")
words = st.text(alphabet="abcXYZ é-,.0'", min_size=0, max_size=12)
label = st.one_of(words, st.sampled_from(BANNED_GROUNDING_TOKENS), st.sampled_from([" a red circle ", "the image", "  "]))
junk = st.sampled_from(["<s>", "</s>", "<pad>", "<od>", "</od>", "<ground>", "<obj>", "<box>", "<sep>", "<poly>", "</poly>"])
sizes = st.tuples(st.integers(1, 4000), st.integers(1, 4000))


def locs(lo, hi):
    return st.lists(loc, min_size=lo, max_size=hi).map("".join)


def answers(piece):
    return st.lists(st.one_of(piece, piece, piece, junk, words), min_size=0, max_size=8).map("".join)


KINDS = {
    # output kind -> (tasks using it, a strategy biased to well-formed answers of that kind)
    "boxes": (["<OD>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>"],
              answers(st.tuples(label, locs(3, 9)).map("".join))),
    "quads": (["<OCR_WITH_REGION>"], answers(st.tuples(label, locs(6, 10)).map("".join))),
    "phrases": (["<CAPTION_TO_PHRASE_GROUNDING>"], answers(st.tuples(label, locs(3, 13)).map("".join))),
    "polygons": (["<REFERRING_EXPRESSION_SEGMENTATION>", "<REGION_TO_SEGMENTATION>"],
                 answers(st.one_of(
                     st.tuples(label, locs(1, 12), st.sampled_from(["", "<sep>"]), locs(0, 9)).map("".join),
                     st.tuples(label, st.just("<poly>"), locs(2, 12), st.sampled_from(["", "<sep>"]), locs(0, 8),
                               st.just("</poly>")).map("".join)))),
    "boxes_or_polygons": (["<OPEN_VOCABULARY_DETECTION>"],
                          answers(st.one_of(st.tuples(label, locs(3, 9)).map("".join),
                                            st.tuples(label, st.just("<poly>"), locs(4, 10), st.just("</poly>")).map("".join)))),
    "text": (["<CAPTION>", "<OCR>", "<REGION_TO_CATEGORY>"], answers(words)),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_parse_equals_reference(ref, kind):
    tasks, strategy = KINDS[kind]

    @PROPERTY
    @given(text=strategy, size=sizes, task=st.sampled_from(tasks))
    def check(text, size, task):
        assert post_process_generation(text, task, size) == ref.post_process_generation(text=text, task=task, image_size=size)

    check()


def test_every_task_has_an_output_kind_under_test():
    covered = {t for tasks, _ in KINDS.values() for t in tasks}
    parse_types = {TASKS[t].parse_type for t in covered}
    assert parse_types == {t.parse_type for t in TASKS.values()}


def _close(a, b, tol):
    return len(a) == len(b) and all(abs(x - y) <= t for x, y, t in zip(a, b, tol))


def test_targets_round_trip_within_half_a_bin():
    """Annotation -> target string -> parser returns the annotation within half a bin, for every task."""
    seen = set()
    for scene, _ in generate(40, seed=2):
        truth = scene.to_dict()
        ann = from_synthetic(truth)
        w, h = ann.size
        half = [0.5 * w / 1000 + 1e-9, 0.5 * h / 1000 + 1e-9]
        for ex in build_examples(ann):
            seen.add(ex.task)
            got = post_process_generation(ex.target, ex.task, ann.size, as_int=False)[ex.task]
            tol = lambda n: [half[i % 2] for i in range(n)]  # noqa: E731
            if ex.task in ("<OD>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", "<OPEN_VOCABULARY_DETECTION>"):
                boxes = got["bboxes"]
                # open vocabulary: every box of a category, or the one box of a referring expression
                referred = [r.bbox for r in ann.referring if r.expression == ex.text]
                want = {"<OPEN_VOCABULARY_DETECTION>": referred or [r.bbox for r in ann.regions if r.label == ex.text]}.get(
                    ex.task, [r.bbox for r in ann.regions])
                assert len(boxes) == len(want)
                assert all(any(_close(b, wb, tol(4)) for wb in want) for b in boxes), ex
                labels = got.get("labels", got.get("bboxes_labels"))
                if ex.task == "<OD>":
                    assert sorted(labels) == sorted(r.label for r in ann.regions)
                if ex.task == "<REGION_PROPOSAL>":
                    assert set(labels) == {""}
            elif ex.task == "<CAPTION_TO_PHRASE_GROUNDING>":
                want = [(p.phrase, b) for p in ann.phrases for b in p.boxes]
                assert [(lab, _close(b, wb, tol(4))) for lab, b, (_, wb) in zip(got["labels"], got["bboxes"], want)] \
                    == [(p, True) for p, _ in want]
            elif ex.task in ("<REFERRING_EXPRESSION_SEGMENTATION>", "<REGION_TO_SEGMENTATION>"):
                (polys,) = got["polygons"]
                if ex.task == "<REGION_TO_SEGMENTATION>":
                    want = next(r.polygons for r in ann.regions if tuple(r.bbox) == ex.region)
                else:
                    want = next(r.polygons for r in ann.referring if r.expression == ex.text)
                assert all(_close(p, wp, tol(len(wp))) for p, wp in zip(polys, want)) and len(polys) == len(want)
            elif ex.task == "<OCR_WITH_REGION>":
                assert got["labels"] == [wd.text for wd in sorted(ann.words, key=lambda wd: (wd.quad[1], wd.quad[0]))] \
                    or sorted(got["labels"]) == sorted(wd.text for wd in ann.words)
                for q, lab in zip(got["quad_boxes"], got["labels"]):
                    assert any(_close(q, wd.quad, tol(8)) for wd in ann.words if wd.text == lab)
            else:
                assert got == ex.target
    assert seen == set(TASKS)


def test_an_untrusted_label_is_not_taught():
    """A region whose label claim is distrusted: no region-to-category/description for it, and its image
    loses the answers that list every label (OD, dense captions, open vocabulary); boxes and the other
    regions' labels stay."""
    import dataclasses

    scene, _ = next(iter(generate(1, seed=3)))
    ann = from_synthetic(scene.to_dict())
    assert len(ann.regions) >= 2
    all_tasks = {ex.task for ex in build_examples(ann)}
    assert {"<OD>", "<DENSE_REGION_CAPTION>", "<OPEN_VOCABULARY_DETECTION>"} <= all_tasks
    doubted = ann.regions[0]
    ann2 = dataclasses.replace(ann, regions=[dataclasses.replace(doubted, label_trusted=False)] + ann.regions[1:])
    got = build_examples(ann2)
    # a referring expression's box is its own annotation, not a label claim: it stays
    referring = {r.expression for r in ann.referring}
    tasks = {ex.task for ex in got if not (ex.task == "<OPEN_VOCABULARY_DETECTION>" and ex.text in referring)}
    assert not tasks & {"<OD>", "<DENSE_REGION_CAPTION>", "<OPEN_VOCABULARY_DETECTION>"}
    assert "<REGION_PROPOSAL>" in tasks
    named = [tuple(ex.region) for ex in got if ex.task in ("<REGION_TO_CATEGORY>", "<REGION_TO_DESCRIPTION>")]
    assert tuple(doubted.bbox) not in named
    assert {tuple(r.bbox) for r in ann.regions[1:]} <= set(named)
    segmented = [tuple(ex.region) for ex in got if ex.task == "<REGION_TO_SEGMENTATION>"]
    assert tuple(doubted.bbox) in segmented
