"""What MLflow logging costs a training loop: the same tiny steps with and without ``MlflowLogger``.

    python benchmarks/bench_tracking.py                      # SQLite store and a loopback server
    python benchmarks/bench_tracking.py --backends sqlite --json bench_tracking.json

Each repeat trains a tiny torch model for ``--steps`` steps and logs four metrics every step
(``train/loss``, ``train/lr/vision``, ``train/samples_seen``, ``train/samples_per_s``) to a
fresh run. Reported, as medians over ``--repeat`` repeats: the loop's wall time (what training
feels), the time spent inside ``log_metrics`` per step (the rest of the overhead is the
background thread sharing the CPU), the logger's open time and its close time (final flush + run status), and the overhead
ratio of the loop against the same loop without logging.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def make_step() -> Callable[[int], dict[str, float]]:
    import torch

    torch.set_num_threads(1)  # the logger's thread is the only other one: a fair comparison
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64), torch.randn(32, 1)

    def step(i: int) -> dict[str, float]:
        loss = torch.nn.functional.mse_loss(model(x), y)
        optim.zero_grad()
        loss.backward()
        optim.step()
        return {"train/loss": loss.item(), "train/lr/vision": 0.01,
                "train/samples_seen": 32.0 * (i + 1), "train/samples_per_s": 1000.0}

    return step


def one_repeat(step: Callable[[int], dict[str, float]], steps: int, uri: str | None,
               flush_every_s: float) -> dict[str, float]:
    from scaling import tracking

    logger = None
    opened = time.perf_counter()
    if uri is not None:
        run = tracking.start_run(uri, "bench-tracking", "tiny")
        opened = time.perf_counter()
        logger = tracking.MlflowLogger(uri, run, flush_every_s=flush_every_s)
    in_calls = 0.0
    started = time.perf_counter()
    for i in range(steps):
        metrics = step(i)
        if logger is not None:
            call = time.perf_counter()
            logger.log_metrics(metrics, i)
            in_calls += time.perf_counter() - call
    ended = time.perf_counter()
    if logger is not None:
        logger.close()
        if len(tracking.get_metric_history(uri, run, "train/loss")) != steps:
            raise RuntimeError(f"run {run}: not every step reached {uri}")
    return {"open_s": started - opened, "loop_s": ended - started, "call_us": 1e6 * in_calls / steps,
            "close_s": time.perf_counter() - ended}


def bench(name: str, uri: str | None, args: argparse.Namespace) -> dict:
    step = make_step()
    for i in range(20):  # warm-up: torch's first steps and mlflow's imports
        step(i)
    one_repeat(step, 5, uri, args.flush_every)
    rows = [one_repeat(step, args.steps, uri, args.flush_every) for _ in range(args.repeat)]
    result = {"backend": name, "steps": args.steps, "repeat": args.repeat}
    for key in ("open_s", "loop_s", "close_s", "call_us"):
        values = [r[key] for r in rows]
        result[key] = statistics.median(values)
        result[f"{key}_all"] = values
    result["per_step_ms"] = 1000 * result["loop_s"] / args.steps
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per repeat (300)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats; medians are reported (5)")
    parser.add_argument("--backends", default="sqlite,server",
                        help="comma list of sqlite (embedded default store) and server "
                             "(a loopback `mlflow server` started here)")
    parser.add_argument("--flush-every", type=float, default=2.0,
                        help="MlflowLogger flush period in seconds (2.0, its default)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "server"}
    if unknown or args.steps < 1 or args.repeat < 1:
        parser.error(f"--backends takes sqlite and/or server (got {sorted(unknown)}); "
                     "--steps and --repeat must be >= 1")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-tracking-", dir=REPO_ROOT / ".cache"
                                     if (REPO_ROOT / ".cache").is_dir() else None) as work:
        work = Path(work)
        results.append(bench("none", None, args))
        if "sqlite" in backends:
            results.append(bench("sqlite", f"sqlite:///{work / 'mlflow.db'}", args))
        if "server" in backends:
            from tests.services.mlflow_server import MlflowServer

            with MlflowServer(work / "server") as server:
                results.append(bench("server", server.uri, args))
    base = results[0]["loop_s"]
    for r in results:
        r["overhead_ratio"] = r["loop_s"] / base
        r["overhead_ratio_with_close"] = (r["loop_s"] + r["close_s"]) / base

    print(f"{'backend':8} {'loop s':>8} {'ms/step':>8} {'call us':>8} {'open s':>8} {'close s':>8} "
          f"{'ratio':>7} {'ratio+close':>12}   (medians of {args.repeat}, {args.steps} steps)")
    for r in results:
        print(f"{r['backend']:8} {r['loop_s']:8.4f} {r['per_step_ms']:8.3f} {r['call_us']:8.1f} "
              f"{r['open_s']:8.3f} "
              f"{r['close_s']:8.3f} {r['overhead_ratio']:7.2f} {r['overhead_ratio_with_close']:12.2f}")
    if args.json:
        payload = {"results": results, "python": platform.python_version(),
                   "machine": platform.machine(), "cpus": os.cpu_count(),
                   "load_avg": os.getloadavg()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
