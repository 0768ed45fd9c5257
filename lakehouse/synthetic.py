"""The synthetic world: the platform's embedded default data.

A seeded generator of scenes with complete ground truth for every Florence-2
task family: coloured shapes of 8 categories (sizes, overlaps, exact
polygons), rendered words with quads, captions at three granularities derived
from the scene, caption phrases linked to boxes, and referring expressions that
pick out exactly one object.  ``write_world`` writes the scenes out in the five
source formats (class folders, COCO JSON, Open Images CSV, Conceptual Captions
TSV, LAION parquet) plus deliberately bad inputs, so every adapter and every
quarantine reason is exercised.

Polygons are amodal: an object's polygon is its whole shape even where a later
object is drawn over it.  Boxes are the polygon's extent.  Coordinates are pixels
with (0, 0) at the top-left; images are (width, height).
"""
from __future__ import annotations

import io
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from florence2.geometry import bounding_box, iou, overlaps
from florence2.vocabulary import plural, position_name

CATEGORIES = ("circle", "square", "triangle", "star", "hexagon", "pentagon", "diamond", "cross")
PLURALS = {c: plural(c) for c in CATEGORIES}
COLORS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (240, 210, 30),
    "purple": (140, 50, 170), "orange": (245, 130, 20), "black": (20, 20, 20), "pink": (240, 120, 180),
}
BACKGROUNDS = {"white": (250, 250, 250), "light gray": (200, 200, 200), "beige": (235, 220, 190), "pale blue": (205, 225, 245)}
SIZES = {"small": (0.14, 0.2), "medium": (0.22, 0.3), "large": (0.32, 0.42)}
WORDS = ("SALE", "OPEN", "EXIT", "CAFE", "STOP", "HELLO", "PARK", "BOOK", "TAXI", "HOTEL", "MENU", "PIZZA", "BANK", "ZONE", "DOCK", "2024")
IMAGE_SIZES = ((320, 240), (256, 256), (240, 320), (384, 288))
NUMBERS = ("no", "one", "two", "three", "four", "five", "six")
SOURCE_KINDS = ("imagefolder", "coco", "openimages", "cc", "laion")


@dataclass
class SceneObject:
    id: int
    category: str
    color: str
    size: str
    bbox: list[float]            # x0, y0, x1, y1
    polygon: list[float]         # flat x, y, ...
    position: str = ""


@dataclass
class Word:
    text: str
    color: str
    quad: list[float]            # 8 numbers, clockwise from top-left
    bbox: list[float]


@dataclass
class Scene:
    scene_id: str
    width: int
    height: int
    background: str
    objects: list[SceneObject]
    words: list[Word]
    captions: dict = field(default_factory=dict)       # brief / detailed / more_detailed
    grounding: list[dict] = field(default_factory=list)  # {level, phrase, start, end, object_ids}
    referring: list[dict] = field(default_factory=list)  # {expression, object_id}

    def to_dict(self) -> dict:
        return asdict(self)


