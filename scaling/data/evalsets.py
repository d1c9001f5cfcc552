"""Zero-shot evaluation sets: classification (class names + prompt templates) and retrieval.

Layouts read (so users can point at ImageNet-1K and friends):

- ImageFolder: ``ROOT/<class dir>/<image>``; class index = sorted order of the class dirs;
  ``ROOT/classnames.txt`` (one name per line, in that order; else the dir names with ``_`` as
  spaces) and ``ROOT/templates.txt`` (one template per line with ``{}``; else open_clip's 80
  OpenAI ImageNet templates).
- clip_benchmark webdataset (``scaling.data.clip_benchmark``): ``ROOT/<split>/nshards.txt`` and
  ``0.tar``.. holding ``KEY.{webp,png,jpg}`` + ``KEY.cls`` (classification) or ``KEY.txt``
  (retrieval, one caption per line), with ``classnames.txt``,
  ``zeroshot_classification_templates.txt`` (``{c}`` placeholders) and ``dataset_type.txt``.
- Retrieval from the synthetic world: ``ROOT/captions.jsonl`` (``{"image": rel path,
  "captions": [...]}`` per line) and the images beside it.

Images are read lazily (file paths, or tar offsets), so large sets do not fill memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from scaling.data import clip_benchmark
from scaling.data.errors import DataError
from scaling.data.image_source import ImageSource
from scaling.data.tario import IMAGE_EXTS
from scaling.data.transforms import eval_transform

IMAGE_SUFFIXES = tuple(f".{e}" for e in IMAGE_EXTS) + (".bmp", ".gif", ".tif", ".tiff")


_Set = TypeVar("_Set", bound="_EvalSet")


@dataclass
class _EvalSet:
    source: ImageSource
    name: str
    path: Path
    _cache: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def images(self) -> torch.Tensor:
        """All images as one ``float[N, 3, S, S]`` tensor (loaded once; for small sets)."""
        if self._cache is None:
            self._cache = torch.stack([self.source[i] for i in range(len(self.source))])
        return self._cache

    def loader(self, batch_size: int = 256, num_workers: int = 0) -> torch.utils.data.DataLoader:
        """Batches of images (in index order) for large sets."""
        return torch.utils.data.DataLoader(
            self.source, batch_size=batch_size, num_workers=num_workers
        )

    def subset(self: _Set, limit: int | None = None) -> _Set:
        """At most ``limit`` evenly spaced samples (each class keeps some in a class-sorted
        folder), decoded now: a stage evaluating every few thousand samples decodes them once."""
        n = len(self)
        keep = list(range(n)) if not limit or limit >= n else sorted({int(i * n / limit) for i in range(limit)})
        source = ImageSource([self.source.items[i] for i in keep], self.source.transform)
        out = dataclasses.replace(self, source=source, _cache=None, **self._select(keep))
        out.images  # noqa: B018 -- decode once, here
        return out

    def _select(self, keep: list[int]) -> dict[str, Any]:
        return {}


@dataclass
class ClassificationSet(_EvalSet):
    labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)

    @property
    def chance(self) -> float:
        """Top-1 accuracy of guessing: 1 / number of classes."""
        return 1.0 / len(self.classnames)

    def prompts(self, classname: str) -> list[str]:
        return [t.format(classname) for t in self.templates]

    def _select(self, keep: list[int]) -> dict[str, Any]:
        return {"labels": self.labels[keep]}


@dataclass
class RetrievalSet(_EvalSet):
    captions: list[list[str]] = field(default_factory=list)

    def texts(self) -> tuple[list[str], torch.Tensor]:
        """All captions flattened, and the image index of each."""
        flat = [c for caps in self.captions for c in caps]
        owner = torch.tensor(
            [i for i, caps in enumerate(self.captions) for _ in caps], dtype=torch.long
        )
        return flat, owner

    def _select(self, keep: list[int]) -> dict[str, Any]:
        return {"captions": [self.captions[i] for i in keep]}


def _read_lines(path: Path) -> list[str]:
    try:
        return [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def default_templates() -> list[str]:
    """open_clip's 80 OpenAI ImageNet prompt templates, as ``{}`` format strings."""
    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def _templates(root: Path, templates: Sequence[str] | None) -> list[str]:
    if templates is not None:
        found, source = list(templates), "the templates argument"
    else:
        for name in ("templates.txt", "zeroshot_classification_templates.txt"):
            if (root / name).exists():
                found, source = (
                    [t.replace("{c}", "{}") for t in _read_lines(root / name)],
                    str(root / name),
                )
                break
        else:
            return default_templates()
    bad = [t for t in found if t.count("{}") != 1]
    if bad or not found:
        raise DataError(
            f"prompt templates in {source} need exactly one '{{}}' (or '{{c}}') each; bad: {bad[:3]}"
        )
    return found


