"""Cost of the checkpoint content hash: a real-size CLIP state dict (B16, L14 towers at random
init, fp32) written with ``torch.save`` as a stage writes it, without and with the hash.

    python benchmarks/bench_checkpoint_hash.py                    # B16 and L14
    python benchmarks/bench_checkpoint_hash.py --rungs B16 --repeats 5 --dir /scratch/x

Sides, interleaved: ``plain`` (``torch.save`` into an open file), ``sha256`` (the toolkit's
``DigestBook.save``: SHA-256 taken in a second thread while the main thread writes),
``blake2b`` (the same writer with BLAKE2b) and ``sha256-inline`` (hashed in the writing thread).
Printed: each hashed side's extra time as a fraction of the plain write, and the hash alone
(one thread over the same bytes in memory) as a fraction of the plain write. Files go to
``--dir`` (default: a temporary folder) without fsync, as a checkpoint's are.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from pathlib import Path

import torch
from common import (
    add_common_args,
    check_common_args,
    interleaved,
    machine,
    median,
    print_header,
    print_timings,
    set_threads,
    write_json,
)

from scaling.models.build import build_clip
from scaling.models.registry import get_rung
from scaling.train.integrity import DigestBook, HashingWriter


def state_dict(rung: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_clip(get_rung(rung))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hash_alone(data: bytes, algorithm: str) -> float:
    h = hashlib.new(algorithm)
    view = memoryview(data)
    start = time.perf_counter()
    for i in range(0, len(view), 16 << 20):
        h.update(view[i:i + (16 << 20)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rungs", nargs="+", default=["B16", "L14"])
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temp folder)")
    add_common_args(parser, repeats=5, warmup=1)
    args = parser.parse_args()
    check_common_args(parser, args)
    threads = set_threads(args.threads)
    results = {"machine": machine(), "threads": threads, "rungs": {}}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        root = Path(folder)
        for rung in args.rungs:
            sd = state_dict(rung)
            nbytes = sum(t.numel() * t.element_size() for t in sd.values())
            book = DigestBook(root)

            def plain(sd=sd):
                with open(root / "plain.pt", "wb") as f:
                    torch.save(sd, f)

            def writer(algorithm, pool, sd=sd, book=book):
                def save():
                    with open(root / f"{algorithm}.pt", "wb") as f:
                        torch.save(sd, HashingWriter(f, pool, algorithm))
                return save

            sides = {"plain": plain, "sha256": lambda sd=sd, book=book: book.save(sd, root / "sha256.pt"),
                     "blake2b": writer("blake2b", book._pool), "sha256-inline": writer("sha256", None)}
            times = interleaved(sides, args.repeats, args.warmup)
            book.close()
            buffer = io.BytesIO()
            torch.save(sd, buffer)
            data = buffer.getvalue()
            alone = {a: median([hash_alone(data, a) for _ in range(3)]) for a in ("sha256", "blake2b")}
            base = median(times["plain"])
            print_header(f"checkpoint hash, {rung} CLIP state dict", {
                "bytes": f"{len(data) / 1e9:.2f} GB ({nbytes / 1e9:.2f} GB of tensors)",
                "threads": threads, "dir": root})
            print_timings(times)
            row = {"bytes": len(data), "plain_s": base}
            for side in ("sha256", "blake2b", "sha256-inline"):
                extra = median(times[side]) / base - 1
                row[f"{side}_extra_fraction"] = extra
                print(f"   {side:<14} extra time / plain write: {extra:+.1%}")
            for algorithm, seconds in alone.items():
                row[f"{algorithm}_alone_fraction"] = seconds / base
                print(f"   {algorithm} alone ({len(data) / seconds / 1e9:.2f} GB/s) / plain write: "
                      f"{seconds / base:.1%}")
            results["rungs"][rung] = row | {"timings": {k: list(v) for k, v in times.items()}}
            for name in sides:
                (root / f"{name}.pt").unlink(missing_ok=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
