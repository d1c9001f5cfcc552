"""Real-size parts of ``bench_data.py``: the stream at 224/336/448 px from JPEG and WebP shards
beside an open_clip-style webdataset pipeline, loader-worker scaling, and restore times at far
positions (built with ``scaling.data.simulate``, checked against the real stream)."""

from __future__ import annotations

import functools
import os
import statistics
import time
from pathlib import Path

BATCH = 64
SOURCE = {224: 256, 336: 384, 448: 512}  # img2dataset resizes to a bit more than the crop


def _shards(work: Path, size: int, fmt: str, samples: int) -> str:
    from scaling.data import synth

    folder = work / f"real{size}-{fmt}"
    if not folder.exists():
        paths = synth.write_world(folder, samples, size, seed=0, shard_size=500, image_format=fmt)
    else:
        paths = sorted(folder.glob("*.tar"))
    return synth.shard_pattern(paths)


@functools.cache
def _tokenizer():
    from scaling.data.tokenizer import get_tokenizer

    return get_tokenizer(77)


def toolkit_stream(pattern: str, crop: int, normalize: bool = True, **kw):
    """The stream, normalising (float batches, as open_clip's pipeline gives) or not (uint8
    batches, as a stage's stream ships them to be normalised on the device)."""
    from scaling.data.shards import ShardStream
    from scaling.data.transforms import train_transform

    return ShardStream(pattern, batch_size=BATCH, tokenizer=_tokenizer(), seed=0, shuffle_buffer=1000,
                       transform=train_transform(crop, scale=(0.9, 1.0), normalize=normalize), **kw)


def openclip_stream(pattern: str, crop: int):
    """open_clip's ``get_wds_dataset`` training pipeline, one process: resampled shards, tar
    samples, a 1000-sample shuffle, PIL RGB decode, its train transform and tokenizer, batches."""
    import open_clip
    import webdataset as wds
    from open_clip.transform import image_transform

    preprocess = image_transform(crop, is_train=True)  # RandomResizedCrop (0.9, 1), bicubic, CLIP norm
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    return wds.DataPipeline(
        wds.ResampledShards(pattern, seed=0),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(1000, initial=1000),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
        wds.to_tuple("image", "text"),
        wds.batched(BATCH, partial=False),
    )