def _shape_polygon(cat: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n, radius, offset=0.0):
        return [(cx + radius * math.cos(offset + 2 * math.pi * k / n), cy + radius * math.sin(offset + 2 * math.pi * k / n)) for k in range(n)]

    if cat == "circle":
        return ring(32, r)
    if cat == "square":
        return ring(4, r, math.pi / 4 + rot)
    if cat == "triangle":
        return ring(3, r, -math.pi / 2 + rot)
    if cat == "pentagon":
        return ring(5, r, -math.pi / 2 + rot)
    if cat == "hexagon":
        return ring(6, r, rot)
    if cat == "diamond":
        return [(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)]
    if cat == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + rot + math.pi * k / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if cat == "cross":
        t = 0.33 * r
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
                (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(f"unknown category {cat!r}")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def make_scene(rng: random.Random, scene_id: str, scale: int = 1, noise: float = 0.0) -> tuple[Scene, Image.Image]:
    """One scene; ``scale`` multiplies the canvas (shapes and coordinates scale with it, text does not) and
    ``noise`` adds sensor-like Gaussian noise (std in levels), which makes JPEGs as heavy as web photos.
    Neither consumes ``rng``: the same seed gives the same scenes at any scale."""
    w, h = rng.choice(IMAGE_SIZES)
    w, h = w * scale, h * scale
    bg = rng.choice(list(BACKGROUNDS))
    img = Image.new("RGB", (w, h), BACKGROUNDS[bg])
    draw = ImageDraw.Draw(img)
    objects: list[SceneObject] = []
    n_obj = rng.choice((1, 2, 2, 3, 3, 4, 5, 6))
    for oid in range(n_obj):
        for _ in range(30):  # rejection-sample positions; overlaps allowed, near-duplicates not
            size = rng.choice(list(SIZES))
            r = 0.5 * rng.uniform(*SIZES[size]) * min(w, h)
            cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
            cat = rng.choice(CATEGORIES)
            poly = _shape_polygon(cat, cx, cy, r, rng.uniform(-0.3, 0.3))
            bbox = bounding_box([v for p in poly for v in p])
            if all(iou(bbox, o.bbox) < 0.3 for o in objects):
                break
        else:
            continue
        color = rng.choice(list(COLORS))
        draw.polygon(poly, fill=COLORS[color])
        objects.append(SceneObject(len(objects), cat, color, size, [round(v, 2) for v in bbox],
                                   [round(v, 2) for p in poly for v in p], position_name(cx, cy, w, h)))
    words: list[Word] = []
    for _ in range(rng.choice((0, 1, 1, 2))):
        text = rng.choice(WORDS)
        fsize = rng.randint(16, 26)
        font = _font(fsize)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        tw, th = x1 - x0, y1 - y0
        if tw + 8 >= w:
            continue
        for _ in range(30):
            px, py = rng.uniform(4, w - tw - 4), rng.uniform(4, h - th - 4)
            box = [px, py, px + tw, py + th]
            if not any(overlaps(box, o.bbox) for o in objects) and not any(overlaps(box, x.bbox) for x in words):
                break
        else:
            continue
        wcolor = "black" if bg != "black" else "white"
        draw.text((px - x0, py - y0), text, fill=(10, 10, 10), font=font)
        b = [round(v, 2) for v in box]
        words.append(Word(text, wcolor, [b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]], b))
    scene = Scene(scene_id, w, h, bg, objects, words)
    describe(scene)
    if noise:
        import zlib

        import numpy as np

        g = np.random.default_rng(zlib.crc32(scene_id.encode())).normal(0, noise, (h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) + g, 0, 255).astype(np.uint8))
    return scene, img


def _number(n: int) -> str:
    """A count in words where the ladder has one, digits beyond (real photos can have dozens of regions)."""
    return NUMBERS[n] if 0 <= n < len(NUMBERS) else str(n)


def _groups(objects):
    groups: dict[tuple[str, str], list[SceneObject]] = {}
    for o in objects:
        groups.setdefault((o.color, o.category), []).append(o)
    # Larger groups first, then by area, so captions mention the salient things.
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), -sum((o.bbox[2] - o.bbox[0]) * (o.bbox[3] - o.bbox[1]) for o in kv[1])))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _where(position: str) -> str:
    if position in ("left", "right"):
        return f"on the {position}"
    if position in ("top", "bottom"):
        return f"at the {position}"
    return f"in the {position}"


def _obj_phrase(o: SceneObject) -> str:
    return f"{_article(o.size)} {o.size} {o.color} {o.category}"


class _Builder:
    """Accumulates caption text and records where grounded phrases land."""

    def __init__(self, level: str, scene: Scene):
        self.level, self.scene, self.parts = level, scene, []

    def add(self, text: str, object_ids: list[int] | None = None):
        if object_ids is not None:
            start = sum(len(p) for p in self.parts)
            self.scene.grounding.append({"level": self.level, "phrase": text, "start": start,
                                         "end": start + len(text), "object_ids": list(object_ids)})
        self.parts.append(text)

    def text(self) -> str:
        return "".join(self.parts)


