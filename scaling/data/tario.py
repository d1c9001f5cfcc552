"""Shard URLs and tar reading in the img2dataset layout, with bad data counted per shard.

A sample is the run of consecutive tar members sharing a key (``KEY.jpg``, ``KEY.txt``,
``KEY.json``), as in webdataset. The reader is written on ``tarfile`` rather than webdataset's
iterators so that every kind of bad data can be counted against its shard exactly, and so that
an uncompressed local shard can be read from any sample's byte offset: a stream resumes by
seeking to where it was (``read_shard(url, stats, start=offset)``, ``read_samples_at``).
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from braceexpand import braceexpand

from scaling.data.errors import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's split: key up to the first dot


class BadDataWarning(UserWarning):
    """A shard held data that had to be skipped (shown once per shard)."""


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


TRUNCATED = "the tar ends without its end-of-archive blocks (truncated)"


class TarError(ValueError):
    """The tar data ends early or is corrupt; ``name``: the member being read, if known;
    ``at_boundary``: the data ends between two members (every member read is whole)."""

    def __init__(self, message: str, name: str | None = None, offset: int | None = None,
                 at_boundary: bool = False) -> None:
        super().__init__(message)
        self.name, self.offset, self.at_boundary = name, offset, at_boundary


def _ends_sample(exc: BaseException, key: str | None) -> bool:
    """Whether the files read so far under ``key`` are whole when reading stopped at ``exc``:
    the data ended between members, or inside a member of another key."""
    if key is None:
        return False
    if getattr(exc, "at_boundary", False):
        return True
    broken = _KEY_RE.match(getattr(exc, "name", None) or "")
    return broken is not None and broken.group(1) != key


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _header_sum(header: bytes) -> int:
    """The ustar checksum of a 512-byte header: its byte sum with the checksum field as spaces.

    Each half's byte sum (<= 256 * 255 < 65521) is exactly adler32's low word minus one, which
    zlib computes ~5x faster than ``sum`` walks the bytes (~10 us a sample at 3 members)."""
    view = memoryview(header)
    total = (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2
    return total - sum(view[148:156]) + 8 * 32


def _iter_plain_tar(f, first: bytes, base: int = 0) -> Iterator[tuple[str, bytes, int]]:
    """(name, data, offset) of the regular files of an uncompressed tar (ustar, GNU long names,
    pax); ``offset`` is where the member's first header block starts (its long-name or pax
    header, if any), so that reading can restart there.

    Written out because ``tarfile``'s stream mode cost ~5x more per sample than all the rest of
    the reading; ``first`` is the already read first header block, found at byte ``base``. One
    read per member: its data, its padding and the next header together.
    """
    header = first
    long_name: str | None = None
    here = start = base  # this header's offset; the offset of the member's first header
    while True:
        if len(header) == 0:
            if here == 0:
                return  # an empty file: the caller names it as such
            # a file cut at a member boundary (a copy stopped at a 10240-byte record)
            raise TarError(TRUNCATED, offset=start, at_boundary=True)
        if len(header) < 512:
            raise TarError("unexpected end of data in a header", offset=start)
        if header.count(0) == 512:
            return  # end-of-archive block
        if _octal(header[148:156]) != _header_sum(header):
            raise TarError("bad header checksum (corrupt data)", offset=start)
        size = _octal(header[124:136])
        kind = header[156:157]
        name = long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        end = size + (-size % 512)
        block = _read_exact(f, end + 512)
        if len(block) < end:
            regular = kind in (b"0", b"\0", b"7")
            raise TarError("unexpected end of data", name if regular else None, start)
        data, header = block[:size], block[end:]
        here += 512 + end
        if kind == b"L":  # GNU long name for the next member
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == b"x":  # pax extended header: only the path matters here
            for record in data.split(b"\n"):
                _, _, kv = record.partition(b" ")
                if kv.startswith(b"path="):
                    long_name = kv[5:].decode("utf-8", "surrogateescape")
        elif kind in (b"0", b"\0", b"7"):
            long_name = None
            yield name, data, start
        else:  # directories, links, global pax headers...
            long_name = None
        if long_name is None:  # the next member starts here (a long name belongs to it)
            start = here


def _iter_tarfile(f) -> Iterator[tuple[str, bytes, None]]:
    """(name, data) through ``tarfile`` (compressed tars)."""
    with tarfile.open(fileobj=f, mode="r|*") as tar:
        yield from _tarfile_members(tar)
        # tarfile ends quietly at end of data; only after an end-of-archive block has its
        # stream read past the last member
        if tar.offset and tar.fileobj.tell() == tar.offset:
            raise TarError(TRUNCATED, at_boundary=True)


def _tarfile_members(tar: tarfile.TarFile) -> Iterator[tuple[str, bytes, None]]:
    """(name, data, None) of the regular files ``tar`` holds."""
    for member in tar:
        if member.isfile():
            try:
                data = tar.extractfile(member).read()
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise TarError(f"unexpected end of data ({exc})", member.name) from exc
            if len(data) != member.size:
                raise TarError("unexpected end of data", member.name)
            yield member.name, data, None


def iter_tar(f, base: int = 0) -> Iterator[tuple[str, bytes, int | None]]:
    """(name, data, offset) of each regular file of a tar stream, compressed or not; ``offset``
    (where the member's headers start) is None in a compressed tar, where bytes cannot be
    sought. ``base``: the stream's position in the file (a plain tar read from the middle)."""
    first = _read_exact(f, 512)
    if first[:2] == b"\x1f\x8b" or first[:3] == b"BZh" or first[:6] == b"\xfd7zXZ\x00":
        if base:
            raise TarError("a compressed tar cannot be read from the middle")
        yield from _iter_tarfile(_Prefixed(first, f))
    else:
        yield from _iter_plain_tar(f, first, base)


class _Prefixed:
    """A read-only stream that first returns ``head``, then the rest of ``f``."""

    def __init__(self, head: bytes, f) -> None:
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.f.read(n)
        if n < 0:
            out, self.head = self.head + self.f.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        if len(out) < n:
            out += self.f.read(n - len(out))
        return out


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
