"""Restoring a stream by seeking: exact continuation across shard boundaries and from a buffer of
several shards, no re-reading of what came before, the replay fallback, and far positions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from scaling.data import DataError
from scaling.data.masking import BlockMaskGenerator
from scaling.data.shards import ShardStream
from scaling.data.simulate import simulate
from scaling.data.synth import write_world
from scaling.data.tario import SHARD_END
from scaling.data.tokenizer import get_tokenizer
from scaling.data.transforms import train_transform


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("resume")
    return [str(p) for p in write_world(out, samples=120, image_size=16, seed=2, shard_size=30)]


def _stream(urls, **kw):
    base = dict(batch_size=4, transform=train_transform(16), seed=7, shuffle_buffer=20,
                tokenizer=get_tokenizer(16), mask_generator=BlockMaskGenerator((4, 4)))
    return ShardStream(urls, **(base | kw))


def _take(stream, n: int) -> list[dict]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["key"] == y["key"] and all(torch.equal(x[k], y[k]) for k in ("image", "text", "mask"))
        for x, y in zip(a, b, strict=True)
    )


def _resume(urls, state, n, **kw):
    resumed = _stream(urls, **kw)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as through a checkpoint file
    return _take(resumed, n), resumed


@pytest.mark.parametrize("batch_size,k", [(5, 6), (4, 7)])
def test_resume_across_a_shard_boundary(shards, batch_size, k):
    """In file order (no shuffle): stopped exactly at a shard's end (6 x 5 = 30), and one batch
    before a batch that spans two shards (7 x 4 = 28)."""
    kw = dict(batch_size=batch_size, shuffle_buffer=0, resampled=False, epochs=1)
    whole = _take(_stream(shards, **kw), k + 3)
    first = _stream(shards, **kw)
    head = _take(first, k)
    seek = first.state_dict()["workers"][0]["seek"]
    assert seek is not None and seek["buffer"] == []
    if batch_size * k == 30:
        assert seek["shard"][1] == SHARD_END and seek["shard"][2] == 30
    tail, resumed = _resume(shards, first.state_dict(), 3, **kw)
    assert _same(head + tail, whole)
    assert len({b for t in tail for b in t["key"]} & {b for h in head for b in h["key"]}) == 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_with_the_buffer_full_of_samples_from_several_shards(shards, num_workers):
    kw = dict(shuffle_buffer=50, resampled=True, num_workers=num_workers)  # 50 > 30 per shard
    k, more = 9, 6
    whole = _take(_stream(shards, **kw), k + more)
    first = _stream(shards, **kw)
    head = _take(first, k)
    state = first.state_dict()
    for w in state["workers"]:
        assert len(w["seek"]["buffer"]) == 49
        assert len({u for u, _ in w["seek"]["buffer"]}) >= 2
    tail, resumed = _resume(shards, state, more, **kw)
    assert _same(head + tail, whole)
    assert resumed.stats()["samples"] == (k + more) * 4


def test_restore_does_not_read_what_came_before(shards, tmp_path):
    """Shards that the saved position no longer needs are overwritten with garbage: the
    restored stream never reads them (a replay would count them as bad data)."""
    copies = []
    for url in shards:
        copies.append(tmp_path / Path(url).name)
        copies[-1].write_bytes(Path(url).read_bytes())
    urls = [str(p) for p in copies]
    kw = dict(shuffle_buffer=10, resampled=False, epochs=1)
    whole = _take(_stream(urls, **kw), 30)
    first = _stream(urls, **kw)
    head = _take(first, 20)  # 80 of 120 samples
    state = first.state_dict()
    seek = state["workers"][0]["seek"]
    needed = {seek["shard"][0]} | {u for u, _ in seek["buffer"]}
    delivered = {int(key) for batch in head for key in batch["key"]}
    done = [u for u in range(len(copies))  # 30 samples a shard, keys are sample indices
            if u not in needed and set(range(30 * u, 30 * u + 30)) <= delivered]
    for u in done:
        copies[u].write_bytes(b"\xff" * copies[u].stat().st_size)
    assert done
    tail, resumed = _resume(urls, state, 10, **kw)
    assert _same(head + tail, whole)
    assert resumed.stats()["skipped"] == 0


def test_a_position_in_version_1_is_restored_by_replay(shards):
    kw = dict(shuffle_buffer=50)
    whole = _take(_stream(shards, **kw), 10)
    first = _stream(shards, **kw)
    head = _take(first, 6)
    old = first.state_dict()
    old["version"] = 1
    for w in old["workers"]:
        del w["seek"]
    with pytest.warns(UserWarning, match="replaying 24 samples.*version 1"):
        tail, _ = _resume(shards, old, 4, **kw)
    assert _same(head + tail, whole)
    old["version"] = 7
    with pytest.raises(DataError, match="version 7"):
        _stream(shards, **kw).load_state_dict(old)


def test_shards_that_cannot_seek_are_restored_by_replay_with_one_warning(shards):
    pipes = [f"pipe:cat {url}" for url in shards]
    whole = _take(_stream(pipes), 8)
    first = _stream(pipes)
    head = _take(first, 5)
    assert first.state_dict()["workers"][0]["seek"] is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tail, _ = _resume(pipes, first.state_dict(), 3)
    shown = [w for w in caught if "replaying" in str(w.message)]
    assert len(shown) == 1 and "cannot seek" in str(shown[0].message)
    assert _same(head + tail, whole)


def test_a_changed_shard_is_a_clear_error(shards, tmp_path):
    copies = []
    for url in shards:
        copies.append(tmp_path / Path(url).name)
        copies[-1].write_bytes(Path(url).read_bytes())
    first = _stream([str(p) for p in copies], shuffle_buffer=50)
    _take(first, 3)
    for p in copies:
        p.write_bytes(b"\x01" * 1024)
    resumed = _stream([str(p) for p in copies], shuffle_buffer=50)
    resumed.load_state_dict(first.state_dict())
    with pytest.raises(DataError, match="changed since it was saved"):
        next(iter(resumed))


@pytest.mark.parametrize("resampled", [True, False])
def test_simulated_position_is_the_real_one(shards, resampled):
    kw = dict(shuffle_buffer=50, resampled=resampled)
    k, more = 11, 3
    whole = _take(_stream(shards, **kw), k + more)
    real = _stream(shards, **kw)
    _take(real, k)
    made = simulate(_stream(shards, **kw), k * 4)
    assert json.loads(json.dumps(made)) == json.loads(json.dumps(real.state_dict()))
    tail, _ = _resume(shards, made, more, **kw)
    assert _same(whole[k:], tail)
