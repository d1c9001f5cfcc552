"""The regular files of a tar stream, read as (name, data, offset): uncompressed tars by a
reader of their own (ustar, GNU long names, pax) that knows each member's byte offset, so that
reading can restart there; compressed ones through ``tarfile``. Truncation and corruption raise
``TarError``, saying where the data ended.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator

TRUNCATED = "the tar ends without its end-of-archive blocks (truncated)"


class TarError(ValueError):
    """The tar data ends early or is corrupt; ``name``: the member being read, if known;
    ``at_boundary``: the data ends between two members (every member read is whole)."""

    def __init__(self, message: str, name: str | None = None, offset: int | None = None,
                 at_boundary: bool = False) -> None:
        super().__init__(message)
        self.name, self.offset, self.at_boundary = name, offset, at_boundary


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