def describe(scene: Scene) -> None:
    """Captions at three granularities, grounding triplets and referring expressions, from the scene."""
    objs, groups = scene.objects, _groups(scene.objects)
    scene.grounding = []

    def group_phrase(color, cat, members):
        if len(members) == 1:
            return f"{_article(color)} {color} {cat}"
        return f"{NUMBERS[len(members)] if len(members) < len(NUMBERS) else 'several'} {color} {PLURALS[cat]}"

    # brief: the two most salient groups
    b = _Builder("brief", scene)
    shown = groups[:2]
    if not shown:
        b.add(f"An empty {scene.background} background")
    for i, ((color, cat), members) in enumerate(shown):
        if i:
            b.add(" and ")
        phrase = group_phrase(color, cat, members)
        b.add(phrase[0].upper() + phrase[1:] if i == 0 else phrase, [o.id for o in members])
    if len(groups) == 1:
        b.add(f" on a {scene.background} background")
    b.add(".")
    scene.captions["brief"] = b.text()

    # detailed: every object with size and position, and the words
    d = _Builder("detailed", scene)
    n = len(objs)
    d.add(f"The image shows {_number(n)} shape{'s' if n != 1 else ''} on a {scene.background} background.")
    salient = sorted(objs, key=lambda o: -(o.bbox[2] - o.bbox[0]) * (o.bbox[3] - o.bbox[1]))[:2]
    for o in sorted(salient, key=lambda o: o.id):
        d.add(" There is ")
        d.add(_obj_phrase(o), [o.id])
        d.add(f" {_where(o.position)}.")
    if n > len(salient):
        d.add(f" {_number(n - len(salient)).capitalize()} smaller shape{'s are' if n - len(salient) > 1 else ' is'} also visible.")
    for wd in scene.words:
        d.add(f' The word "{wd.text}" is written in {wd.color} letters.')
    scene.captions["detailed"] = d.text()

    # more detailed: a paragraph with overlaps, colour counts and layout
    m = _Builder("more_detailed", scene)
    m.add(f"This is a simple drawing on a plain {scene.background} background, with {_number(n)} "
          f"geometric shape{'s' if n != 1 else ''} spread across the picture.")
    for o in objs:
        w = _where(o.position)
        m.add(f" {w[0].upper()}{w[1:]} there is ")
        m.add(_obj_phrase(o), [o.id])
        covered = [p for p in objs if p.id > o.id and overlaps(p.bbox, o.bbox)]
        if covered:
            m.add(", partly hidden behind ")
            m.add(_obj_phrase(covered[0]).replace(f"{_article(covered[0].size)} ", "the ", 1), [covered[0].id])
        m.add(".")
    colors: dict[str, int] = {}
    for o in objs:
        colors[o.color] = colors.get(o.color, 0) + 1
    if colors:
        top = max(colors.items(), key=lambda kv: (kv[1], kv[0]))
        m.add(f" The most common colour is {top[0]}, used for {_number(top[1])} of the shapes.")
    if scene.words:
        quoted = " and ".join(f'"{wd.text}"' for wd in scene.words)
        m.add(f" Some text is printed on the image: {quoted}, in {scene.words[0].color} capital letters.")
    else:
        m.add(" There is no text anywhere in the image.")
    scene.captions["more_detailed"] = m.text()
    scene.referring = referring_expressions(objs)


def referring_expressions(objs: list[SceneObject]) -> list[dict]:
    """For each object, the shortest expression (from a fixed ladder) that matches it alone."""
    out = []
    for o in objs:
        ladder = [
            (f"the {o.category}", lambda p: p.category == o.category),
            (f"the {o.color} {o.category}", lambda p: (p.color, p.category) == (o.color, o.category)),
            (f"the {o.size} {o.color} {o.category}", lambda p: (p.size, p.color, p.category) == (o.size, o.color, o.category)),
        ]
        expr = next((e for e, match in ladder if [p.id for p in objs if match(p)] == [o.id]), None)
        if expr is None:
            same = [p for p in objs if (p.color, p.category) == (o.color, o.category)]
            cxs = sorted((p.bbox[0] + p.bbox[2]) / 2 for p in same)
            me = (o.bbox[0] + o.bbox[2]) / 2
            if len(set(cxs)) == len(cxs) and me in (cxs[0], cxs[-1]):
                expr = f"the {'leftmost' if me == cxs[0] else 'rightmost'} {o.color} {o.category}"
        if expr is not None:
            out.append({"expression": expr, "object_id": o.id})
    return out


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=92)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def generate(n_images: int, seed: int = 0, scale: int = 1, noise: float = 0.0):
    """Yield (scene, image) deterministically for a seed (``make_scene`` for ``scale`` and ``noise``)."""
    rng = random.Random(seed)
    for i in range(n_images):
        yield make_scene(rng, f"syn-{seed}-{i:06d}", scale, noise)


def _dominant(scene: Scene) -> str:
    if not scene.objects:
        return "empty"
    return max(scene.objects, key=lambda o: (o.bbox[2] - o.bbox[0]) * (o.bbox[3] - o.bbox[1])).category