def _turns(sides: dict, batches: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Each side's iterator advanced ``batches`` batches per turn, sides in turns (A B A B ...),
    after one warm-up batch (the shuffle buffer's fill); wall and CPU seconds per turn."""
    iters = {name: iter(make()) for name, make in sides.items()}
    for it in iters.values():
        next(it)
    out = {name: {"wall": [], "cpu": []} for name in sides}
    for _ in range(repeats):
        for name, it in iters.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(batches):
                next(it)
            out[name]["wall"].append(time.perf_counter() - t0)
            out[name]["cpu"].append(time.process_time() - c0)
    return out


def bench_vs_openclip(work: Path, sizes: list[int], samples: int, batches: int, repeats: int) -> list[dict]:
    results = []
    for crop in sizes:
        for fmt in ("jpg", "webp") if crop == 224 else ("jpg",):
            pattern = _shards(work, SOURCE[crop], fmt, samples)
            # "toolkit" normalises as open_clip's pipeline does (the like-for-like ratio);
            # "toolkit_uint8" is a stage's stream, which leaves normalising to the device
            t = _turns({"toolkit": lambda p=pattern, c=crop: toolkit_stream(p, c),
                        "toolkit_uint8": lambda p=pattern, c=crop: toolkit_stream(p, c, normalize=False),
                        "open_clip": lambda p=pattern, c=crop: openclip_stream(p, c)}, batches, repeats)
            n = batches * BATCH
            row = {"crop": crop, "source": SOURCE[crop], "format": fmt, "samples_per_turn": n,
                   "turns": repeats, "load_average_1min": os.getloadavg()[0], "timings": t}
            for side in t:
                row[f"{side}_samples_per_s"] = n / statistics.median(t[side]["wall"])
                row[f"{side}_samples_per_cpu_s"] = n / statistics.median(t[side]["cpu"])
            row["ratio_per_core"] = row["toolkit_samples_per_cpu_s"] / row["open_clip_samples_per_cpu_s"]
            row["ratio_wall"] = row["toolkit_samples_per_s"] / row["open_clip_samples_per_s"]
            results.append(row)
    return results


def _normalize_cpu_s(pattern: str, repeats: int = 20) -> float:
    """CPU seconds of ``normalize_on_device`` on one uint8 batch on the CPU: what a consumer
    without an accelerator pays in the training process (on a GPU it runs on the device)."""
    from scaling.data.transforms import normalize_on_device

    images = next(iter(toolkit_stream(pattern, 224, normalize=False)))["image"]
    normalize_on_device(images)
    c0 = time.process_time()
    for _ in range(repeats):
        normalize_on_device(images)
    return (time.process_time() - c0) / repeats


def bench_workers(work: Path, samples: int, batches: int, repeats: int, passes: int = 2,
                  variants: tuple[str, ...] = ("uint8", "float")) -> dict:
    """The stream with 1 and 2 loader workers (224 px from 256 px JPEG), wall samples/s, for
    batches shipped as ``uint8`` (a stage's stream: normalised on the device by the consumer)
    and as normalised ``float`` (the stream before). One setting runs at a time (a live loader's
    workers keep working ahead in the background), in passes; each pass times ``repeats`` runs
    of ``batches`` batches after warm-up. The main process's CPU (it receives the batches) is
    measured apart from its workers', and in the workers the threads besides the one that
    builds batches (the queue's feeder, which pickles each batch into shared memory)."""
    import psutil

    me = psutil.Process()

    def cpu() -> tuple[float, float, float]:  # (this process, its loader workers, their other threads)
        workers = feeders = 0.0
        for proc in me.children(recursive=True):
            try:
                threads = sorted(t.user_time + t.system_time for t in proc.threads())
            except psutil.NoSuchProcess:
                continue
            workers += sum(threads)
            feeders += sum(threads[:-1])  # all but the busiest: the one that builds batches
        return time.process_time(), workers, feeders

    pattern = _shards(work, 256, "jpg", samples)
    load0 = os.getloadavg()[0]
    settings = [(v, w) for v in variants for w in (1, 2)]
    walls: dict = {s: [] for s in settings}
    mains: dict = {s: [] for s in settings}
    totals: dict = {s: [] for s in settings}
    feeds: dict = {s: [] for s in settings}
    for _ in range(passes):
        for v, w in settings:
            it = iter(toolkit_stream(pattern, 224, normalize=v == "float", num_workers=w))
            for _ in range(2 * w):  # every worker's shuffle buffer filled, the prefetch going
                next(it)
            for _ in range(repeats):
                t0, (m0, w0, f0) = time.perf_counter(), cpu()
                for _ in range(batches):
                    next(it)
                walls[v, w].append(time.perf_counter() - t0)
                m1, w1, f1 = cpu()
                mains[v, w].append(m1 - m0)
                totals[v, w].append(m1 - m0 + w1 - w0)
                feeds[v, w].append(f1 - f0)
            del it  # stops the workers
    n = batches * BATCH
    out: dict = {"samples_per_turn": n, "batch": BATCH, "turns": repeats * passes, "cpus": os.cpu_count(),
                 "load_average_1min_before": load0, "variants": {}}
    for v in variants:
        rate = {w: n / statistics.median(walls[v, w]) for w in (1, 2)}
        out["variants"][v] = {
            "walls": {w: walls[v, w] for w in (1, 2)},
            "main_cpus": {w: mains[v, w] for w in (1, 2)},
            "cpus_used": {w: totals[v, w] for w in (1, 2)},
            "one_worker_samples_per_s": rate[1], "two_workers_samples_per_s": rate[2],
            "ratio": rate[2] / rate[1],
            "samples_per_cpu_s": {w: n / statistics.median(totals[v, w]) for w in (1, 2)},
            "cores_busy": {w: statistics.median(totals[v, w]) / statistics.median(walls[v, w]) for w in (1, 2)},
            # the main process's CPU per batch received, and its share of a core per worker's output
            "main_cpu_ms_per_batch": {w: 1e3 * statistics.median(mains[v, w]) / batches for w in (1, 2)},
            "main_cores": {w: statistics.median(mains[v, w]) / statistics.median(walls[v, w]) for w in (1, 2)},
            "worker_feeder_cpu_ms_per_batch": {w: 1e3 * statistics.median(feeds[v, w]) / batches for w in (1, 2)},
            "worker_cpu_ms_per_batch": {w: 1e3 * (statistics.median(totals[v, w]) - statistics.median(mains[v, w]))
                                        / batches for w in (1, 2)},
        }
    out["normalize_cpu_ms_per_batch"] = 1e3 * _normalize_cpu_s(pattern)
    out["load_average_1min_after"] = os.getloadavg()[0]
    return out


def bench_restore(work: Path, samples: int, positions: list[int], repeats: int) -> dict:
    """Restore to the first batch at each position (median of ``repeats``, positions in turns);
    the positions are simulated (the same state as streaming there: checked at 128 samples)."""
    import json

    from scaling.data.simulate import simulate

    positions = [-(-p // BATCH) * BATCH for p in positions]  # whole batches
    pattern = _shards(work, 256, "jpg", samples)
    real = toolkit_stream(pattern, 224)
    it = iter(real)
    next(it), next(it)
    checked = json.dumps(simulate(toolkit_stream(pattern, 224), 2 * BATCH)) == json.dumps(real.state_dict())
    states, build = {}, {}
    for p in positions:
        t0 = time.perf_counter()
        states[p] = simulate(toolkit_stream(pattern, 224), p)
        build[p] = time.perf_counter() - t0

    def restore(state: dict) -> None:
        s = toolkit_stream(pattern, 224)
        s.load_state_dict(state)
        next(iter(s))

    times: dict[int, list[float]] = {p: [] for p in positions}
    cpus: dict[int, list[float]] = {p: [] for p in positions}
    fresh: list[float] = []
    restore(states[positions[0]])  # warm-up: imports, page cache
    for _ in range(repeats):
        for p in positions:
            t0, c0 = time.perf_counter(), time.process_time()
            restore(states[p])
            times[p].append(time.perf_counter() - t0)
            cpus[p].append(time.process_time() - c0)
        t0 = time.perf_counter()
        next(iter(toolkit_stream(pattern, 224)))
        fresh.append(time.perf_counter() - t0)
    # the replay path (positions saved without seek state), at the first position only
    old = json.loads(json.dumps(states[positions[0]]))
    for w in old["workers"]:
        w["seek"] = None
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restore(old)
    replay = time.perf_counter() - t0
    med = {p: statistics.median(v) for p, v in times.items()}
    cpu = {p: statistics.median(v) for p, v in cpus.items()}
    return {"positions": positions, "restore_s": med, "restore_all_s": times, "restore_cpu_s": cpu,
            "spread": max(med.values()) / min(med.values()) - 1,
            "spread_cpu": max(cpu.values()) / min(cpu.values()) - 1, "fresh_first_batch_s": statistics.median(fresh),
            "replay_s_at_first_position": replay, "simulate_s": build, "simulate_checked": checked,
            "state_json_bytes": len(json.dumps(states[positions[-1]]))}
