"""CLIP_benchmark's webdataset layout, read as the toolkit's evaluation sets.

The layout (``clip_benchmark.datasets.builder.build_wds_dataset``; the sets it publishes as
``clip-benchmark/wds_<name>``)::

    wds_vtab-cifar10/
        test/nshards.txt            number of shards N of the split
        test/0.tar ... test/N-1.tar KEY.{webp,png,jpg,jpeg} + KEY.cls (class index) or KEY.txt
                                    (retrieval: one caption per line)
        classnames.txt              one class name per line, in label order
        zeroshot_classification_templates.txt   one prompt per line, ``{c}`` for the class
        dataset_type.txt            ``retrieval`` for retrieval sets (absent: classification)

A folder counts as CLIP_benchmark's when it has ``<split>/nshards.txt`` or one of the three root
files beside ``.tar`` shards. Its metrics are named as CLIP_benchmark names the set, without the
``wds_`` of the folder (``scaling.stages.eval_set_name``): ``eval/vtab-cifar10/top1``.
"""

from __future__ import annotations

import os
from pathlib import Path

from scaling.data.errors import DataError

ROOT_FILES = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")
NSHARDS = "nshards.txt"
KINDS = ("classification", "retrieval")


def is_benchmark_folder(root: str | os.PathLike, split: str = "test") -> bool:
    """Whether ``root`` is laid out as a CLIP_benchmark webdataset set."""
    root = Path(root)
    if (root / split / NSHARDS).is_file():
        return True
    has_shards = any((root / split).glob("*.tar")) if (root / split).is_dir() else False
    return has_shards and any((root / name).is_file() for name in ROOT_FILES)


def dataset_type(root: str | os.PathLike) -> str:
    """``classification`` or ``retrieval`` (``dataset_type.txt``; absent means classification,
    as in CLIP_benchmark). ``multilabel`` sets are refused: their labels are not ``.cls``."""
    path = Path(root) / "dataset_type.txt"
    if not path.is_file():
        return "classification"
    kind = path.read_text(encoding="utf-8").strip().lower()
    if kind not in KINDS:
        raise DataError(f"{path} says '{kind}'; the toolkit evaluates {' and '.join(KINDS)} sets")
    return kind


def check_kind(root: str | os.PathLike, wanted: str, key: str) -> None:
    """Fail with the config key to use when ``dataset_type.txt`` says the other kind (a folder
    without it is read as whichever kind its samples allow, as before)."""
    if not (Path(root) / "dataset_type.txt").is_file():
        return
    kind = dataset_type(root)
    if kind != wanted:
        other = "eval.retrieval" if kind == "retrieval" else "eval.classification"
        raise DataError(f"{key}: {root} is a CLIP_benchmark {kind} set (dataset_type.txt); "
                        f"give it as {other}")


def shard_paths(root: str | os.PathLike, split: str = "test") -> list[Path]:
    """The split's shards: ``0.tar`` .. ``N-1.tar`` as ``nshards.txt`` counts them (what
    CLIP_benchmark reads, so both see the same samples), else every ``.tar`` in numeric order."""
    root = Path(root)
    folder = root / split if (root / split).is_dir() else root
    count_file = folder / NSHARDS
    if not count_file.is_file():
        return sorted(folder.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
    try:
        count = int(count_file.read_text(encoding="utf-8").strip())
    except ValueError as exc:
        raise DataError(f"{count_file} must hold the number of shards ({exc})") from exc
    shards = [folder / f"{i}.tar" for i in range(count)]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise DataError(f"{count_file} counts {count} shard(s) but {folder} lacks {', '.join(missing[:3])}")
    return shards
