"""A deliberately broken specialist for the gate test (shipped to Spark workers with addPyFile)."""
from lakehouse.specialists.base import Specialist


class BrokenCaptioner(Specialist):
    """Two brief captions per image, one of 60 words."""

    name, version, kinds = "broken", "1", ("caption_brief",)

    def annotate(self, image, image_id):
        return [{"kind": "caption_brief", "text": "A cat on a mat.", "confidence": 0.9},
                {"kind": "caption_brief", "text": " ".join(["a very long red circle caption"] * 12), "confidence": 0.9}]
