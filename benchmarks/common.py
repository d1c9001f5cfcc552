"""Timing helpers shared by the benchmarks: side-by-side interleaved repeats, medians, the
machine description and the ``--json`` output.

Shared machines are noisy, so every figure is a ratio of two (or more) sides measured in the
same process, their repeats interleaved (A B A B ...) so that a burst of outside load hits
both sides alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MIN_REPEATS = 5


def add_common_args(parser: argparse.ArgumentParser, repeats: int = 7, warmup: int = 2) -> None:
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"timed repeats per side, interleaved; medians are reported "
                             f"(>= {MIN_REPEATS}, default {repeats})")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help=f"untimed calls per side first (default {warmup})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every side (default: os.cpu_count())")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write inputs, timings and ratios here")


def check_common_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 with one message on bad values."""
    if args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be >= {MIN_REPEATS} (a median of fewer is noise); got {args.repeats}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0; got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1; got {args.threads}")


def set_threads(threads: int | None) -> int:
    """One thread count for every side of a comparison; returns it."""
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return torch.get_num_threads()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if "torch" in sys.modules or _importable("torch"):
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class Timings(dict):
    """``{side: [wall seconds]}``, with ``.cpu``: ``{side: [process CPU seconds]}`` of the same calls.

    On an oversubscribed machine CPU time leaves out the time spent waiting for a core, so its
    ratios are steadier than wall-time ratios (they assume both sides use their threads alike).
    """

    cpu: dict[str, list[float]]


def interleaved(sides: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 2,
                sync: Callable[[], None] | None = None) -> Timings:
    """Wall (and CPU) seconds of each side's call, ``repeats`` times, in turns (A B A B ...).

    ``sync`` runs before each clock read (e.g. ``torch.cuda.synchronize``).
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    sync()
    times = Timings({name: [] for name in sides})
    times.cpu = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            times.cpu[name].append(time.process_time() - c0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_ms(xs: list[float]) -> str:
    return " ".join(f"{x * 1e3:.1f}" for x in xs)


def print_header(title: str, inputs: Mapping[str, Any]) -> None:
    print(f"== {title}")
    for key, value in inputs.items():
        print(f"   {key}: {value}")


def print_timings(times: Mapping[str, list[float]]) -> None:
    width = max(len(k) for k in times)
    for name, xs in times.items():
        print(f"   {name:<{width}}  wall median {median(xs) * 1e3:9.2f} ms   raw ms: {fmt_ms(xs)}")
    for name, xs in getattr(times, "cpu", {}).items():
        print(f"   {name:<{width}}  CPU  median {median(xs) * 1e3:9.2f} ms   raw ms: {fmt_ms(xs)}")


def as_json(times: Timings) -> dict[str, Any]:
    return {"wall_s": dict(times), "cpu_s": getattr(times, "cpu", {})}


def write_json(path: Path | None, payload: Mapping[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {path}")
