"""Batches of image-text pairs from tar shards, reproducible and resumable.

``ShardStream`` reads img2dataset-layout shards (local paths, globs, brace patterns, or remote
URLs through webdataset's ``gopen``), in one of two shard orders:

- ``resampled=True`` (training): each rank and loader worker draws shards with replacement from
  its own seeded generator: an infinite stream, as in open_clip's ``--dataset-resampled``;
- ``resampled=False``: each epoch a seeded permutation of the shards is split between ranks and
  loader workers (``epochs=None`` repeats forever, ``epochs=1`` reads every sample once).

Then a seeded shuffle buffer, decoding, and the transform, the tokenizer and the mask generator.
Every random choice comes from ``seed``: each sample gets its own seeds for torch's CPU
generator and Python's ``random`` while its transform runs (the caller's states are restored
after), and its own numpy generator for its mask. The same arguments give the same batches,
with ``num_workers`` 0 or more (worker batches are interleaved round-robin, in a fixed order).

Position: ``state_dict()`` records, per worker, where it is after the last batch delivered: its
shard order's generator state, the byte offset reached in the shard it reads, the (shard, byte
offset) of every sample in its shuffle buffer, the shuffle generator's state, and the skip
counters (``scaling.data.position``). A new stream given that state seeks there and continues
with exactly the batches the uninterrupted stream would have given, at the cost of re-reading
one shuffle buffer of samples, however many came before. Shards that cannot seek (``pipe:`` and
``http(s)`` URLs, compressed tars) are restored by replaying the raw samples up to the position
without decoding them (re-reading every tar byte consumed; a warning says so), as are positions
saved by version 1 of this format.
"""

from __future__ import annotations

import copy
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import torch

from scaling.data.errors import DataError
from scaling.data.shard_urls import expand_urls
from scaling.data.stream import WorkerStream
from scaling.data.stream_types import StreamConfig

STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 (no seek state) restores by replay


class _WorkerDataset(torch.utils.data.IterableDataset):
    def __init__(self, cfg: StreamConfig, starts: list[dict]) -> None:
        self.cfg, self.starts = cfg, starts

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        return WorkerStream(self.cfg, worker, self.starts[worker]).batches()


