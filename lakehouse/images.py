"""Image bytes -> identity and validity, and the image store that keeps them.  Pure Python; runs inside
Spark workers."""
from __future__ import annotations

import hashlib
import io
import os
import uuid
import warnings

from PIL import Image, UnidentifiedImageError

from florence2.vocabulary import IMAGE_FORMATS


class ImageRejected(ValueError):
    """An input that cannot become a bronze image; ``reason`` is a quarantine reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inspect_image(data: bytes | None, max_pixels: int, decode: bool = True) -> tuple[str, int, int, str]:
    """Return (image_id, width, height, format) or raise ImageRejected.

    The pixel limit is checked from the header, before any pixel is decoded.  ``decode=False`` stops
    there: the pixels are checked later (``check_pixels``), once per distinct image, not per input.
    """
    if not data:
        raise ImageRejected("empty_file", "0 bytes")
    with _open(data) as img:
        fmt, (w, h) = img.format, img.size
        if fmt not in IMAGE_FORMATS:
            raise ImageRejected("unsupported_format", f"{fmt} (supported: {', '.join(IMAGE_FORMATS)})")
        if w * h > max_pixels:
            raise ImageRejected("too_many_pixels", f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
        if w <= 0 or h <= 0:
            raise ImageRejected("not_an_image", f"size {w}x{h}")
        if decode:
            _load(img)
    return image_id(data), w, h, fmt


def check_pixels(data: bytes) -> None:
    """Decode every pixel of bytes whose header ``inspect_image(decode=False)`` accepted; raises
    ImageRejected (``truncated_image`` where the pixel data is unreadable)."""
    with _open(data) as img:
        _load(img)


def _open(data: bytes) -> Image.Image:
    Image.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_many_pixels", str(e)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageRejected("not_an_image", f"{len(data)} bytes, no decoder recognises them ({e})") from None


def _load(img: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except Exception as e:  # PIL raises OSError/SyntaxError/struct.error on cut data
        raise ImageRejected("truncated_image", f"{img.format} {img.width}x{img.height}, pixel data unreadable: {e}") from None


def decode_rgb(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    return img.convert("RGB")


# The image store: one file per distinct image, named by its SHA-256.  Bronze rows name their file
# (``content_path``) instead of holding the bytes: ingest's workers write each image once, in the pass
# that checks it, and the bytes never cross into the JVM (a Delta column of ~200 KB values cost the
# ingest most of its time, bench/results/scale.md).  A file is written once and never changed, so a
# pinned bronze version still names the same bytes.


def stored_path(store: str, image_id: str) -> str:
    return os.path.join(store, image_id[:2], image_id)


def is_stored(store: str, image_id: str) -> bool:
    return os.path.exists(stored_path(store, image_id))


def store_image(store: str, image_id: str, data: bytes) -> str:
    """Keep ``data`` (whose SHA-256 is ``image_id``) in the store unless it is there; returns its path.
    Written to a temporary name and renamed, so a reader or a task killed midway never sees part of a
    file, and two tasks storing the same image both succeed."""
    path = stored_path(store, image_id)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def read_stored(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: bronze names this image but the image store does not hold it (was "
                                f"the store moved or deleted? FLD_IMAGE_STORE says where it is; ingesting "
                                f"the image again stores it again)") from None