def _wds_members(root: Path, split: str) -> list[dict]:
    """Samples of ``ROOT/<split>/*.tar`` (or ``ROOT/*.tar``) as dicts of ext -> bytes or tar offsets."""
    shards = clip_benchmark.shard_paths(root, split)
    samples: dict[tuple[str, str], dict] = {}
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                for m in tar:
                    if not m.isfile() or "." not in os.path.basename(m.name):
                        continue
                    key, ext = m.name.split(".", 1)
                    entry = samples.setdefault((str(shard), key), {})
                    if ext.lower() in IMAGE_EXTS:
                        entry["image"] = (str(shard), m.offset_data, m.size)
                    elif ext in ("cls", "txt"):
                        entry[ext] = tar.extractfile(m).read().decode("utf-8")
        except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read evaluation shard {shard}: {exc}") from exc
    return list(samples.values())


def _check_root(path: str | os.PathLike) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"evaluation set {root} is not a directory (expected an ImageFolder, a clip_benchmark "
            "webdataset folder, or a synthetic set from python -m scaling.data.synth --eval)"
        )
    return root


def load_classification(
    path: str | os.PathLike,
    image_size: int,
    mode: str = "resize_center_crop",
    *,
    templates: Sequence[str] | None = None,
    split: str = "test",
    name: str | None = None,
) -> ClassificationSet:
    """Read an ImageFolder or clip_benchmark webdataset classification set."""
    root = _check_root(path)
    transform = eval_transform(image_size, mode)
    name = name or root.name
    if clip_benchmark.is_benchmark_folder(root, split):
        clip_benchmark.check_kind(root, "classification", "eval.classification")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    wds = (
        list((root / split).glob("*.tar")) if (root / split).is_dir() else list(root.glob("*.tar"))
    )
    if wds:
        samples = [s for s in _wds_members(root, split) if "image" in s and "cls" in s]
        if not (root / "classnames.txt").exists():
            raise DataError(
                f"{root} is a webdataset set without classnames.txt (one class name per line)"
            )
        classnames = _read_lines(root / "classnames.txt")
        items = [s["image"] for s in samples]
        try:
            labels = [int(s["cls"].strip()) for s in samples]
        except ValueError as exc:
            raise DataError(f"{root}: a .cls label is not an integer ({exc})") from exc
    elif class_dirs:
        items, labels = [], []
        for label, d in enumerate(class_dirs):
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            items += [str(p) for p in files]
            labels += [label] * len(files)
        names_file = root / "classnames.txt"
        classnames = (
            _read_lines(names_file)
            if names_file.exists()
            else [d.name.replace("_", " ") for d in class_dirs]
        )
        if len(classnames) != len(class_dirs):
            raise DataError(
                f"{names_file} lists {len(classnames)} class names but {root} has {len(class_dirs)} "
                "class folders: one name per folder, in sorted folder order"
            )
    else:
        raise DataError(
            f"{root} holds neither class folders (ImageFolder) nor .tar shards (clip_benchmark)"
        )
    if not items:
        raise DataError(f"classification set {root} holds no image")
    if max(labels) >= len(classnames) or min(labels) < 0:
        raise DataError(
            f"{root}: labels run to {max(labels)} but there are {len(classnames)} class names"
        )
    return ClassificationSet(
        ImageSource(items, transform),
        name,
        root,
        labels=torch.tensor(labels),
        classnames=classnames,
        templates=_templates(root, templates),
    )


def load_retrieval(
    path: str | os.PathLike,
    image_size: int,
    mode: str = "resize_center_crop",
    *,
    split: str = "test",
    name: str | None = None,
) -> RetrievalSet:
    """Read a retrieval set: ``captions.jsonl`` + images, or a clip_benchmark webdataset (``.txt``)."""
    root = _check_root(path)
    transform = eval_transform(image_size, mode)
    items: list = []
    captions: list[list[str]] = []
    if (root / "captions.jsonl").exists():
        for n, line in enumerate(_read_lines(root / "captions.jsonl"), start=1):
            try:
                rec = json.loads(line)
                items.append(str(root / rec["image"]))
                captions.append([str(c) for c in rec["captions"]])
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{root / 'captions.jsonl'} line {n}: expected "
                    f'{{"image": ..., "captions": [...]}} ({exc})'
                ) from exc
    else:
        if clip_benchmark.is_benchmark_folder(root, split):
            clip_benchmark.check_kind(root, "retrieval", "eval.retrieval")
        for s in _wds_members(root, split):
            if "image" in s and "txt" in s:
                items.append(s["image"])
                captions.append([c.strip() for c in s["txt"].splitlines() if c.strip()])
    if not items:
        raise DataError(
            f"retrieval set {root} holds no image-caption pair (expected captions.jsonl or "
            f"{split}/*.tar with KEY.jpg|png|webp + KEY.txt)"
        )
    if any(not caps for caps in captions):
        raise DataError(f"retrieval set {root}: an image has no caption")
    return RetrievalSet(ImageSource(items, transform), name or root.name, root, captions=captions)
