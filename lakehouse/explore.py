"""Helpers the notebooks call: load a round's FLD rows and draw annotations over images."""
from __future__ import annotations

import io

from PIL import Image, ImageDraw

from lakehouse.images import read_stored
from lakehouse.tables import TableRoot, read

PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def fld_rows(spark, root: TableRoot, round_: int, limit: int | None = None) -> list[dict]:
    gold = read(spark, root, "gold_fld").filter(f"round = {int(round_)}")
    images = read(spark, root, "bronze_images").select("image_id", "content_path", "width", "height")
    df = gold.join(images, "image_id").orderBy("image_id")
    return [dict(r.asDict(recursive=True), content=read_stored(r["content_path"]))
            for r in (df.limit(limit) if limit else df).collect()]


def draw(content: bytes, regions=(), words=(), grounding=(), polygons=True, title: str | None = None) -> Image.Image:
    """Boxes with labels, polygons, OCR quads and grounded phrases over the image."""
    img = Image.open(io.BytesIO(content)).convert("RGB")
    d = ImageDraw.Draw(img)
    for i, r in enumerate(regions):
        c = PALETTE[i % len(PALETTE)]
        d.rectangle(r["bbox"], outline=c, width=2)
        d.text((r["bbox"][0] + 2, r["bbox"][1] + 1), str(r.get("label") or ""), fill=c)
        for p in (r.get("polygons") or []) if polygons else []:
            d.line(list(zip(p[0::2], p[1::2])) + [(p[0], p[1])], fill=c, width=1)
    for w in words:
        q = w["quad"]
        d.polygon(list(zip(q[0::2], q[1::2])), outline=(255, 0, 255))
    for g in grounding:
        for b in g["boxes"]:
            d.rectangle(b, outline=(0, 0, 0), width=1)
            d.text((b[0] + 2, b[3] - 12), g["phrase"], fill=(0, 0, 0))
    if title:
        d.text((4, 4), title, fill=(0, 0, 0))
    return img


def side_by_side(*images: Image.Image) -> Image.Image:
    w, h = sum(i.width for i in images) + 8 * (len(images) - 1), max(i.height for i in images)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width + 8
    return out
