"""Reading shards in the img2dataset layout, with bad data counted per shard.

A sample is the run of consecutive tar members sharing a key (``KEY.jpg``, ``KEY.txt``,
``KEY.json``), as in webdataset. The reader is written on its own tar member reader
(``scaling.data.tarmembers``) rather than webdataset's iterators so that every kind of bad data
can be counted against its shard exactly, and so that an uncompressed local shard can be read
from any sample's byte offset: a stream resumes by seeking to where it was
(``read_shard(url, stats, start=offset)``, ``read_samples_at``). Shard URLs are expanded in
``scaling.data.shard_urls``.
"""

from __future__ import annotations

import os
import re
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from scaling.data.errors import DataError
from scaling.data.shard_urls import is_remote, shard_name
from scaling.data.tarmembers import TarError, iter_tar

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's split: key up to the first dot


class BadDataWarning(UserWarning):
    """A shard held data that had to be skipped (shown once per shard)."""


@dataclass
class ShardStats:
    """Skipped items per shard, samples delivered, and which shards were already warned about."""

    skipped_by_shard: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    warned: set[str] = field(default_factory=set)
    quiet: bool = False  # while replaying a stream to its saved position

    def skip(self, shard: str, reason: str) -> None:
        if self.quiet:
            return
        self.skipped_by_shard[shard] = self.skipped_by_shard.get(shard, 0) + 1
        if shard not in self.warned:
            self.warned.add(shard)
            warnings.warn(
                f"skipping bad data in shard {shard}: {reason} (further problems in this shard "
                f"are counted in stats()['skipped_by_shard'], not shown)",
                BadDataWarning,
                stacklevel=2,
            )

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_shard.values())

    def snapshot(self) -> dict:
        return {
            "skipped_by_shard": dict(self.skipped_by_shard),
            "samples": self.samples,
            "warned": sorted(self.warned),
        }

    def restore(self, d: dict) -> None:
        self.skipped_by_shard = dict(d.get("skipped_by_shard", {}))
        self.samples = int(d.get("samples", 0))
        self.warned = set(d.get("warned", ()))


def _open(url: str):
    if is_remote(url):
        # webdataset takes 1.2 s to import: only for remote shards
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def _make_sample(url: str, key: str, files: dict[str, bytes], stats: ShardStats) -> dict | None:
    image_ext = next((e for e in IMAGE_EXTS if e in files), None)
    if image_ext is None:
        stats.skip(shard_name(url), f"sample {key!r} has no image ({'/'.join(IMAGE_EXTS)})")
        return None
    if CAPTION_EXT not in files:
        stats.skip(shard_name(url), f"sample {key!r} has no caption (.{CAPTION_EXT})")
        return None
    try:
        text = files[CAPTION_EXT].decode("utf-8").strip()
    except UnicodeDecodeError:
        stats.skip(shard_name(url), f"sample {key!r} has a caption that is not UTF-8")
        return None
    return {"key": key, "image": files[image_ext], "ext": image_ext, "text": text, "shard": url}


def _ends_sample(exc: BaseException, key: str | None) -> bool:
    """Whether the files read so far under ``key`` are whole when reading stopped at ``exc``:
    the data ended between members, or inside a member of another key."""
    if key is None:
        return False
    if getattr(exc, "at_boundary", False):
        return True
    broken = _KEY_RE.match(getattr(exc, "name", None) or "")
    return broken is not None and broken.group(1) != key


SHARD_END = -1  # a sample's ``next`` when nothing follows it in its shard


def _open_at(url: str, start: int):
    f = _open(url)
    if start:
        f.seek(start)
    return f


