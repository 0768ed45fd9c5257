import io

import pytest
from PIL import Image

from lakehouse.images import ImageRejected, image_id, inspect_image


def _png(w=20, h=10, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (w, h), 128 if mode == "L" else (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(w=64, h=48):
    buf = io.BytesIO()
    Image.effect_noise((w, h), 50).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_valid_image_identity():
    data = _png()
    iid, w, h, fmt = inspect_image(data, 10_000)
    assert (w, h, fmt) == (20, 10, "PNG")
    assert iid == image_id(data) and len(iid) == 64


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_file"),
    (b"hello, not an image", "not_an_image"),
    (_jpeg()[: len(_jpeg()) // 2], "truncated_image"),
], ids=["empty", "text", "truncated"])
def test_rejections(data, reason):
    with pytest.raises(ImageRejected) as e:
        inspect_image(data, 10_000_000)
    assert e.value.reason == reason


def test_unsupported_format():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    with pytest.raises(ImageRejected, match="unsupported_format: GIF"):
        inspect_image(buf.getvalue(), 10_000)


def test_pixel_limit_checked_before_decoding():
    with pytest.raises(ImageRejected) as e:
        inspect_image(_png(200, 100, "L"), 19_999)
    assert e.value.reason == "too_many_pixels" and "200x100" in e.value.detail
    assert inspect_image(_png(200, 100, "L"), 20_000)[1:3] == (200, 100)


def test_header_only_check_leaves_the_pixels_to_check_pixels():
    """Ingest checks each input's header and decodes each distinct image once: ``decode=False``
    accepts a cut JPEG whose header reads, and ``check_pixels`` rejects it as ``inspect_image`` does."""
    from lakehouse.images import check_pixels

    cut = _jpeg()[: len(_jpeg()) // 2]
    assert inspect_image(cut, 10_000_000, decode=False) == (image_id(cut), 64, 48, "JPEG")
    with pytest.raises(ImageRejected) as e:
        check_pixels(cut)
    assert e.value.reason == "truncated_image" and "JPEG 64x48" in e.value.detail
    check_pixels(_jpeg())
    with pytest.raises(ImageRejected, match="not_an_image"):
        check_pixels(b"hello, not an image")


def test_the_image_store_keeps_an_image_once_and_names_a_missing_one(tmp_path):
    """Content-addressed: storing the same image twice leaves one file (no temporary left behind), and a
    bronze path whose file is gone says what is missing and where the store is configured."""
    from lakehouse.images import is_stored, read_stored, store_image, stored_path

    data, store = _png(), str(tmp_path / "store")
    iid = image_id(data)
    assert not is_stored(store, iid)
    path = store_image(store, iid, data)
    assert path == stored_path(store, iid) and store_image(store, iid, data) == path and is_stored(store, iid)
    assert read_stored(path) == data
    assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()] == [iid]
    (tmp_path / "store" / iid[:2] / iid).unlink()
    with pytest.raises(FileNotFoundError, match=f"{iid}: bronze names this image but the image store does not hold "
                                                "it.*FLD_IMAGE_STORE"):
        read_stored(path)
