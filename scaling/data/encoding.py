"""Byte encodings for shards: a fast palette PNG writer, RGB images, and ustar tar members."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

FORMATS = ("png", "jpg", "webp")
REAL_SIZE = 128  # from this side up, "auto" writes JPEG as img2dataset does; below, lossless PNG


def resolve_format(fmt: str, image_size: int) -> str:
    """``auto``: palette PNG for the small proxy images, JPEG (quality 95) at real sizes."""
    if fmt == "auto":
        return "jpg" if image_size >= REAL_SIZE else "png"
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    return fmt


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_indexed(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """A minimal palette PNG (no row filter, zlib level 1). Written by hand: 1 byte per pixel
    to compress instead of 3, and ~5x faster than PIL's RGB encoder; any decoder reads it."""
    h, w = labels.shape
    raw = np.zeros((h, w + 1), np.uint8)  # each row starts with filter type 0
    raw[:, 1:] = labels
    header = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)  # 8-bit indexed colour, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"PLTE", palette.tobytes())
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
        + _chunk(b"IEND", b"")
    )


def encode(img: np.ndarray, fmt: str = "png") -> bytes:
    """Encode an RGB ``uint8[H, W, 3]`` image."""
    buf = io.BytesIO()
    if fmt == "jpg":  # img2dataset's default encoding
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
    elif fmt == "webp":
        Image.fromarray(img).save(buf, format="WEBP", quality=95)
    elif fmt == "png":
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unknown image format {fmt!r}; choose from {FORMATS}")
    return buf.getvalue()


def tar_member(name: str, data: bytes) -> bytes:
    """One ustar member with fixed metadata (mtime 0, root, 0644): byte-identical shards for the
    same seed, and ~10x cheaper than ``tarfile.addfile``, which dominated the writer's time."""
    h = bytearray(512)
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    h[0 : len(raw)] = raw
    h[100:108] = b"0000644\0"
    h[108:124] = b"0000000\0" * 2
    h[124:136] = b"%011o\0" % len(data)
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156] = ord("0")
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + data + bytes(-len(data) % 512)
