"""Image bytes -> pixels: OpenCV's one-call decoder for transforms that take arrays, PIL otherwise.

Both decode with libpng / libjpeg-turbo / libwebp and give the same RGB pixels (the tests check
PNG, JPEG, WEBP, grey, palette and RGBA images, and EXIF orientation, which both leave alone;
CMYK JPEGs can differ by one level, rounding in the colour conversion). OpenCV does it in one
C++ call: ~20 us for a 32 px PNG against PIL's ~65 us, most of it plugin set-up and chunk
parsing in Python, which at the proxy sizes was the largest part of a sample's cost.
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin


def _image_classes() -> dict[str, type]:
    png, jpeg = PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile
    return {"png": png, "jpg": jpeg, "jpeg": jpeg, "webp": WebPImagePlugin.WebPImageFile}


_IMAGE_CLASSES = _image_classes()


def open_image(data: bytes, ext: str) -> Image.Image:
    """Decode with the PIL plugin the extension names (``Image.open`` would first run its generic
    set-up and probe); web data often has the wrong extension, so fall back to probing."""
    cls = _IMAGE_CLASSES.get(ext)
    if cls is not None:
        try:
            img = cls(io.BytesIO(data))
            # Image.open's guard against decompression bombs, which the direct path skips
            if img.width * img.height > 2 * (Image.MAX_IMAGE_PIXELS or float("inf")):
                raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
            img.load()
            return img
        except Image.DecompressionBombError:
            raise
        except Exception:  # any failure: probe all formats below
            pass
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@functools.cache
def _cv2():
    """OpenCV, quiet (bad data is counted per shard, not logged per image) and with PIL's
    decompression-bomb limit instead of its own 2**30 pixels; None if it is not installed."""
    if Image.MAX_IMAGE_PIXELS:
        os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2 * Image.MAX_IMAGE_PIXELS))
    try:
        import cv2  # optional; its pixel limit must be in the environment before it loads
    except ImportError:
        return None
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2


def decode_rgb(data: bytes, ext: str) -> np.ndarray | Image.Image:
    """``uint8[H, W, 3]`` RGB via OpenCV; bytes it cannot read go to PIL, which returns an image
    when they are valid after all and raises when they are not."""
    cv2 = _cv2()
    if cv2 is not None and data:
        # OpenCV would turn the image by its EXIF orientation, PIL does not: same pixels as PIL
        flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if arr is not None:
            return arr
    return open_image(data, ext)
