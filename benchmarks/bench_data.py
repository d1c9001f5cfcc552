"""Throughput of the data path against what training consumes; the generator and the pipeline.

    python benchmarks/bench_data.py                      # prints a table
    python benchmarks/bench_data.py --json bench_data.json --samples 5000
    python benchmarks/bench_data.py --only-real --real-sizes 224 336 448   # real sizes only

The headline (target >= 5x): for each stage of the proxy ladder (and the smallest proxy rung,
B16, the fastest consumer), the stage's own training stream (``scaling.train.stage_data``:
webdataset shards -> decode -> random resized crop -> tokenizer or block mask -> batches) on
one thread, as one DataLoader worker runs it, against the toolkit's training step on every
core (``benchmarks/steps.py``), turns interleaved; ratio = stream samples/s / step samples/s.
Then single-thread figures (best of ``--repeat`` runs): the generator's samples/s (whole shards
written: scene, drawing, caption, PNG, tar), the same split into parts, the pipeline's
samples/s, and the cost of restoring a stream position. Then real sizes (``data_real.py``): the
stream at 224 px (336, 448 on request) from 256 px JPEG and WebP shards beside an open_clip-style
webdataset pipeline on the same shards, per core; 1 against 2 loader workers, with batches
shipped as uint8 (a stage's stream) and as normalised floats (before), and the CPU per batch of
the main process that receives them and of the workers' queue threads; and the restore
time at 10k, 100k and 1M samples. The stream's samples per CPU-second at each real size go to
``scaling.loader_costs``'s file, which the ladder's dry run reads for its loader-cores column.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


CPU_TIMES: dict[str, float] = {}


def _best(fn, repeat: int, name: str | None = None) -> float:
    """Best wall time of ``repeat`` calls of ``fn``; the best CPU time goes to ``CPU_TIMES[name]``
    (on a busy machine the CPU time is the steadier figure: other processes inflate wall time)."""
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if name:
        CPU_TIMES[name] = min(cpus)
    return min(walls)


def bench_generator(work: Path, samples: int, size: int, repeat: int) -> dict:
    from scaling.data import captions, synth, world
    from scaling.data.world_drawing import render_indexed

    def write() -> None:
        out = work / f"gen{size}"
        shutil.rmtree(out, ignore_errors=True)
        synth.write_world(out, samples, size, seed=0, shard_size=1000)

    n_parts = min(samples, 1000)

    def draw() -> None:
        for i in range(n_parts):
            rnd = world.sample_rng("train", 0, i)
            scene = world.sample_scene(rnd, size)
            render_indexed(scene, size, rnd)
            captions.caption(scene, rnd)

    drawings = [synth._make_indexed("train", 0, i, size)[0] for i in range(n_parts)]

    def encode() -> None:
        for d in drawings:
            synth.png_indexed(*d)

    t_write = _best(write, repeat, "write")
    shard_bytes = sum(p.stat().st_size for p in (work / f"gen{size}").glob("*.tar"))
    return {
        "image_size": size,
        "samples": samples,
        "write_samples_per_s": samples / t_write,
        "write_samples_per_cpu_s": samples / CPU_TIMES["write"],
        "scene_draw_caption_samples_per_s": n_parts / _best(draw, repeat),
        "png_encode_per_s": n_parts / _best(encode, repeat),
        "bytes_per_sample": shard_bytes / samples,
    }


def bench_pipeline(work: Path, size: int, batch_size: int, batches: int, repeat: int) -> dict:
    from scaling.data import synth
    from scaling.data.masking import BlockMaskGenerator
    from scaling.data.shards import ShardStream
    from scaling.data.tokenizer import get_tokenizer
    from scaling.data.transforms import train_transform

    samples = max(batch_size * batches * 2, 2000)
    shards = synth.write_world(work / f"pipe{size}", samples, size, seed=0, shard_size=1000)
    pattern = synth.shard_pattern(shards)
    grid = (size // 8, size // 8)
    kw = dict(
        batch_size=batch_size,
        transform=train_transform(size),
        tokenizer=get_tokenizer(32),
        mask_generator=BlockMaskGenerator(grid),
        seed=0,
        shuffle_buffer=1000,
    )

    def run() -> ShardStream:
        stream = ShardStream(pattern, **kw)
        it = iter(stream)
        for _ in range(batches):
            next(it)
        return stream

    # steady state: the first batch (filling the shuffle buffer) is not timed
    walls, cpus = [], []
    for _ in range(repeat):
        it = iter(ShardStream(pattern, **kw))
        next(it)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(it)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    t_full, CPU_TIMES["pipeline"] = min(walls), min(cpus)
    state = run().state_dict()

    def restore() -> None:
        stream = ShardStream(pattern, **kw)
        stream.load_state_dict(state)
        next(iter(stream))

    t_restore = _best(restore, repeat)
    t_one = _best(lambda: next(iter(ShardStream(pattern, **kw))), repeat)
    n = batch_size * batches
    return {
        "image_size": size,
        "batch_size": batch_size,
        "mask_grid": list(grid),
        "samples_per_s": n / t_full,
        "samples_per_cpu_s": n / CPU_TIMES["pipeline"],
        "restore_after_samples": n,
        "restore_s": t_restore - t_one,  # beyond a fresh stream's first batch
    }


CONSUMERS = (("clip", "B16"), ("clip", "E14"), ("mim", "18B"), ("clip", "18B"))
TARGET = 5.0


def bench_consumption(work: Path, consumers: list[tuple[str, str]], batches: int, repeats: int) -> list[dict]:
    import torch
    from common import interleaved, median
    from steps import stage_config, toolkit_step

    from scaling.data import synth
    from scaling.data.tokenizer import get_tokenizer
    from scaling.train.stage_data import train_stream

    threads = torch.get_num_threads()
    out = []
    for kind, rung in consumers:
        cfg = stage_config(kind, rung, None, [])
        setup = toolkit_step(cfg)
        spec = setup.rung.mim if kind == "mim" else setup.rung.vision
        size, grid, batch = spec.image_size, spec.grid, cfg.train.batch_size
        folder = work / f"consume{size}"
        shards = synth.write_world(folder, 2000, size, seed=0, shard_size=500) if not folder.exists() \
            else sorted(folder.glob("*.tar"))
        tokenizer = get_tokenizer(setup.rung.text.context_length) if kind == "clip" else None
        stream = iter(train_stream(cfg, synth.shard_pattern(shards), size, grid, tokenizer, batch, 0, 1))
        next(stream)  # the shuffle buffer fills once

        def pipeline(stream=stream) -> None:
            torch.set_num_threads(1)  # a DataLoader worker's setting
            try:
                for _ in range(batches):
                    next(stream)
            finally:
                torch.set_num_threads(threads)

        times = interleaved({"stream": pipeline, "step": setup.step}, repeats, warmup=1)
        stream_rate = batches * batch / median(times["stream"])
        step_rate = batch / median(times["step"])
        out.append({"kind": kind, "rung": rung, "proxy": True, "image_size": size, "batch": batch,
                    "step_threads": threads, "stream_batches_per_repeat": batches,
                    "stream_samples_per_s": stream_rate, "step_samples_per_s": step_rate,
                    "ratio": stream_rate / step_rate, "times": {k: list(v) for k, v in times.items()}})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--samples",
        type=int,
        default=3000,
        help="samples the generator writes per size (default 3000)",
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[32, 64], help="image sizes (default 32 64)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="pipeline batch size (default 64)")
    p.add_argument("--batches", type=int, default=20, help="pipeline batches timed (default 20)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure, best kept (default 3)")
    p.add_argument("--consumer-repeats", type=int, default=5,
                   help="interleaved stream/step turns per ladder stage, medians kept (default 5)")
    p.add_argument("--only-ratio", action="store_true",
                   help="measure only the stream / training-step ratios")
    p.add_argument("--only-real", action="store_true", help="measure only the real-size figures")
    p.add_argument("--skip-real", action="store_true", help="leave out the real-size figures")
    p.add_argument("--real-sizes", type=int, nargs="+", default=[224], choices=[224, 336, 448],
                   help="crop sizes for the real-size figures (default 224)")
    p.add_argument("--real-samples", type=int, default=2000,
                   help="samples in the real-size shards (default 2000, shards of 500)")
    p.add_argument("--real-batches", type=int, default=3, help="batches of 64 per turn (default 3)")
    p.add_argument("--real-repeats", type=int, default=7, help="turns per side (default 7)")
    p.add_argument("--real-parts", nargs="+", default=["openclip", "workers", "restore"],
                   choices=["openclip", "workers", "restore"], help="real-size parts to run (default all)")
    p.add_argument("--positions", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="stream positions (samples) to time restores at")
    p.add_argument("--throughput-out", type=Path,
                   help="where to write the samples/s per core figures (default: "
                        "scaling.loader_costs's file)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the figures as JSON")
    p.add_argument(
        "--workdir", type=Path, help="scratch folder (default: a temporary one under .cache/)"
    )
    args = p.parse_args(argv)
    if args.samples < 1 or args.batches < 1 or args.batch_size < 1 or args.repeat < 1 \
            or args.consumer_repeats < 5:
        p.error("--samples, --batches, --batch-size and --repeat must be >= 1, --consumer-repeats >= 5")
    import torch
    base = args.workdir or REPO_ROOT / ".cache"
    base.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads_step": torch.get_num_threads(),
            "torch_threads_data": 1,
            "load_average_1min": os.getloadavg()[0],
        },
        "target": TARGET,
        "consumption": [],
        "generator": [],
        "pipeline": [],
    }
    if args.only_real:
        args.sizes = []
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-data-") as tmp:
        work = Path(tmp)
        if not args.only_real:
            results["consumption"] = bench_consumption(work, list(CONSUMERS), 4, args.consumer_repeats)
        for r in results["consumption"]:
            print(f"{r['kind']}@{r['rung']} proxy ({r['image_size']} px, batch {r['batch']}): stream on 1 "
                  f"thread {r['stream_samples_per_s']:6.0f} samples/s, training step on {r['step_threads']} "
                  f"threads {r['step_samples_per_s']:6.0f} samples/s -> ratio {r['ratio']:.1f}x "
                  f"(target >= {TARGET:g}x)")
        if args.only_ratio:
            args.sizes = []
        torch.set_num_threads(1)
        for size in args.sizes:
            g = bench_generator(work, args.samples, size, args.repeat)
            results["generator"].append(g)
            print(
                f"generator {size:>3d} px: {g['write_samples_per_s']:6.0f} samples/s written "
                f"({g['write_samples_per_cpu_s']:.0f} per CPU-second; "
                f"scene+draw+caption {g['scene_draw_caption_samples_per_s']:.0f}/s, "
                f"PNG {g['png_encode_per_s']:.0f}/s, {g['bytes_per_sample']:.0f} B/sample)"
            )
        for size in args.sizes:
            r = bench_pipeline(work, size, args.batch_size, args.batches, args.repeat)
            results["pipeline"].append(r)
            print(
                f"pipeline  {size:>3d} px: {r['samples_per_s']:6.0f} samples/s to batches "
                f"({r['samples_per_cpu_s']:.0f} per CPU-second; "
                f"decode+crop+tokenize+mask {r['mask_grid'][0]}x{r['mask_grid'][1]}, batch {r['batch_size']}); "
                f"restore after {r['restore_after_samples']} samples: {r['restore_s']:.2f} s"
            )
        if not (args.skip_real or args.only_ratio):
            results["real"] = run_real(work, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


def run_real(work: Path, args) -> dict:
    import data_real

    from scaling import loader_costs as throughput

    out: dict = {}
    parts = args.real_parts
    rows = data_real.bench_vs_openclip(work, args.real_sizes, args.real_samples, args.real_batches,
                                       args.real_repeats) if "openclip" in parts else []
    out["vs_open_clip"] = rows
    for r in rows:
        print(f"real {r['crop']} px from {r['source']} px {r['format'].upper():4s}: stream "
              f"{r['toolkit_samples_per_cpu_s']:4.0f} samples per CPU-s ({r['toolkit_samples_per_s']:.0f}/s), "
              f"open_clip-style webdataset {r['open_clip_samples_per_cpu_s']:4.0f} per CPU-s "
              f"({r['open_clip_samples_per_s']:.0f}/s) -> {r['ratio_per_core']:.2f}x per core "
              f"(wall {r['ratio_wall']:.2f}x; target >= 1.3x; load {r['load_average_1min']:.1f}); "
              f"a stage's stream (uint8, normalised on the device) "
              f"{r['toolkit_uint8_samples_per_cpu_s']:.0f} per CPU-s")
    # the loader-cores column prices a stage's stream, which ships uint8
    figures = {r["crop"]: r["toolkit_uint8_samples_per_cpu_s"] for r in rows if r["format"] == "jpg"}
    source = "a stage's stream (uint8 batches) on JPEG shards, crops " + ", ".join(
        f"{c} from {data_real.SOURCE[c]} px" for c in figures)
    path = None if not figures else throughput.write_figures(figures, args.throughput_out, source=source,
                                                             cpu=platform.processor() or platform.machine(),
                                                             cpus=os.cpu_count(),
                                                             load_average_1min=os.getloadavg()[0])
    if path:
        print(f"wrote samples/s per core {figures} to {path}")
    if "workers" in parts:
        out["workers"] = w = data_real.bench_workers(work, args.real_samples, 2 * args.real_batches,
                                                     max(2, args.real_repeats // 2))
        print(f"loader workers, 224 px from 256 px JPEG, batch {w['batch']} (load {w['load_average_1min_before']:.1f} "
              f"before, {w['load_average_1min_after']:.1f} after; target >= 1.8x on {w['cpus']} cores):")
        for v, r in w["variants"].items():
            what = "uint8, normalised by the consumer" if v == "uint8" else "float, normalised in the workers"
            ms, cores, busy = r["main_cpu_ms_per_batch"], r["main_cores"], r["cores_busy"]
            print(f"  {what}: 1 worker {r['one_worker_samples_per_s']:.0f} samples/s, 2 workers "
                  f"{r['two_workers_samples_per_s']:.0f} -> {r['ratio']:.2f}x; main process CPU per batch "
                  f"{ms[1]:.1f} / {ms[2]:.1f} ms (share of a core {cores[1]:.3f} / {cores[2]:.3f}); workers' "
                  f"CPU per batch {r['worker_cpu_ms_per_batch'][1]:.0f} / {r['worker_cpu_ms_per_batch'][2]:.0f} ms, "
                  f"of it their queue threads {r['worker_feeder_cpu_ms_per_batch'][1]:.1f} / "
                  f"{r['worker_feeder_cpu_ms_per_batch'][2]:.1f} ms; "
                  f"samples per CPU-second {r['samples_per_cpu_s'][1]:.0f} / {r['samples_per_cpu_s'][2]:.0f}; "
                  f"cores busy {busy[1]:.2f} / {busy[2]:.2f}")
        print(f"  normalize_on_device on the CPU (a consumer without a GPU): {w['normalize_cpu_ms_per_batch']:.1f} ms "
              "CPU per batch")
    if "restore" not in parts:
        return out
    out["restore"] = r = data_real.bench_restore(work, args.real_samples, args.positions, args.real_repeats)
    times = ", ".join(f"{p:,} samples {t:.3f} s (CPU {r['restore_cpu_s'][p]:.3f} s)"
                      for p, t in r["restore_s"].items())
    print(f"restore to the first batch (224 px, batch 64, shuffle buffer 1000): {times}; spread "
          f"{100 * r['spread']:.0f} % wall, {100 * r['spread_cpu']:.0f} % CPU (target < 20 %); "
          f"a fresh stream's first batch {r['fresh_first_batch_s']:.3f} s; "
          f"replay (no seek state) at {r['positions'][0]:,}: {r['replay_s_at_first_position']:.2f} s; "
          f"simulated position equal to the streamed one: {r['simulate_checked']}; "
          f"state {r['state_json_bytes'] / 1024:.0f} KiB as JSON")
    return out


if __name__ == "__main__":
    sys.exit(main())