class ShardStream:
    """Iterable of batches ``{'image': float[B,3,H,W] (uint8 from a transform built with
    ``normalize=False``), 'text': long[B,L] (with a tokenizer),
    'mask': bool[B,N] (with a mask generator), 'key': list[str], 'caption': list[str]}``.

    Iterating again continues from the current position. See the module docstring for the
    shard order, determinism and the cost of restoring a position.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        batch_size: int,
        transform: Callable | None = None,
        tokenizer: Callable | None = None,
        mask_generator: Callable | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        num_workers: int = 0,
        epochs: int | None = None,
        drop_last: bool = False,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if num_workers < 0 or shuffle_buffer < 0 or (epochs is not None and epochs < 1):
            raise ValueError("num_workers and shuffle_buffer must be >= 0, epochs None or >= 1")
        pattern = urls if isinstance(urls, str) else " ".join(map(str, urls))
        self.cfg = StreamConfig(
            expand_urls(urls),
            pattern,
            batch_size,
            transform,
            tokenizer,
            mask_generator,
            seed,
            rank,
            world_size,
            resampled,
            shuffle_buffer,
            num_workers,
            epochs,
            drop_last,
        )
        # validate the shard split now rather than in a worker process
        WorkerStream(self.cfg, 0, None)
        self._workers = max(num_workers, 1)
        # loader workers' batches copied to page-locked memory by the loader's thread, so that
        # a non_blocking copy to the GPU is asynchronous; the batches do not change
        self.pin_memory = bool(pin_memory)
        self._state: dict = {
            "workers": [{} for _ in range(self._workers)],
            "next_worker": 0,
            "batches": 0,
        }

    @property
    def urls(self) -> list[str]:
        return list(self.cfg.urls)

    def _signature(self) -> dict:
        c = self.cfg
        return {
            "shards": len(c.urls),
            "batch_size": c.batch_size,
            "seed": c.seed,
            "rank": c.rank,
            "world_size": c.world_size,
            "resampled": c.resampled,
            "shuffle_buffer": c.shuffle_buffer,
            "num_workers": c.num_workers,
            "epochs": c.epochs,
        }

    def state_dict(self) -> dict:
        """The position after the last batch delivered (a small, JSON-serialisable dict)."""
        return {"version": STATE_VERSION, "config": self._signature(), **copy.deepcopy(self._state)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by ``state_dict`` of a stream built with the same arguments."""
        if state.get("version") not in READABLE_VERSIONS:
            raise DataError(
                f"stream position has version {state.get('version')!r}; this version of "
                f"scaling.data reads {READABLE_VERSIONS}: resume with the version that saved it, "
                "or start the data afresh"
            )
        saved, mine = state.get("config", {}), self._signature()
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            raise DataError(
                f"stream position was saved with other settings (saved, now): {diff}; "
                "restore it into a stream built with the same arguments"
            )
        self._state = {
            "workers": copy.deepcopy(state["workers"]),
            "next_worker": int(state["next_worker"]),
            "batches": int(state["batches"]),
        }
        replayed = [w for w in self._state["workers"]
                    if w.get("pos") and not w.get("done") and w.get("seek") is None]
        if replayed:
            why = ("it was saved by version 1 of the format" if state["version"] == 1
                   else "some shards cannot seek (remote URL or compressed tar)")
            warnings.warn(
                f"restoring the stream position of {self.cfg.pattern!r} by replaying "
                f"{sum(int(w['pos']) for w in replayed)} samples, as {why}: the restore re-reads "
                "every tar byte consumed so far",
                stacklevel=2,
            )

    def stats(self) -> dict:
        """``{'skipped': int, 'skipped_by_shard': {shard: n}, 'samples': int, 'batches': int}`` up to
        the last batch delivered (the stage logs ``skipped`` as ``train/skipped_samples``)."""
        by_shard: dict[str, int] = {}
        samples = 0
        for w in self._state["workers"]:
            st = w.get("stats", {})
            samples += st.get("samples", 0)
            for name, n in st.get("skipped_by_shard", {}).items():
                by_shard[name] = by_shard.get(name, 0) + n
        return {
            "skipped": sum(by_shard.values()),
            "skipped_by_shard": by_shard,
            "samples": samples,
            "batches": self._state["batches"],
        }

    def __iter__(self) -> Iterator[dict]:
        starts = copy.deepcopy(self._state["workers"])
        if self.cfg.num_workers == 0:
            source: Iterator[dict] = WorkerStream(self.cfg, 0, starts[0]).batches()
        else:
            loader = torch.utils.data.DataLoader(
                _WorkerDataset(self.cfg, starts),
                batch_size=None,
                num_workers=self.cfg.num_workers,
                in_order=True,
                pin_memory=self.pin_memory,
            )
            source = iter(loader)
        yield from self._round_robin(source)
        if self.stats()["samples"] == 0:
            raise DataError(
                f"no usable sample in {self.cfg.pattern!r}: every loader worker ended without "
                f"one ({self.stats()['skipped']} bad items skipped)"
            )

    def _round_robin(self, source: Iterator[dict]) -> Iterator[dict]:
        """Batches in worker order 0, 1, ..., continuing from the saved next worker: the loader's own
        order restarts at worker 0, which would reorder batches after a restore."""
        n = self._workers
        queues: list[deque] = [deque() for _ in range(n)]
        ended = [bool(w.get("done")) for w in self._state["workers"]]
        for batch in source:
            meta = batch.pop("__meta__")
            w = int(meta["worker"])
            if meta.get("end"):
                ended[w] = True
            queues[w].append(meta if meta.get("end") else (batch, meta))
            yield from self._ready(queues, ended)
        yield from self._ready(queues, [True] * n)

    def _ready(self, queues: list[deque], ended: list[bool]) -> Iterator[dict]:
        state = self._state
        while True:
            live = [w for w in range(self._workers) if not state["workers"][w].get("done")]
            if not live:
                return
            w = state["next_worker"]
            if state["workers"][w].get("done"):
                state["next_worker"] = (w + 1) % self._workers
                continue
            if not queues[w]:
                if ended[w]:
                    state["workers"][w]["done"] = True
                    continue
                return  # wait for this worker's next batch
            entry = queues[w].popleft()
            if isinstance(entry, dict):  # the worker's end: keep its final counters
                state["workers"][w] = {"pos": entry["pos"], "stats": entry["stats"], "done": True}
                continue
            batch, meta = entry
            state["workers"][w] = {"pos": meta["pos"], "stats": meta["stats"], "seek": meta["seek"]}
            state["next_worker"] = (w + 1) % self._workers
            state["batches"] += 1
            yield batch
