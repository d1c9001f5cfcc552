"""ShardStream: batches, determinism, exact resume, rank/worker splits, and every kind of bad data."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scaling.data import DataError
from scaling.data.masking import BlockMaskGenerator
from scaling.data.shards import ShardStream
from scaling.data.synth import write_world
from scaling.data.tario import BadDataWarning
from scaling.data.tokenizer import get_tokenizer
from scaling.data.transforms import normalize_on_device, train_transform


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, samples=120, image_size=16, seed=1, shard_size=30)
    return str(out / "train-{000000..000003}.tar")


def _png(color=(200, 30, 30), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _write_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _good(prefix: str, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        out += [
            (f"{prefix}{i:03d}.png", _png()),
            (f"{prefix}{i:03d}.txt", f"caption {prefix}{i}".encode()),
            (f"{prefix}{i:03d}.json", b"{}"),
        ]
    return out


def _all(stream) -> list[dict]:
    return list(stream)


def _keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def _same(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x["key"] != y["key"] or not torch.equal(x["image"], y["image"]):
            return False
        for k in ("text", "mask"):
            if (k in x) != (k in y) or (k in x and not torch.equal(x[k], y[k])):
                return False
    return True


def _stream(pattern, **kw):
    base = dict(batch_size=4, transform=train_transform(16), seed=5, shuffle_buffer=20)
    return ShardStream(pattern, **(base | kw))


def _take(stream, n: int) -> list[dict]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_batches_have_the_documented_fields(world):
    s = _stream(world, tokenizer=get_tokenizer(24), mask_generator=BlockMaskGenerator((4, 4)))
    b = _take(s, 1)[0]
    assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.float32
    assert b["text"].shape == (4, 24) and b["text"].dtype == torch.long
    assert b["mask"].shape == (4, 16) and b["mask"].dtype == torch.bool
    assert b["mask"].sum(1).tolist() == [6] * 4  # round(0.4 * 16)
    assert len(b["key"]) == 4 and len(b["caption"]) == 4
    assert s.stats()["samples"] == 4 and s.stats()["skipped"] == 0


def test_same_seed_same_stream_other_seed_other_stream(world):
    a = _take(_stream(world, mask_generator=BlockMaskGenerator((4, 4))), 6)
    b = _take(_stream(world, mask_generator=BlockMaskGenerator((4, 4))), 6)
    c = _take(_stream(world, seed=6), 6)
    assert _same(a, b)
    assert _keys(a) != _keys(c)


class _PerImage:
    """The toolkit's crop without its batch half: the stream's per-image path."""

    accepts_rng = True

    def __init__(self, size: int) -> None:
        self.inner = train_transform(size)

    def __call__(self, img, rng):
        return self.inner(img, rng=rng)


def test_batched_transform_gives_the_per_image_batches(world):
    """Decoding with OpenCV, augmenting a chunk at a time and normalising the whole batch
    give the same batches as PIL decoding and normalising image by image."""
    fast = _take(_stream(world, mask_generator=BlockMaskGenerator((4, 4))), 6)
    slow = _take(_stream(world, transform=_PerImage(16), mask_generator=BlockMaskGenerator((4, 4))), 6)
    assert _same(fast, slow)


@pytest.mark.parametrize("workers", [0, 2])
def test_uint8_batches_normalised_by_the_consumer_are_the_float_batches(world, workers):
    """A stage's stream ships uint8 (normalised on the device): the same batches, bit for bit."""
    kw = dict(tokenizer=get_tokenizer(24), mask_generator=BlockMaskGenerator((4, 4)), num_workers=workers)
    floats = _take(_stream(world, **kw), 6)
    raw = _take(_stream(world, transform=train_transform(16, normalize=False), **kw), 6)
    assert all(b["image"].dtype == torch.uint8 and b["image"].is_contiguous() for b in raw)
    assert _same(floats, [b | {"image": normalize_on_device(b["image"])} for b in raw])


