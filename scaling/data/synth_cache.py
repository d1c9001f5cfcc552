"""The synthetic world as a cache: generated once per (version, size, seed, shard size, format)
under a cache folder, safely under concurrent callers, and reused after."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from scaling.data.encoding import resolve_format
from scaling.data.synth import shard_pattern, write_world
from scaling.data.synth_eval import write_eval_sets

SYNTH_VERSION = 1  # bump when the world changes, so caches are regenerated
MARKER = "COMPLETE.json"


def ensure_synthetic(
    cache_dir: str | os.PathLike,
    samples: int,
    image_size: int = 32,
    seed: int = 0,
    shard_size: int = 1000,
    progress: bool = False,
    image_format: str = "auto",
) -> dict[str, str]:
    """Generate the world and its eval sets once under ``cache_dir`` and reuse them after.

    Returns ``{train: brace pattern, classification, composition, retrieval: dirs}``. Safe for
    concurrent callers: each writes a private temporary folder and renames it into place (the
    first rename wins, the others discard theirs), and the marker file is written last.
    """
    cache = Path(cache_dir)
    fmt = resolve_format(image_format, image_size)
    final = cache / f"synth-v{SYNTH_VERSION}-n{samples}-s{image_size}-seed{seed}-shard{shard_size}"
    if fmt != "png":  # (PNG folders keep the names they had before other formats existed)
        final = final.with_name(f"{final.name}-{fmt}")
    if not (final / MARKER).exists():
        cache.mkdir(parents=True, exist_ok=True)
        with _lock(cache / f".{final.name}.lock"):
            if not (final / MARKER).exists():
                _generate(final, samples, image_size, seed, shard_size, progress, fmt)
    return json.loads((final / MARKER).read_text())["paths"]


def _generate(
    final: Path, samples: int, image_size: int, seed: int, shard_size: int, progress: bool,
    fmt: str,
) -> None:
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        shards = write_world(
            tmp / "train", samples, image_size, seed, shard_size, image_format=fmt,
            progress=progress,
        )
        write_eval_sets(tmp / "eval", image_size, seed)
        rel = {
            "train": shard_pattern(shards),
            "classification": tmp / "eval" / "classification",
            "composition": tmp / "eval" / "composition",
            "retrieval": tmp / "eval" / "retrieval",
        }
        paths = {k: str(v).replace(str(tmp), str(final)) for k, v in rel.items()}
        marker = {
            "version": SYNTH_VERSION,
            "samples": samples,
            "image_size": image_size,
            "seed": seed,
            "shard_size": shard_size,
            "image_format": fmt,
            "paths": paths,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if final.exists() and not (final / MARKER).exists():  # made incomplete by hand
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path):
    """An advisory file lock, so concurrent callers wait instead of generating twice."""
    try:
        import fcntl  # POSIX only: imported where it is used so that the module loads elsewhere
    except ImportError:  # no fcntl (Windows): the rename alone keeps the cache consistent
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
