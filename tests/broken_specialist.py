"""A deliberately broken specialist for the gate test (shipped to Spark workers with addPyFile)."""
from lakehouse.specialists.base import Specialist


class BrokenCaptioner(Specialist):
    """Two brief captions per image, one of 60 words."""

    name, version, kinds = "broken", "1", ("caption_brief",)

    def annotate(self, image, image_id):
        return [{"kind": "caption_brief", "text": "A cat on a mat.", "confidence": 0.9},
                {"kind": "caption_brief", "text": " ".join(["a very long red circle caption"] * 12), "confidence": 0.9}]


class FlakyRegions(Specialist):
    """One region per image; raises on the images in ``fail_on`` and hangs on those in ``hang_on``."""

    name, version, kinds = "flaky", "1", ("region",)

    def __init__(self, fail_on=(), hang_on=(), timeout_s: float = 120.0, batched: bool = False):
        self.fail_on, self.hang_on, self.timeout_s, self.batched = list(fail_on), list(hang_on), timeout_s, batched
        self.batch_calls = 0

    def annotate_batch(self, images, image_ids):
        self.batch_calls += 1  # one bad image fails the whole batch, as a model on a GPU would
        return [self.annotate(im, i) for im, i in zip(images, image_ids)]

    def annotate(self, image, image_id):
        if image_id in self.fail_on:
            raise IndexError("list index out of range")
        if image_id in self.hang_on:
            import time

            time.sleep(600)
        return [{"kind": "region", "text": "circle", "bbox": [1, 1, 20, 20], "confidence": 0.9}]