def write_world(landing: Path, truth_dir: Path, n_images: int = 200, seed: int = 0, bad_inputs: bool = True,
                source_name: str = "synthetic", duplicate_every: int = 17, scale: int = 1, noise: float = 0.0) -> dict:
    """Write scenes in the five source formats under ``landing/<kind>/<source_name>/``.

    Scene ``i`` goes to source ``SOURCE_KINDS[i % 5]``; every ``duplicate_every``-th
    scene is also written, byte-identical, into the LAION parquet (a cross-source
    duplicate).  Returns the expected ingest counts; ground truth goes to
    ``truth_dir/ground_truth.jsonl``.
    """
    import pandas as pd

    from lakehouse.images import image_id

    landing, truth_dir = Path(landing), Path(truth_dir)
    dirs = {k: landing / k / source_name for k in SOURCE_KINDS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CATEGORIES)]}
    coco_caps = []
    oi_rows, cc_rows, laion_rows = [], [], []
    truth, per_kind = [], {k: 0 for k in SOURCE_KINDS}
    distinct: set[str] = set()
    for i, (scene, img) in enumerate(generate(n_images, seed, scale, noise)):
        kind = SOURCE_KINDS[i % len(SOURCE_KINDS)]
        fmt = "PNG" if kind == "imagefolder" else "JPEG"
        data = encode(img, fmt)
        iid = image_id(data)
        distinct.add(iid)
        per_kind[kind] += 1
        fname = f"{scene.scene_id}.{'png' if fmt == 'PNG' else 'jpg'}"
        if kind == "imagefolder":
            (dirs[kind] / _dominant(scene)).mkdir(exist_ok=True)
            (dirs[kind] / _dominant(scene) / fname).write_bytes(data)
        elif kind == "coco":
            (dirs[kind] / "images").mkdir(exist_ok=True)
            (dirs[kind] / "images" / fname).write_bytes(data)
            cid = len(coco["images"]) + 1
            coco["images"].append({"id": cid, "file_name": fname, "width": scene.width, "height": scene.height})
            for o in scene.objects:
                x0, y0, x1, y1 = o.bbox
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": cid, "category_id": CATEGORIES.index(o.category) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                    "segmentation": [o.polygon]})
            coco_caps.append({"id": len(coco_caps) + 1, "image_id": cid, "caption": scene.captions["brief"]})
        elif kind == "openimages":
            (dirs[kind] / "images").mkdir(exist_ok=True)
            (dirs[kind] / "images" / f"{scene.scene_id}.jpg").write_bytes(data)
            for o in scene.objects:
                x0, y0, x1, y1 = o.bbox
                oi_rows.append({"ImageID": scene.scene_id, "Source": "human", "LabelName": f"/m/syn_{o.category}",
                                "Confidence": 1, "XMin": x0 / scene.width, "XMax": x1 / scene.width,
                                "YMin": y0 / scene.height, "YMax": y1 / scene.height, "IsOccluded": 0,
                                "IsTruncated": 0, "IsGroupOf": 0, "IsDepiction": 0, "IsInside": 0})
        elif kind == "cc":
            (dirs[kind] / "images").mkdir(exist_ok=True)
            (dirs[kind] / "images" / fname).write_bytes(data)
            cc_rows.append((scene.captions["detailed"], f"images/{fname}"))
        else:
            laion_rows.append({"key": scene.scene_id, "url": None, "caption": scene.captions["brief"], "jpg": data})
        if duplicate_every and i % duplicate_every == 0 and kind != "laion":
            laion_rows.append({"key": scene.scene_id + "-dup", "url": None, "caption": scene.captions["brief"], "jpg": data})
        truth.append({"image_id": iid, "source_kind": kind, **scene.to_dict()})

    quarantined = {}
    coco_captions = len(coco["images"])  # the captions file names each good COCO image a second time
    if bad_inputs:
        quarantined = _write_bad_inputs(dirs, coco, cc_rows, laion_rows, seed)

    ann = dirs["coco"] / "annotations"
    ann.mkdir(exist_ok=True)
    coco_json = dict(coco, annotations=coco["annotations"])
    (ann / "instances.json").write_text(json.dumps(coco_json))
    # Captions travel in the same file, as COCO's captions file would; the adapter reads both keys.
    cap_doc = {"images": coco["images"], "annotations": coco_caps}
    (ann / "captions.json").write_text(json.dumps(cap_doc))
    (dirs["openimages"] / "boxes").mkdir(exist_ok=True)
    pd.DataFrame(oi_rows).to_csv(dirs["openimages"] / "boxes" / "train-annotations-bbox.csv", index=False)
    pd.DataFrame([{"LabelName": f"/m/syn_{c}", "DisplayName": c} for c in CATEGORIES]).to_csv(
        dirs["openimages"] / "class-descriptions.csv", index=False, header=False)
    with open(dirs["cc"] / "train.tsv", "w") as f:
        for caption, url in cc_rows:
            f.write(f"{caption}\t{url}\n")
    pd.DataFrame(laion_rows, columns=["key", "url", "caption", "jpg"]).to_parquet(dirs["laion"] / "part-00000.parquet", index=False)
    with open(truth_dir / "ground_truth.jsonl", "w") as f:
        for t in truth:
            f.write(json.dumps(t) + "\n")
    dup_inputs = len([i for i in range(n_images) if duplicate_every and i % duplicate_every == 0 and SOURCE_KINDS[i % 5] != "laion"])
    expected = {
        "scenes": n_images,
        "distinct_images": len(distinct),
        "inputs": n_images + dup_inputs + coco_captions + sum(quarantined.values()),
        "quarantined": quarantined,
        "per_kind_scenes": per_kind,
    }
    (truth_dir / "expected_counts.json").write_text(json.dumps(expected, indent=2))
    return expected


