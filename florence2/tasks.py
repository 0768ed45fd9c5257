"""The Florence-2 task registry: the 15 prompt tasks of the reference, defined once.

Each task has a token (``<OD>``), a prompt template, the kind of input it takes
(none, free text, or a region), what it outputs, and the reference
post-processing type that ``transformers``' ``Florence2Processor`` uses for it.
"""
from __future__ import annotations

from dataclasses import dataclass

from florence2.locations import region_tokens

NONE, TEXT, REGION = "none", "text", "region"


@dataclass(frozen=True)
class Task:
    token: str
    prompt: str
    input: str          # NONE | TEXT | REGION
    output: str         # human description of the answer
    parse_type: str     # the reference post-processing type


TASKS: dict[str, Task] = {t.token: t for t in [
    Task("<OCR>", "What is the text in the image?", NONE, "text", "pure_text"),
    Task("<OCR_WITH_REGION>", "What is the text in the image, with regions?", NONE, "quad boxes + labels", "ocr"),
    Task("<CAPTION>", "What does the image describe?", NONE, "text", "pure_text"),
    Task("<DETAILED_CAPTION>", "Describe in detail what is shown in the image.", NONE, "text", "pure_text"),
    Task("<MORE_DETAILED_CAPTION>", "Describe with a paragraph what is shown in the image.", NONE, "text", "pure_text"),
    Task("<OD>", "Locate the objects with category name in the image.", NONE, "boxes + labels", "description_with_bboxes"),
    Task("<DENSE_REGION_CAPTION>", "Locate the objects in the image, with their descriptions.", NONE, "boxes + labels",
         "description_with_bboxes"),
    Task("<REGION_PROPOSAL>", "Locate the region proposals in the image.", NONE, "boxes", "bboxes"),
    Task("<CAPTION_TO_PHRASE_GROUNDING>", "Locate the phrases in the caption: {input}", TEXT, "boxes + phrases",
         "phrase_grounding"),
    Task("<REFERRING_EXPRESSION_SEGMENTATION>", "Locate {input} in the image with mask", TEXT, "polygons", "polygons"),
    Task("<REGION_TO_SEGMENTATION>", "What is the polygon mask of region {input}", REGION, "polygons", "polygons"),
    Task("<OPEN_VOCABULARY_DETECTION>", "Locate {input} in the image.", TEXT, "boxes or polygons + labels",
         "description_with_bboxes_or_polygons"),
    Task("<REGION_TO_CATEGORY>", "What is the region {input}?", REGION, "text", "pure_text"),
    Task("<REGION_TO_DESCRIPTION>", "What does the region {input} describe?", REGION, "text", "pure_text"),
    Task("<REGION_TO_OCR>", "What text is in the region {input}?", REGION, "text", "pure_text"),
]}


class TaskInputError(ValueError):
    """A prompt was asked for with the wrong input for its task."""


def get_task(token: str) -> Task:
    try:
        return TASKS[token]
    except KeyError:
        raise TaskInputError(f"unknown task {token!r}; known tasks: {', '.join(TASKS)}") from None


def build_prompt(token: str, text: str | None = None, region=None, image_size: tuple[int, int] | None = None) -> str:
    """The prompt text for a task.  ``region`` is a pixel box (x0, y0, x1, y1) and needs
    ``image_size`` (width, height); it is written as four location tokens."""
    task = get_task(token)
    if task.input == NONE:
        if text is not None or region is not None:
            given = "text" if text is not None else "a region"
            raise TaskInputError(f"task {token} takes no input, but {given} was given")
        return task.prompt
    if task.input == TEXT:
        if region is not None:
            raise TaskInputError(f"task {token} takes a text input, not a region")
        if text is None or not str(text).strip():
            raise TaskInputError(f"task {token} needs a text input (e.g. a caption or a phrase), none was given")
        return task.prompt.format(input=str(text).strip())
    if text is not None:
        raise TaskInputError(f"task {token} takes a region (x0, y0, x1, y1), not text")
    if region is None:
        raise TaskInputError(f"task {token} needs a region (x0, y0, x1, y1 in pixels), none was given")
    if image_size is None:
        raise TaskInputError(f"task {token}: a region needs the image size to be quantised")
    try:
        box = [float(v) for v in region]
    except (TypeError, ValueError):
        raise TaskInputError(f"task {token}: region must be 4 numbers (x0, y0, x1, y1), got {region!r}") from None
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise TaskInputError(f"task {token}: region must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {region!r}")
    return task.prompt.format(input=region_tokens(box, image_size))
