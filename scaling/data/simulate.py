"""A stream's position after ``samples`` samples, computed from shard indices without reading images.

Benchmarks and tests use it to reach far positions in constant time and check them against the
streamed ``state_dict()`` (``scaling.data.position`` holds the position's format).
"""

from __future__ import annotations

from scaling.data.position import SEEK_VERSION, rng_state
from scaling.data.stream import WorkerStream
from scaling.data.tario import ShardStats, read_shard


def _index(url: str) -> list[tuple[int, int]]:
    """(offset, next) of every good sample of a shard, in order."""
    return [(s["offset"], s["next"]) for s in read_shard(url, ShardStats(quiet=True))]


def simulate(stream, samples: int, worker: int = 0) -> dict:
    """The state ``stream.state_dict()`` would give after ``samples`` samples of worker
    ``worker`` (no loader workers: ``num_workers`` 0), computed by drawing shards and shuffling
    (shard, offset) pairs instead of reading images. For clean, seekable local shards (every
    sample decodes) and a multiple of the batch size; about a microsecond a sample."""
    cfg = stream.cfg
    if cfg.num_workers != 0 or samples % cfg.batch_size:
        raise ValueError("simulate: num_workers must be 0 and samples a multiple of batch_size")
    ws = WorkerStream(cfg, worker, None)
    order, rng, size = ws.order, ws.shuffle_rng, cfg.shuffle_buffer
    indices: dict[int, list[tuple[int, int]]] = {}
    buf: list[tuple[int, int]] = []
    cursor: list[int] | None = None
    pos = raw = 0
    while pos < samples:
        drawn = order.draw()
        if drawn is None:
            raise ValueError(f"simulate: the stream ends before {samples} samples")
        u = drawn[0]
        if u not in indices:
            indices[u] = _index(cfg.urls[u])
        for k, (offset, nxt) in enumerate(indices[u], start=1):
            raw += 1
            cursor = [u, nxt, k]
            if rng is None:
                pos += 1
            else:
                buf.append((u, offset))
                if len(buf) < size:
                    continue
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                buf.pop()
                pos += 1
            if pos == samples:
                break
    state = stream.state_dict()
    state["batches"] = samples // cfg.batch_size
    state["workers"][worker] = {
        "pos": pos,
        "stats": {"skipped_by_shard": {}, "samples": pos, "warned": []},
        "seek": {
            "version": SEEK_VERSION, "order": order.state(), "shard": cursor,
            "buffer": [list(r) for r in buf], "shuffle": rng_state(rng),
            "raw_good": raw, "barren": 0,
        },
    }
    return state
