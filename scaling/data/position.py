"""Where one (rank, loader worker) stream is, in a form that restores in constant time.

A worker's position after a batch is: the state of its shard order (the seeded generator of the
resampled draws, or the epoch and index into its share of the epoch's permutation), the byte
offset reached in the shard being read, the (shard, byte offset) of every sample in the shuffle
buffer, in buffer order, and the shuffle generator's state. Restoring opens the current shard at
its offset and reads the buffered samples back at theirs: the cost of one buffer refill, however
many samples came before. ``scaling.data.simulate`` computes the same position from shard indices
alone, without reading images (benchmarks and tests use it to reach far positions).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from scaling.data.tario import SHARD_END, read_samples_at

SEEK_VERSION = 1


class ShardOrder:
    """The shards one worker reads, in order; ``state()``/``load()`` in O(1) of the draws made."""

    def __init__(self, cfg, worker: int, workers: int) -> None:
        self.cfg, self.n = cfg, len(cfg.urls)
        self.draws = 0
        if cfg.resampled:
            self.rng = np.random.default_rng([cfg.seed, cfg.rank, worker, 0])
        else:
            self.slot, self.slots = cfg.rank * workers + worker, cfg.world_size * workers
            self.epoch, self.i = 0, 0
            self.mine = self._share(0)

    def _share(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.cfg.seed, 1, epoch]).permutation(self.n)
        return perm[self.slot :: self.slots]

    def draw(self) -> tuple[int, int] | None:
        """(shard index, size of the pool it came from), or None when the epochs are done."""
        self.draws += 1
        if self.cfg.resampled:
            return int(self.rng.integers(self.n)), self.n
        while self.cfg.epochs is None or self.epoch < self.cfg.epochs:
            if self.i < len(self.mine):
                self.i += 1
                return int(self.mine[self.i - 1]), len(self.mine)
            self.epoch, self.i = self.epoch + 1, 0
            self.mine = self._share(self.epoch)
        return None

    @property
    def pool(self) -> int:
        return self.n if self.cfg.resampled else len(self.mine)

    def state(self) -> dict:
        if self.cfg.resampled:
            bg = self.rng.bit_generator.state
            # 128-bit integers as strings: exact through any JSON reader
            return {"draws": self.draws, "pcg64": [str(bg["state"]["state"]), str(bg["state"]["inc"]),
                                                   int(bg["has_uint32"]), int(bg["uinteger"])]}
        return {"draws": self.draws, "epoch": self.epoch, "i": self.i}

    def load(self, state: dict) -> None:
        self.draws = int(state["draws"])
        if self.cfg.resampled:
            s, inc, has32, u32 = state["pcg64"]
            self.rng.bit_generator.state = {
                "bit_generator": "PCG64", "state": {"state": int(s), "inc": int(inc)},
                "has_uint32": int(has32), "uinteger": int(u32),
            }
        else:
            self.epoch, self.i = int(state["epoch"]), int(state["i"])
            self.mine = self._share(self.epoch)


def rng_state(rng: random.Random | None) -> list | None:
    if rng is None:
        return None
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def load_rng(rng: random.Random | None, state: list | None) -> None:
    if rng is not None and state is not None:
        rng.setstate((state[0], tuple(state[1]), state[2]))


def buffer_refs(buf: Sequence[dict]) -> list[list[int]] | None:
    """[[shard index, byte offset], ...] of the buffered samples, None if one cannot be sought."""
    refs = [[s["u"], s["offset"]] for s in buf]
    return None if any(o is None for _, o in refs) else refs


def read_buffer(urls: Sequence[str], refs: Sequence[Sequence[int]]) -> list[dict]:
    """The buffered samples back from their (shard, offset), in buffer order: one open per
    shard, its offsets read in file order."""
    by_shard: dict[int, list[int]] = defaultdict(list)
    for u, offset in refs:
        by_shard[int(u)].append(int(offset))
    found: dict[tuple[int, int], dict] = {}
    for u, offsets in by_shard.items():
        ordered = sorted(set(offsets))
        for offset, sample in zip(ordered, read_samples_at(urls[u], ordered), strict=True):
            sample["u"] = u
            found[(u, offset)] = sample
    # a sample appears once in a buffer, but copies keep restores safe if a shard repeats a key
    return [dict(found[(int(u), int(o))]) for u, o in refs]


__all__ = ["SHARD_END", "SEEK_VERSION", "ShardOrder", "buffer_refs", "load_rng", "read_buffer",
           "rng_state"]
