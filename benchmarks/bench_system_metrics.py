"""What MLflow's system-metrics monitor costs a training process: its CPU per sample.

    python benchmarks/bench_system_metrics.py --samples 20 --every-s 0.5

Runs ``scaling.tracking.system.start_system_metrics`` on a fresh run of a SQLite store, sampling
every ``--every-s`` seconds while the main thread sleeps, for ``--samples`` samples, and compares
the process's CPU time (all threads) with the same wall time idle, repeat by repeat. The monitor's
CPU per sample over the production interval (``tracking.system_metrics_s``) is the share of one
core it takes from training; the tracking budget is 0.5 % (docs/tracking.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, machine, median, write_json  # noqa: F401  (REPO_ROOT: the import path)


def one(uri: str, every_s: float, samples: int) -> tuple[float, float, int]:
    from scaling import tracking
    from scaling.tracking.system import start_system_metrics, stop_system_metrics

    run_id = tracking.start_run(uri, "bench-system-metrics", "monitor")
    wall = every_s * samples + every_s / 2
    cpu0 = time.process_time()
    time.sleep(wall)
    idle = time.process_time() - cpu0
    cpu0 = time.process_time()
    monitor = start_system_metrics(uri, run_id, 0, every_s)
    time.sleep(wall)
    stop_system_metrics(monitor)
    busy = time.process_time() - cpu0
    logged = len(tracking.client(uri).get_metric_history(run_id, next(
        k for k in tracking.get_run(uri, run_id).data.metrics if k.endswith("cpu_utilization_percentage"))))
    return idle, busy, logged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--every-s", type=float, default=0.5, help="sampling interval of the measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval-s", type=float, default=10.0, help="the production interval judged")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        results = [one(uri, args.every_s, args.samples) for _ in range(args.repeats)]
    per_sample = [(busy - idle) / max(1, logged) for idle, busy, logged in results]
    cost = median(per_sample)
    share = cost / args.interval_s
    print(f"monitor CPU per sample: {1e3 * cost:.1f} ms (repeats {', '.join(f'{1e3 * c:.1f}' for c in per_sample)}; "
          f"samples logged {[r[2] for r in results]})")
    print(f"at one sample every {args.interval_s:g} s: {100 * share:.3f} % of one core (budget 0.5 %)")
    write_json(args.json, {"machine": machine(), "cpu_per_sample_s": per_sample, "interval_s": args.interval_s,
                           "share_of_core": share})


if __name__ == "__main__":
    main()
