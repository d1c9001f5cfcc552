"""Checkpoint files that prove themselves: a content hash taken while each file is written,
checked before a rank loads it, and write failures reported with their path and errno.

The hash is SHA-256 from ``hashlib``: on CPUs with SHA extensions (x86 since 2017-2019, ARMv8)
OpenSSL's SHA-256 runs ~2x faster than its BLAKE2b (``benchmarks/bench_checkpoint_hash.py``
measures both, and the cost against the write). Each large write hands its buffer to a hashing
thread while the main thread writes it (both release the GIL), so hashing overlaps the write
rather than adding to it. The manifest records ``"<algorithm>:<hex digest>"`` per file, so the
algorithm can change without breaking older checkpoints.

What is verified: only the files a rank loads (see :func:`files_loaded_by`), by that rank,
before any of them is read: at 18B every rank reads its own ZeRO shards and the shared files,
and no rank reads the whole ~300 GB again.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from scaling.train.errors import CheckpointError

ALGORITHM = "sha256"
DIGESTS_KEY = "digests"  # manifest entry: {relative path: "sha256:<hex>"}
OVERLAP_MIN_BYTES = 1 << 20  # smaller writes are hashed inline: a thread hand-off costs more
_CHUNK = 16 << 20
_RANK_DIGESTS = ".digests-rank{}.json"


class CheckpointCorrupt(CheckpointError):
    """A checkpoint file fails its content hash or cannot be read; ``path`` names it."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, I/O error); the partial folder is removed."""


class HashingWriter:
    """A binary file that hashes what is written to it, in a helper thread for large buffers."""

    def __init__(self, f: Any, pool: ThreadPoolExecutor | None = None, algorithm: str = ALGORITHM) -> None:
        self.f, self.pool, self.algorithm = f, pool, algorithm
        self.hash = hashlib.new(algorithm)

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if self.pool is None or view.nbytes < OVERLAP_MIN_BYTES:
            self.hash.update(view)
            return self.f.write(view)
        pending = self.pool.submit(self.hash.update, view)
        try:
            return self.f.write(view)
        finally:
            pending.result()  # the buffer belongs to the caller once this returns

    def flush(self) -> None:
        self.f.flush()

    def digest(self) -> str:
        return f"{self.algorithm}:{self.hash.hexdigest()}"


class DigestBook:
    """The digests of the files one process wrote into a checkpoint folder being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.digests: dict[str, str] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ckpt-hash")

    def save(self, obj: Any, path: str | os.PathLike, **kwargs: Any) -> None:
        """``torch.save(obj, path)``, hashing the bytes on their way to the file."""
        path = Path(path)
        try:
            with open(path, "wb") as f:
                writer = HashingWriter(f, self._pool)
                torch.save(obj, writer, **kwargs)
        except Exception as exc:
            # torch's writer, closing after a failed write, fails again with a RuntimeError
            # that hides the OSError (ENOSPC, EIO) it comes from
            cause = _os_error(exc)
            if cause is None:
                raise
            cause.filename = cause.filename or str(path)  # a failed write() names no file
            raise cause from None
        self.digests[path.relative_to(self.root).as_posix()] = writer.digest()

    def dump(self, rank: int) -> None:
        """Leave this rank's digests in the folder for rank 0 to gather into the manifest."""
        self._pool.shutdown()
        (self.root / _RANK_DIGESTS.format(rank)).write_text(json.dumps(self.digests))

    def close(self) -> None:
        self._pool.shutdown()


def _os_error(exc: BaseException | None) -> OSError | None:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def gather_digests(root: Path, world: int) -> dict[str, str]:
    """Every rank's digests (their files removed); files no rank hashed are read back and hashed
    (what a library wrote on its own, e.g. a script DeepSpeed copies beside its shards)."""
    digests: dict[str, str] = {}
    for rank in range(world):
        part = root / _RANK_DIGESTS.format(rank)
        if part.is_file():
            digests.update(json.loads(part.read_text()))
            part.unlink()
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_file() and name not in digests:
            digests[name] = file_digest(path)
    return digests


def file_digest(path: Path, algorithm: str = ALGORITHM) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def files_loaded_by(manifest: Mapping[str, Any], rank: int) -> list[str]:
    """The checkpoint files rank ``rank`` reads on resume: its RNG/stream file, the training
    state, the full weights (plain torch) or its own ZeRO shards and the shared DeepSpeed files."""
    files = manifest.get("files", {})
    shard = re.compile(r"zero_pp_rank_(\d+)_")  # also bf16_zero_pp_rank_<r>_...
    own = {f"rank_{rank}.pt", "train_state.pt"} | (set() if manifest.get("deepspeed") else {"model.pt"})
    wanted = []
    for name in files:
        if name in own:
            wanted.append(name)
        elif name.startswith("deepspeed/") and name.endswith(".pt"):
            match = shard.search(name)
            if match is None or int(match.group(1)) == rank:
                wanted.append(name)
    return sorted(wanted)


def verify(ckpt: Path, manifest: Mapping[str, Any], names: Iterable[str]) -> None:
    """Raise ``CheckpointCorrupt`` for the first of ``names`` whose content differs from the
    manifest's digest (checkpoints written before digests were recorded pass unchecked)."""
    digests = manifest.get(DIGESTS_KEY) or {}
    for name in names:
        expected = digests.get(name)
        if expected is None:
            continue
        algorithm = expected.split(":", 1)[0]
        if file_digest(ckpt / name, algorithm) != expected:
            raise CheckpointCorrupt(f"{ckpt / name} (step {manifest.get('step')}) fails its content hash: "
                                    "the file changed after it was written", ckpt / name)


def load(path: Path, step: Any = None, **kwargs: Any) -> Any:
    """``torch.load`` whose failure (a file that does not unpickle) names the file and step."""
    try:
        return torch.load(path, **kwargs)
    except Exception as exc:  # pickle, zip and tensor errors alike: the file is unusable
        raise CheckpointCorrupt(f"{path} (step {step}) cannot be read: {type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", path) from None


def write_error(target: Path, exc: OSError) -> CheckpointWriteError:
    """One line: which file could not be written and why (``ENOSPC``, ``EIO``...)."""
    where = exc.filename or target
    code = errno_codes.errorcode.get(exc.errno or 0, "?")
    return CheckpointWriteError(f"cannot write checkpoint {target}: {where}: {exc.strerror or exc} "
                                f"(errno {exc.errno} {code}); the partial checkpoint was removed: free "
                                "space or fix the disk, then run the stage again (it resumes from the "
                                "last complete checkpoint)")