def read_shard(url: str, stats: ShardStats, start: int = 0, produced: int = 0) -> Iterator[dict]:
    """Complete, well-formed samples of one shard; bad ones are counted in ``stats`` and skipped.

    Counted (one each): a sample without image or caption, a non-UTF-8 caption, the unreadable
    rest of a truncated or corrupt tar (also one cut between two members, which lacks its
    end-of-archive blocks), a shard with no sample at all.

    Each sample carries ``offset`` (where its first member starts) and ``next`` (where the
    reading goes on after it, ``SHARD_END`` if nothing follows), both None where the bytes
    cannot be sought (a remote URL, a compressed tar). ``start``/``produced``: go on reading
    from the ``next`` of a sample, ``produced`` samples into the shard (read from the start
    that way, the shard gives the same samples and counts the same bad data).
    """
    if start == SHARD_END:
        return
    seekable = not is_remote(url)
    key, files, key_offset = None, {}, None
    empty = True
    try:
        f = _open_at(url, start)
    except FileNotFoundError:
        # not bad data: the file matched when the stream was built and is gone now
        raise DataError(
            f"shard {url} no longer exists (was it deleted or moved while reading?)"
        ) from None
    except OSError as exc:
        stats.skip(shard_name(url), f"cannot open the shard ({type(exc).__name__}: {exc})")
        return
    try:
        with f:
            for name, data, offset in iter_tar(f, start):
                empty = False
                m = _KEY_RE.match(name)
                if m is None or os.path.basename(name).startswith("__"):
                    continue  # webdataset's metadata members (__key__...) and names without a suffix
                if m.group(1) != key:  # a new key: the previous sample is complete
                    if key is not None:
                        sample = _make_sample(url, key, files, stats)
                        if sample is not None:
                            produced += 1
                            yield _place(sample, key_offset, offset, seekable)
                    key, files, key_offset = m.group(1), {}, offset
                files[m.group(2).lower()] = data
        if key is not None:
            sample = _make_sample(url, key, files, stats)
            if sample is not None:
                produced += 1
                yield _place(sample, key_offset, SHARD_END, seekable)
        elif produced == 0:
            what = (
                "the shard is an empty file"
                if empty and _is_empty_file(url)
                else "the shard holds no sample"
            )
            stats.skip(shard_name(url), what)
    except (TarError, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        # the data ended: the sample being read is usable if its files are whole (it may
        # still lack its caption, which counts on its own); one inside a broken member is lost
        if _ends_sample(exc, key):
            sample = _make_sample(url, key, files, stats)
            if sample is not None:
                yield _place(sample, key_offset, getattr(exc, "offset", None), seekable)
        stats.skip(shard_name(url), f"truncated or corrupt tar ({type(exc).__name__}: {exc})")


def _place(sample: dict, offset: int | None, nxt: int | None, seekable: bool) -> dict:
    ok = seekable and offset is not None and nxt is not None
    sample["offset"], sample["next"] = (offset, nxt) if ok else (None, None)
    return sample


def read_samples_at(url: str, offsets: Sequence[int]) -> list[dict]:
    """The samples starting at ``offsets`` (each a sample's ``offset``) of an uncompressed local
    shard, in that order: one open, one seek and one read per member. They were read well before,
    so whatever goes wrong now (the shard changed under the stream) is a ``DataError``."""
    out = []
    try:
        with open(url, "rb") as f:
            for offset in offsets:
                f.seek(offset)
                key, files = None, {}
                try:
                    for name, data, _ in iter_tar(f, offset):
                        m = _KEY_RE.match(name)
                        if m is None or os.path.basename(name).startswith("__"):
                            continue
                        if key is not None and m.group(1) != key:
                            break
                        key = m.group(1)
                        files[m.group(2).lower()] = data
                except TarError as exc:
                    if not _ends_sample(exc, key):
                        raise
                sample = None if key is None else _make_sample(url, key, files, ShardStats(quiet=True))
                if sample is None:
                    raise TarError(f"no sample at byte {offset}")
                sample["offset"], sample["next"] = offset, None
                out.append(sample)
    except (TarError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot restore the stream position: shard {url} changed since it was saved "
            f"({type(exc).__name__}: {exc}); restore into the same shards, or start the data afresh"
        ) from None
    return out


def _is_empty_file(url: str) -> bool:
    return not is_remote(url) and os.path.getsize(url) == 0
