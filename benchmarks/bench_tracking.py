"""What MLflow logging costs a training loop: the same steps with and without ``MlflowLogger``.

    python benchmarks/bench_tracking.py                      # SQLite store and a loopback server
    python benchmarks/bench_tracking.py --backends sqlite --step-ms 25 --json out/tracking.json

Each loop trains a small torch MLP for ``--steps`` steps and logs four metrics every step
(``train/loss``, ``train/lr/vision``, ``train/samples_seen``, ``train/samples_per_s``) to a fresh
run, exactly as the training loop does (the logger is opened before the loop and closed after
it). The MLP's batch is doubled until a step takes >= ``--step-ms`` (25 ms: a third of the
smallest proxy rung's CLIP step on 2 cores); ``--step-ms 0`` keeps the tiny step (under a
millisecond), a stress test where any work on another thread shows. The sides (no logging,
SQLite, loopback ``mlflow server``) take turns, repeat by repeat. Reported, as medians: the
loop's wall time (what training feels), the time inside ``log_metrics`` per call, the logger's
open and close (final flush + run status) times, and the loop's ratio to the no-logging loop;
also the start time of the MLflow helper process (``scaling.tracking.remote``), paid once per
process before its first logger opens.
Target: <= 1.01.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import MIN_REPEATS, REPO_ROOT, machine, median, set_threads, write_json

TARGET = 1.01
Step = Callable[[int], dict[str, float]]


def make_step(batch: int) -> Step:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 256), torch.randn(batch, 1)

    def step(i: int) -> dict[str, float]:
        loss = torch.nn.functional.mse_loss(model(x), y)
        optim.zero_grad()
        loss.backward()
        optim.step()
        return {"train/loss": loss.item(), "train/lr/vision": 0.01,
                "train/samples_seen": float(batch * (i + 1)), "train/samples_per_s": 1000.0}

    return step


def sized_step(step_ms: float, cap: int = 1 << 16) -> tuple[Step, int, float]:
    """The step whose batch (from 32, doubling) first takes >= ``step_ms``; its median ms."""
    batch = 32
    while True:
        step = make_step(batch)
        for i in range(3):
            step(i)
        took = []
        for i in range(5):
            t0 = time.perf_counter()
            step(i)
            took.append(1e3 * (time.perf_counter() - t0))
        if median(took) >= step_ms or batch >= cap:
            return step, batch, median(took)
        batch *= 2


def helper_cpu_s() -> float:
    """CPU seconds used so far by this process's MLflow helper process (0 if none)."""
    from scaling.tracking import remote

    proc = remote.helper()._proc
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (AttributeError, OSError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def one_loop(step: Step, steps: int, uri: str | None, flush_every_s: float) -> dict[str, float]:
    from scaling import tracking

    logger, run = None, None
    helper_before = helper_cpu_s()
    opened = time.perf_counter()
    if uri is not None:
        run = tracking.start_run(uri, "bench-tracking", "tiny")
        opened = time.perf_counter()
        logger = tracking.MlflowLogger(uri, run, flush_every_s=flush_every_s)
    in_calls = 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(steps):
        metrics = step(i)
        if logger is not None:
            call = time.perf_counter()
            logger.log_metrics(metrics, i)
            in_calls += time.perf_counter() - call
    ended, cpu_ended = time.perf_counter(), time.process_time()
    if logger is not None:
        logger.close()
    closed = time.perf_counter()
    helper_s = helper_cpu_s() - helper_before  # before the check below: its reads are not logging
    if logger is not None and len(tracking.get_metric_history(uri, run, "train/loss")) != steps:
        raise RuntimeError(f"run {run}: not every step reached {uri}")
    return {"open_s": started - opened, "loop_s": ended - started, "call_us": 1e6 * in_calls / steps,
            "close_s": closed - ended, "loop_cpu_s": cpu_ended - cpu_started, "helper_cpu_s": helper_s}


def bench(step_ms: float, uris: dict[str, str | None], args: argparse.Namespace) -> dict:
    step, batch, measured_ms = sized_step(step_ms)
    for uri in uris.values():  # warm-up: mlflow's imports, the store's tables, the server
        one_loop(step, 5, uri, args.flush_every)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in uris}
    for _ in range(args.repeats):
        for name, uri in uris.items():
            rows[name].append(one_loop(step, args.steps, uri, args.flush_every))
    base = median([r["loop_s"] for r in rows["none"]])
    results = []
    for name, runs in rows.items():
        r = {"backend": name, "step_ms_target": step_ms, "batch": batch, "step_ms": measured_ms}
        for key in ("open_s", "loop_s", "close_s", "call_us", "loop_cpu_s", "helper_cpu_s"):
            r[key] = median([x[key] for x in runs])
            r[f"{key}_all"] = [x[key] for x in runs]
        r["per_step_ms"] = 1000 * r["loop_s"] / args.steps
        r["overhead_ratio"] = r["loop_s"] / base
        r["overhead_ratio_with_close"] = (r["loop_s"] + r["close_s"]) / base
        # turn by turn: each logging loop against the no-logging loop that ran just before it
        r["paired_ratio"] = median([x["loop_s"] / n["loop_s"] for x, n in zip(runs, rows["none"], strict=True)])
        # CPU of the training process (its threads, the logger's included) and of the helper
        r["process_cpu_ratio"] = r["loop_cpu_s"] / median([x["loop_cpu_s"] for x in rows["none"]])
        r["helper_cpu_share"] = r["helper_cpu_s"] / r["loop_cpu_s"]
        results.append(r)
    return {"step_ms_target": step_ms, "batch": batch, "step_ms": measured_ms, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--steps", type=int, default=300, help="training steps per loop (300)")
    parser.add_argument("--repeats", type=int, default=5, help=f"loops per side, interleaved (>= {MIN_REPEATS}, 5)")
    parser.add_argument("--step-ms", type=float, nargs="+", default=[25.0, 0.0],
                        help="step durations to size the MLP for; 0 = the tiny step (25 0)")
    parser.add_argument("--backends", default="sqlite,server",
                        help="comma list of sqlite (embedded default store) and server "
                             "(a loopback `mlflow server` started here)")
    parser.add_argument("--flush-every", type=float, default=2.0,
                        help="MlflowLogger flush period in seconds (2.0, its default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: os.cpu_count(), as training uses)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "server"}
    if unknown or args.steps < 1 or args.repeats < MIN_REPEATS or min(args.step_ms) < 0:
        parser.error(f"--backends takes sqlite and/or server (got {sorted(unknown)}); --steps must be "
                     f">= 1, --repeats >= {MIN_REPEATS}, --step-ms >= 0")

    threads = set_threads(args.threads)
    info = machine()
    print(f"machine: {info}")
    print(f"torch threads: {threads}; {args.steps} steps per loop, {args.repeats} loops per side; "
          f"flush every {args.flush_every} s")
    cache = REPO_ROOT / ".cache"
    runs = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="bench-tracking-", dir=cache if cache.is_dir() else None)))
        uris: dict[str, str | None] = {"none": None}
        if "sqlite" in backends:
            uris["sqlite"] = f"sqlite:///{work / 'mlflow.db'}"
        if "server" in backends:
            from tests.services.mlflow_server import MlflowServer

            uris["server"] = stack.enter_context(MlflowServer(work / "server")).uri
        from scaling.tracking import remote

        started = time.perf_counter()
        remote.helper().start()  # once per training process; the loggers after share it
        helper_start_s = time.perf_counter() - started
        for step_ms in args.step_ms:
            runs.append(bench(step_ms, uris, args))

    for run in runs:
        print(f"\n== step sized for >= {run['step_ms_target']:g} ms: batch {run['batch']}, "
              f"{run['step_ms']:.2f} ms a step without logging")
        print(f"   {'backend':8} {'loop s':>7} {'ms/step':>8} {'call us':>8} {'open s':>7} {'close s':>8} "
              f"{'ratio':>6} {'paired':>7} {'+close':>7} {'proc CPU':>9} {'helper CPU':>11}")
        for r in run["results"]:
            print(f"   {r['backend']:8} {r['loop_s']:7.3f} {r['per_step_ms']:8.3f} {r['call_us']:8.1f} "
                  f"{r['open_s']:7.3f} {r['close_s']:8.3f} {r['overhead_ratio']:6.3f} {r['paired_ratio']:7.3f} "
                  f"{r['overhead_ratio_with_close']:7.3f} {r['process_cpu_ratio']:9.3f} "
                  f"{100 * r['helper_cpu_share']:10.1f}%")
    print("\nratio: median loop / median no-logging loop; paired: median of each loop / the no-logging loop "
          "just before it;\n+close: with the final flush; proc CPU: the training process's CPU time ratio "
          "(its threads, the logger's included);\nhelper CPU: the helper process's CPU as a share of the "
          "loop's (work a spare core absorbs; on a saturated machine it is taken from training)")
    print(f"\nMLflow helper process start (once per process, before the first logger opens): "
          f"{helper_start_s:.2f} s")
    print(f"target: loop ratio <= {TARGET:.2f}")
    write_json(args.json, {"benchmark": "tracking", "machine": info, "target": TARGET,
                           "threads": threads, "steps": args.steps, "repeats": args.repeats,
                           "helper_start_s": helper_start_s,
                           "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
