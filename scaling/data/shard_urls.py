"""Shard URLs: brace patterns, globs, plain paths and remote URLs expanded to the list of shards."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from braceexpand import braceexpand

from scaling.data.errors import DataError


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace patterns (``dir/train-{000000..000009}.tar``), globs, plain paths, ``::``-joined
    lists and remote URLs (``pipe:``, ``s3://``... opened by webdataset's ``gopen``, not checked)."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    if not patterns:
        raise DataError(
            "no shard URLs given: pass a path, a glob or a brace pattern such as 'dir/train-{000000..000009}.tar'"
        )
    out: list[str] = []
    for pattern in patterns:
        for part in str(pattern).split("::"):
            names = list(braceexpand(part))
            found: list[str] = []
            missing: list[str] = []
            for name in names:
                if is_remote(name):
                    found.append(name)
                elif glob.has_magic(name):
                    found += sorted(glob.glob(name))
                elif os.path.isfile(name):
                    found.append(name)
                else:
                    missing.append(name)
            if not found:
                raise DataError(
                    f"shard pattern {part!r} matches no file: check the path, or write the data first "
                    f"(python -m scaling.data.synth --out DIR --samples N)"
                )
            if missing:
                raise DataError(
                    f"{len(missing)} of {len(names)} files named by {part!r} do not exist "
                    f"(first: {missing[0]}): fix the range or the path"
                )
            out += found
    return out


def shard_name(url: str) -> str:
    return url
