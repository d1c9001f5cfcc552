"""Image decoding: OpenCV's fast path gives PIL's pixels, and bad bytes still fail."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from scaling.data import decode


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(0, 8, (30, 40, 3)), axis=1) + 128
    return np.clip(walk, 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


CASES = [
    ("png", "PNG", "RGB", {}),
    ("png", "PNG", "L", {}),
    ("png", "PNG", "P", {}),
    ("png", "PNG", "RGBA", {}),
    ("jpg", "JPEG", "RGB", {"quality": 90}),
    ("jpg", "JPEG", "RGB", {"quality": 75, "subsampling": 2}),
    ("webp", "WEBP", "RGB", {"lossless": True}),
]


@pytest.mark.parametrize(("ext", "fmt", "mode", "kw"), CASES)
def test_decode_rgb_gives_the_pixels_pil_gives(ext, fmt, mode, kw):
    pytest.importorskip("cv2")
    data = _encode(Image.fromarray(_image()).convert(mode), fmt, **kw)
    fast = decode.decode_rgb(data, ext)
    assert isinstance(fast, np.ndarray)  # the OpenCV path ran
    expected = np.asarray(decode.open_image(data, ext).convert("RGB"))
    assert fast.shape == expected.shape == (30, 40, 3) and fast.dtype == np.uint8
    assert np.array_equal(fast, expected)


def test_exif_orientation_is_left_as_pil_leaves_it():
    pytest.importorskip("cv2")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    data = _encode(Image.fromarray(_image()), "JPEG", exif=exif, quality=95)
    fast = decode.decode_rgb(data, "jpg")
    assert fast.shape == (30, 40, 3)
    assert np.array_equal(fast, np.asarray(decode.open_image(data, "jpg").convert("RGB")))


@pytest.mark.parametrize("bad", [b"", b"not an image", None])
def test_bad_bytes_raise_as_pil_does(bad):
    good = _encode(Image.fromarray(_image()), "PNG")
    data = good[: len(good) // 2] if bad is None else bad
    with pytest.raises(Exception) as fast:
        decode.decode_rgb(data, "png")
    with pytest.raises(Exception) as slow:
        decode.open_image(data, "png")
    assert type(fast.value) is type(slow.value)


def test_without_opencv_pil_decodes(monkeypatch):
    monkeypatch.setattr(decode, "_cv2", lambda: None)
    img = decode.decode_rgb(_encode(Image.fromarray(_image()), "PNG"), "png")
    assert isinstance(img, Image.Image) and np.array_equal(np.asarray(img), _image())


def test_wrong_extension_and_decompression_bombs(monkeypatch):
    png = _encode(Image.fromarray(_image()), "PNG")
    assert np.array_equal(np.asarray(decode.open_image(png, "jpg")), _image())  # probed
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(Image.DecompressionBombError):
        decode.open_image(png, "png")
