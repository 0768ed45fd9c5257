"""A classical-vision region specialist: colour segmentation and contours (OpenCV).

Pixels are grouped by quantised colour; each connected component that is large
enough and differs from the background becomes a region with a box, a polygon, a
shape name from its geometry (vertex count, solidity, aspect) and a colour name.
From its own detections it also writes captions at three granularities.  It is
built for flat synthetic scenes; on real photos and under occlusion it is
imperfect (merged or partial regions), which is what the refinement rounds fix.
"""
from __future__ import annotations

import numpy as np

from florence2.vocabulary import position_name
from lakehouse.specialists.base import Specialist

# A generic colour-name table (not the synthetic world's palette).
NAMED_COLORS = {
    "red": (230, 25, 25), "green": (25, 160, 50), "blue": (30, 60, 230), "yellow": (250, 220, 20),
    "purple": (130, 40, 170), "orange": (250, 140, 0), "black": (0, 0, 0), "pink": (250, 130, 190),
    "white": (255, 255, 255), "gray": (128, 128, 128), "brown": (140, 80, 30),
}


def color_name(rgb) -> str:
    rgb = np.asarray(rgb, float)
    return min(NAMED_COLORS, key=lambda n: float(((np.asarray(NAMED_COLORS[n]) - rgb) ** 2).sum()))


def classify_shape(contour, bw: float, bh: float) -> tuple[str, float]:
    import cv2

    area = cv2.contourArea(contour)
    hull = cv2.convexHull(contour)
    solidity = area / max(cv2.contourArea(hull), 1e-6)
    peri = cv2.arcLength(contour, True)
    n = len(cv2.approxPolyDP(contour, 0.03 * peri, True))
    circularity = 4 * np.pi * area / max(peri * peri, 1e-6)
    if solidity < 0.64:
        return "star", 0.8
    if solidity < 0.86:
        return "cross", 0.75
    if n == 3:
        return "triangle", 0.85
    if n == 4:
        return ("diamond", 0.8) if min(bw, bh) / max(bw, bh) < 0.8 else ("square", 0.85)
    if n == 5:
        return "pentagon", 0.7
    if n == 6:
        return "hexagon", 0.65
    return ("circle", 0.8) if circularity > 0.8 else ("hexagon", 0.4)


class ContourRegions(Specialist):
    name = "contours"
    version = "1"
    kinds = ("region", "caption_brief", "caption_detailed", "caption_more_detailed")

    def __init__(self, min_area_frac: float = 0.004, quant: int = 48, captions: bool = True):
        self.min_area_frac, self.quant, self.captions = min_area_frac, quant, captions

    def load(self):
        import cv2

        return cv2

    def detect(self, image) -> tuple[list[dict], str]:
        cv2 = self.model()
        rgb = np.asarray(image.convert("RGB"))
        h, w = rgb.shape[:2]
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        bg = np.median(border, axis=0)
        q = (rgb // self.quant).astype(np.int32)
        codes = q[..., 0] * 10000 + q[..., 1] * 100 + q[..., 2]
        bg_code = int(np.median(codes[0]))
        min_area = self.min_area_frac * w * h
        found = []
        for code in np.unique(codes):
            if code == bg_code:
                continue
            mask = (codes == code).astype(np.uint8)
            if mask.sum() < min_area:
                continue
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            for c in contours:
                area = cv2.contourArea(c)
                if area < min_area:
                    continue
                x, y, bw, bh = cv2.boundingRect(c)
                fill = np.zeros_like(mask)
                cv2.drawContours(fill, [c], -1, 1, -1)
                mean = rgb[fill.astype(bool)].mean(axis=0)
                if np.abs(mean - bg).sum() < 40:
                    continue
                shape, conf = classify_shape(c, bw, bh)
                poly = cv2.approxPolyDP(c, 0.01 * cv2.arcLength(c, True), True).reshape(-1, 2)
                r = max(bw, bh) / 2 / min(w, h)
                size = "small" if r < 0.1 else "medium" if r < 0.15 else "large"
                found.append({"kind": "region", "text": shape, "description": f"{size} {color_name(mean)} {shape}",
                              "bbox": [float(x), float(y), float(x + bw), float(y + bh)],
                              "polygons": [[float(v) for v in poly.reshape(-1)]],
                              "confidence": round(conf * min(1.0, 0.5 + area / (20 * min_area)), 3),
                              "_color": color_name(mean), "_size": size})
        return found, color_name(bg)

    def annotate(self, image, image_id):
        regions, bg = self.detect(image)
        out = [{k: v for k, v in r.items() if not k.startswith("_")} for r in regions]
        if self.captions and regions:
            out += self._captions(regions, bg, image.size)
        return out

    def _captions(self, regions, bg, size):
        from lakehouse import synthetic

        w, h = size
        objs = []
        for i, r in enumerate(sorted(regions, key=lambda r: (r["bbox"][1], r["bbox"][0]))):
            x0, y0, x1, y1 = r["bbox"]
            objs.append(synthetic.SceneObject(i, r["text"], r["_color"], r["_size"], r["bbox"], r["polygons"][0],
                                              position_name((x0 + x1) / 2, (y0 + y1) / 2, w, h)))
        scene = synthetic.Scene("detected", w, h, bg, objs, [])
        synthetic.describe(scene)
        no_text = " There is no text anywhere in the image."   # the captioner cannot see text
        return [{"kind": f"caption_{lvl}", "text": scene.captions[lvl].replace(no_text, ""), "confidence": 0.5}
                for lvl in ("brief", "detailed", "more_detailed")]