def test_pinning_passes_the_position_record_through_whole(world):
    """The loader's pin step walks every list it is given; a batch's position record (the
    shuffle buffer's [shard, offset] pairs) is handed over as it is."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from scaling.data.stream import WorkerStream

    s = _stream(world, shuffle_buffer=20)
    meta = next(WorkerStream(s.cfg, 0, None).batches())["__meta__"]
    assert len(meta["seek"]["buffer"]) > 10 and pin_memory(meta) is meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_pinned_batches_are_the_same_batches(world):
    kw = dict(transform=train_transform(16, normalize=False), num_workers=2)
    pinned = _take(_stream(world, pin_memory=True, **kw), 4)
    assert all(b["image"].is_pinned() for b in pinned)
    assert _same(pinned, _take(_stream(world, **kw), 4))


def test_stream_leaves_the_global_rngs_alone(world):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _take(_stream(world), 3)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("resampled", [True, False])
def test_restored_stream_continues_exactly(world, resampled):
    kw = dict(
        tokenizer=get_tokenizer(16), mask_generator=BlockMaskGenerator((4, 4)), resampled=resampled
    )
    k, more = 7, 9
    uninterrupted = _take(_stream(world, **kw), k + more)

    first = _stream(world, **kw)
    head = _take(first, k)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
    resumed = _stream(world, **kw)
    resumed.load_state_dict(state)
    tail = _take(resumed, more)
    assert _same(head + tail, uninterrupted)
    assert resumed.stats()["samples"] == (k + more) * 4


def test_restored_stream_with_loader_workers_continues_exactly(world):
    kw = dict(num_workers=2, resampled=True)
    k, more = 3, 4  # k odd: the next batch comes from worker 1
    uninterrupted = _take(_stream(world, **kw), k + more)
    first = _stream(world, **kw)
    head = _take(first, k)
    resumed = _stream(world, **kw)
    resumed.load_state_dict(first.state_dict())
    assert _same(head + _take(resumed, more), uninterrupted)


def test_position_from_other_settings_is_refused(world):
    state = _stream(world).state_dict()
    with pytest.raises(DataError, match="batch_size"):
        _stream(world, batch_size=8).load_state_dict(state)


def test_one_epoch_reads_every_sample_once_split_by_rank_and_worker(world):
    keys = _keys(_all(_stream(world, resampled=False, epochs=1)))
    assert sorted(keys) == [f"{i:09d}" for i in range(120)]
    r0 = _keys(_all(_stream(world, resampled=False, epochs=1, rank=0, world_size=2)))
    r1 = _keys(_all(_stream(world, resampled=False, epochs=1, rank=1, world_size=2)))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == sorted(keys)
    workers = _keys(_all(_stream(world, resampled=False, epochs=1, num_workers=2)))
    assert sorted(workers) == sorted(keys)


def test_resampled_ranks_draw_different_samples(world):
    r0 = _keys(_take(_stream(world, rank=0, world_size=2), 5))
    r1 = _keys(_take(_stream(world, rank=1, world_size=2), 5))
    assert r0 != r1


def test_patterns_globs_and_lists(world, tmp_path):
    folder = world.rsplit("/", 1)[0]
    assert len(_stream(f"{folder}/train-*.tar").urls) == 4
    assert len(_stream([f"{folder}/train-000000.tar", f"{folder}/train-000001.tar"]).urls) == 2
    with pytest.raises(DataError, match=r"nothing-\{0..3\}\.tar"):
        _stream(str(tmp_path / "nothing-{0..3}.tar"))
    with pytest.raises(DataError, match="missing-\\*"):
        _stream(str(tmp_path / "missing-*.tar"))
    with pytest.raises(DataError, match="1 of 5 files"):
        _stream(f"{folder}/train-{{000000..000004}}.tar")


def test_too_few_shards_for_the_split_is_an_error(world):
    folder = world.rsplit("/", 1)[0]
    with pytest.raises(DataError, match="fewer than world_size"):
        _stream(f"{folder}/train-000000.tar", resampled=False, world_size=2)


# --- bad data ---------------------------------------------------------------------------------


def _record_samples(prefix: str, n: int) -> list[tuple[str, bytes]]:
    """Samples of exactly one tar record each (20 blocks): the caption padded with spaces."""
    image = _png()
    blocks = 3 + -(-len(image) // tarfile.BLOCKSIZE) + 1  # 3 headers, the image, the json
    caption_bytes = (tarfile.RECORDSIZE // tarfile.BLOCKSIZE - blocks) * tarfile.BLOCKSIZE
    out = []
    for i in range(n):
        caption = f"caption {prefix}{i}".encode().ljust(caption_bytes)
        out += [(f"{prefix}{i:03d}.png", image), (f"{prefix}{i:03d}.txt", caption),
                (f"{prefix}{i:03d}.json", b"{}")]
    return out


@pytest.fixture()
def bad_shards(tmp_path):
    """One good shard (5 samples) and one shard per kind of bad data, with known counts."""
    good = _write_tar(tmp_path / "good.tar", _good("g", 5))
    # truncated: 4 whole samples, then the 5th's image cut short, then nothing
    full = _write_tar(tmp_path / "full.tar", _good("t", 8))
    with tarfile.open(full) as tar:
        cut = next(m for m in tar.getmembers() if m.name == "t004.png").offset_data + 10
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(Path(full).read_bytes()[:cut])
    # cut at a 10240-byte record: each sample fills one record, 16 of 20 survive whole
    records = tmp_path / "records.tar"
    _write_tar(records, _record_samples("r", 20))
    cut_at_record = tmp_path / "cut_at_record.tar"
    cut_at_record.write_bytes(records.read_bytes()[: 16 * tarfile.RECORDSIZE])
    cut_gz = tmp_path / "cut_at_record.tar.gz"
    cut_gz.write_bytes(gzip.compress(cut_at_record.read_bytes()))
    undecodable = _write_tar(
        tmp_path / "undecodable.tar",
        _good("u", 2)
        + [("u100.png", b"\x89PNG this is not an image"), ("u100.txt", b"broken image")],
    )
    no_caption = _write_tar(
        tmp_path / "nocaption.tar",
        _good("n", 1)
        + [("n100.png", _png()), ("n100.json", b"{}"), ("n101.png", _png()), ("n101.json", b"{}")],
    )
    empty = _write_tar(tmp_path / "empty.tar", [])
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    non_utf8 = _write_tar(
        tmp_path / "latin1.tar",
        _good("l", 3) + [("l100.png", _png()), ("l100.txt", "caf\xe9 cr\xe8me".encode("latin-1"))],
    )
    return {
        "good": (good, 5, 0),
        "truncated": (str(truncated), 4, 1),
        "cut_at_record": (str(cut_at_record), 16, 1),
        "cut_gz": (str(cut_gz), 16, 1),
        "undecodable": (undecodable, 2, 1),
        "no_caption": (no_caption, 1, 2),
        "empty": (empty, 0, 1),
        "zero": (str(zero), 0, 1),
        "non_utf8": (non_utf8, 3, 1),
    }


@pytest.mark.parametrize(
    "case", ["truncated", "cut_at_record", "cut_gz", "undecodable", "no_caption", "empty", "zero", "non_utf8"]
)
def test_bad_data_is_skipped_counted_and_warned_once_per_shard(bad_shards, case):
    good, n_good, _ = bad_shards["good"]
    bad, n_ok, n_skipped = bad_shards[case]
    s = ShardStream([good, bad], batch_size=3, resampled=False, epochs=1, shuffle_buffer=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = _keys(_all(s))
    assert len(keys) == n_good + n_ok
    stats = s.stats()
    assert stats["skipped"] == n_skipped
    assert stats["skipped_by_shard"] == {bad: n_skipped}
    assert stats["samples"] == n_good + n_ok
    shown = [w for w in caught if issubclass(w.category, BadDataWarning)]
    assert len(shown) == 1 and bad in str(shown[0].message)


def test_all_bad_kinds_together_are_counted_per_shard(bad_shards):
    urls = [v[0] for v in bad_shards.values()]
    s = ShardStream(urls, batch_size=4, resampled=False, epochs=1, shuffle_buffer=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadDataWarning)
        keys = _keys(_all(s))
    assert len(keys) == sum(v[1] for v in bad_shards.values())
    assert s.stats()["skipped"] == sum(v[2] for v in bad_shards.values())
    assert s.stats()["skipped_by_shard"] == {v[0]: v[2] for v in bad_shards.values() if v[2]}


def test_restore_keeps_the_skip_counters(bad_shards):
    urls = [v[0] for v in bad_shards.values()]
    kw = dict(batch_size=2, resampled=True, shuffle_buffer=5, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadDataWarning)
        whole = ShardStream(urls, **kw)
        _take(whole, 12)
        first = ShardStream(urls, **kw)
        _take(first, 5)
        resumed = ShardStream(urls, **kw)
        resumed.load_state_dict(first.state_dict())
        _take(resumed, 7)
    assert resumed.stats() == whole.stats()
    assert whole.stats()["skipped"] > 0


@pytest.mark.parametrize("resampled", [True, False])
def test_no_usable_sample_fails_fast_naming_the_path(bad_shards, tmp_path, resampled):
    urls = [bad_shards["empty"][0], bad_shards["zero"][0]]
    s = ShardStream(urls, batch_size=2, resampled=resampled, shuffle_buffer=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadDataWarning)
        with pytest.raises(DataError, match="no usable sample.*empty.tar"):
            next(iter(s))


def test_only_undecodable_images_fails_fast(tmp_path):
    members = []
    for i in range(6):
        members += [(f"x{i}.jpg", b"not a jpeg"), (f"x{i}.txt", b"caption")]
    bad = _write_tar(tmp_path / "broken.tar", members)
    s = ShardStream(bad, batch_size=2, resampled=True, shuffle_buffer=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadDataWarning)
        with pytest.raises(DataError, match="no usable sample.*broken.tar"):
            next(iter(s))


def test_masks_in_batches_are_reproducible_per_sample(world):
    gen = BlockMaskGenerator((4, 4), mask_ratio=0.5)
    a = _take(_stream(world, mask_generator=gen), 2)
    assert all(int(m.sum()) == 8 for b in a for m in b["mask"])
    masks = np.stack([m.numpy() for b in a for m in b["mask"]])
    assert len({m.tobytes() for m in masks}) > 1  # not one mask repeated


@pytest.mark.parametrize(
    "fmt,mode",
    [(tarfile.PAX_FORMAT, "w"), (tarfile.GNU_FORMAT, "w"), (tarfile.USTAR_FORMAT, "w:gz")],
)
def test_tar_formats_long_names_and_compression(tmp_path, fmt, mode):
    folder = "d" * (120 if fmt != tarfile.USTAR_FORMAT else 20)
    path = tmp_path / "shard.tar"
    with tarfile.open(path, mode, format=fmt) as tar:
        for name, data in [
            (f"{folder}/k1.png", _png()),
            (f"{folder}/k1.txt", "café".encode()),
            ("k2.png", _png()),
            ("k2.txt", b"second"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    batches = _all(
        ShardStream(str(path), batch_size=4, resampled=False, epochs=1, shuffle_buffer=0)
    )
    assert _keys(batches) == [f"{folder}/k1", "k2"]
    assert batches[0]["caption"] == ["café", "second"]


def test_wrong_image_extension_still_decodes(tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(jpeg, format="JPEG")
    path = _write_tar(tmp_path / "s.tar", [("a.png", jpeg.getvalue()), ("a.txt", b"green")])
    batch = _all(ShardStream(path, batch_size=1, resampled=False, epochs=1, shuffle_buffer=0))[0]
    assert batch["key"] == ["a"] and batch["image"].shape == (1, 3, 8, 8)


def test_restore_of_a_finite_stream_with_workers_reads_the_rest_once(world):
    kw = dict(resampled=False, epochs=1, num_workers=2, batch_size=8)
    whole = _keys(_all(_stream(world, **kw)))
    first = _stream(world, **kw)
    head = _keys(_take(first, 6))
    resumed = _stream(world, **kw)
    resumed.load_state_dict(first.state_dict())
    assert head + _keys(_all(resumed)) == whole
    assert resumed.stats()["samples"] == 120


def test_shards_going_bad_while_streaming_stop_the_stream(tmp_path):
    urls = [_write_tar(tmp_path / f"s{i}.tar", _good(f"s{i}_", 4)) for i in range(3)]
    s = ShardStream(urls, batch_size=2, shuffle_buffer=0)
    it = iter(s)
    next(it)
    for url in urls:  # replaced by empty tars under a running stream
        _write_tar(url, [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadDataWarning)
        with pytest.raises(DataError, match="no usable sample.*shard reads"):
            for _ in it:
                pass


def test_a_deleted_shard_is_an_error_naming_it(tmp_path):
    urls = [_write_tar(tmp_path / f"s{i}.tar", _good(f"s{i}_", 2)) for i in range(2)]
    s = ShardStream(urls, batch_size=1, shuffle_buffer=0, resampled=False, epochs=1)
    it = iter(s)
    next(it)
    Path(urls[1]).unlink()
    with pytest.raises(DataError, match="s1.tar no longer exists"):
        list(it)
