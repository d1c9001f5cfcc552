"""Run every benchmark in this folder (``bench_*.py``), one process each, and collect their
JSON figures in one folder.

    python benchmarks/run_all.py --out .cache/bench-results          # all of them
    python benchmarks/run_all.py --only train_step reference --out .cache/bench-results
    python benchmarks/run_all.py --skip gpu sweep --timeout 900

Each benchmark runs with its defaults plus ``--json OUT/<name>.json``; its output streams
through. The summary lists exit codes and wall times; the exit code is 1 when any benchmark
failed (a missed target is a figure, not a failure). ``--threads`` is passed to the
benchmarks that take it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def takes_threads(path: Path) -> bool:
    return "add_common_args" in path.read_text()


def headline(data: dict) -> str:
    """One line from a benchmark's JSON, when it has a recognisable figure."""
    if data.get("skipped"):
        return "skipped: " + str(data["skipped"])[:60]
    results = data.get("results")
    if isinstance(results, list) and results and isinstance(results[0], dict) and "ratio" in results[0]:
        parts = [f"{r['inputs'].get('kind', '')}{r['inputs'].get('width', '')}: {r['ratio']:.3g}" for r in results]
        return "ratios " + ", ".join(parts)
    if isinstance(data.get("consumption"), list):  # data: stream / training step per stage
        return "ratios " + ", ".join(f"{r['kind']}@{r['rung']}: {r['ratio']:.3g}" for r in data["consumption"])
    if isinstance(data.get("runs"), list):  # tracking: logging loop / no-logging loop
        return "ratios (logging CPU) " + ", ".join(
            f"{r['backend']}@{run['step_ms']:.3g}ms: {r['overhead_ratio']:.3g} "
            f"({100 * r.get('logging_cpu_share', float('nan')):.2g} %)"
            for run in data["runs"] for r in run["results"] if r["backend"] != "none")
    return ""


def main(argv: list[str] | None = None) -> int:
    benches = discover()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=Path(".cache/bench-results"), help="folder for the JSON files")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"run these: {', '.join(benches)}")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these out")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark (1800)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the benchmarks that take it")
    args = parser.parse_args(argv)
    unknown = [n for n in [*(args.only or []), *args.skip] if n not in benches]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(benches)}")
    names = [n for n in (args.only or benches) if n not in args.skip]
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    summary = []
    for name in names:
        path = benches[name]
        out = (args.out / f"{name}.json").resolve()
        cmd = [sys.executable, str(path), "--json", str(out)]
        if args.threads and takes_threads(path):
            cmd += ["--threads", str(args.threads)]
        print(f"\n##### {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        wall = time.perf_counter() - t0
        line = ""
        if out.is_file():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                line = headline(json.loads(out.read_text()))
        summary.append((name, rc, wall, line))
    print("\n##### summary")
    for name, rc, wall, line in summary:
        status = "ok" if rc == 0 else ("timeout" if rc == 124 else f"failed (exit {rc})")
        print(f"   {name:<14} {status:<16} {wall:7.1f} s  {line}")
    print(f"   JSON in {args.out}")
    return 1 if any(rc != 0 for _, rc, _, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