def _write_bad_inputs(dirs, coco, cc_rows, laion_rows, seed) -> dict:
    """One input per quarantine reason, spread over the sources."""
    rng = random.Random(seed + 1)
    scene, img = make_scene(rng, "bad")
    good_jpeg = encode(img, "JPEG")
    folder = dirs["imagefolder"] / "circle"
    folder.mkdir(exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are notes, not pixels\n")
    # twice: the copy's pixels are never decoded (same bytes), yet it must be quarantined with the first
    for name in ("truncated.jpg", "truncated-copy.jpg"):
        (folder / name).write_bytes(good_jpeg[: len(good_jpeg) // 2])
    gif = io.BytesIO()
    img.save(gif, "GIF")
    (folder / "animation.gif").write_bytes(gif.getvalue())
    bomb = io.BytesIO()
    Image.new("1", (8000, 6000)).save(bomb, "PNG")  # 48 Mpx, a few KB on disk
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    coco["images"].append({"id": len(coco["images"]) + 1, "file_name": "does-not-exist.jpg", "width": 10, "height": 10})
    cc_rows.append(("a caption whose url is empty", ""))
    # what an attacker would write into a shared manifest: a loopback URL and a path out of the dataset
    cc_rows.append(("a remote image on a loopback address", "http://127.0.0.1:9/unreachable.jpg"))
    cc_rows.append(("a file outside the dataset folder", "../../../../../../../../etc/hostname"))
    return {"empty_file": 1, "not_an_image": 1, "truncated_image": 2, "unsupported_format": 1, "too_many_pixels": 1,
            # the missing COCO image appears in both the instances and the captions file
            "missing_file": 2, "malformed_record": 1, "forbidden": 2}


def synthetic_rows(n_images: int, seed: int, tasks) -> list[dict]:
    """Example rows straight from the synthetic world's ground truth, without Spark:
    for learning experiments where the data must be exactly right (bench/image_ablation.py)."""
    from florence2.targets import build_examples, from_synthetic
    from florence2.tasks import build_prompt

    rows = []
    for scene, img in generate(n_images, seed=seed):
        content = encode(img, "PNG")
        for k, e in enumerate(build_examples(from_synthetic(scene.to_dict()), tasks)):
            rows.append({"example_id": f"{scene.scene_id}-{k:03d}", "image_id": scene.scene_id, "task": e.task,
                         "prompt": build_prompt(e.task, e.text, e.region, img.size), "target": e.target,
                         "text_input": e.text, "region": list(e.region) if e.region else None, "refers": e.refers,
                         "content": content, "width": img.size[0], "height": img.size[1]})
    return rows


def write_recipe_data(rows: list[dict], out_dir, vocab_size: int = 1000) -> dict:
    """Example rows as one parquet file in ``training_examples``' layout (one row per image, its examples a
    JSON list), a tokenizer trained on their text, and the recipe's ``data.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from florence2.tokenization import build_tokenizer
    from lakehouse.layout import image_row

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_image: dict = {}
    for r in rows:
        by_image.setdefault(r["image_id"], []).append(r)
    table = [image_row(i, rs, rs[0]["content"], rs[0]["width"], rs[0]["height"], 0, "train")
             for i, rs in by_image.items()]
    pq.write_table(pa.Table.from_pylist(table), out / "train.parquet")
    build_tokenizer([r["target"] for r in rows] + [r["prompt"] for r in rows],
                    vocab_size=vocab_size).save_pretrained(str(out / "tokenizer"))
    data = {"files": [str(out / "train.parquet")], "rows": len(rows), "version": 0, "split": "train",
            "tokenizer": str(out / "tokenizer")}
    (out / "data.json").write_text(json.dumps(data))
    return data
