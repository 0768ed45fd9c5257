"""The ``training_examples`` row layout, without Spark: the Spark writer (``lakehouse.examples``) and the
Spark-free one (``lakehouse.synthetic.write_recipe_data``, what a GPU box without Java runs) build rows here.
``lakehouse.tables.EXAMPLE`` types these fields and checks that it names them in this order."""
from __future__ import annotations

import json

EXAMPLE_FIELDS = ("example_id", "task", "text_input", "region", "prompt", "target")


def image_row(image_id: str, examples: list[dict], content, width: int, height: int, round_: int | None = None,
              split: str | None = None) -> dict:
    """One ``training_examples`` row: the image once, its examples (``EXAMPLE_FIELDS``) as a JSON list."""
    return {"image_id": image_id, "round": round_, "split": split,
            "examples": json.dumps([{k: e[k] for k in EXAMPLE_FIELDS} for e in examples]),
            "n_examples": len(examples), "content": content, "width": int(width), "height": int(height)}
