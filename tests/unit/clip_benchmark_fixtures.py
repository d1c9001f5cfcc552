"""Tiny evaluation sets in CLIP_benchmark's webdataset layout, made on the spot: coloured shapes
on a plain ground, of several sizes and aspect ratios (so the eval resize and crop do work),
as JPEG and PNG, over two shards that ``nshards.txt`` counts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("red square", "green circle", "blue triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230)}
TEMPLATES = ("a photo of a {c}.", "a drawing of a {c}.")
SIZES = ((48, 40), (40, 56), (64, 64), (36, 44))


def shape_image(label: int, variant: int) -> Image.Image:
    width, height = SIZES[variant % len(SIZES)]
    colour, shape = CLASSES[label].split()
    img = Image.new("RGB", (width, height), (235 - 20 * variant % 60, 230, 220))
    draw = ImageDraw.Draw(img)
    box = (width // 5 + variant % 3, height // 5, width * 4 // 5, height * 4 // 5 - variant % 2)
    fill = COLOURS[colour]
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    return img


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(root: Path, samples: list[dict[str, bytes]], shards: int = 2, split: str = "test") -> None:
    folder = root / split
    folder.mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(folder / f"{s}.tar", "w") as tar:
            for i in range(s, len(samples), shards):
                for ext, data in samples[i].items():
                    _add(tar, f"s{i:05d}.{ext}", data)
    (folder / "nshards.txt").write_text(f"{shards}\n")


def classification_set(parent: Path, name: str = "wds_tiny-shapes", per_class: int = 6) -> Path:
    """``parent/name``: a zero-shot classification set (``.cls`` labels, class names, templates)."""
    root = parent / name
    samples = []
    for i in range(per_class * len(CLASSES)):
        label, variant = i % len(CLASSES), i // len(CLASSES)
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        samples.append({ext: _encode(shape_image(label, variant), fmt), "cls": str(label).encode()})
    _write_shards(root, samples)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root


def retrieval_set(parent: Path, name: str = "wds_tiny-captions", images: int = 12) -> Path:
    """``parent/name``: a retrieval set (``dataset_type.txt`` = retrieval, two captions an image)."""
    root = parent / name
    samples = []
    for i in range(images):
        label, variant = i % len(CLASSES), i // len(CLASSES)
        caps = f"a {CLASSES[label]} on a plain ground\na picture of one {CLASSES[label]}, size {variant}\n"
        samples.append({"png": _encode(shape_image(label, variant), "PNG"), "txt": caps.encode()})
    _write_shards(root, samples)
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root
