"""What MLflow logging costs a training loop: the same steps with and without ``MlflowLogger``.

    python benchmarks/bench_tracking.py                      # SQLite store and a loopback server
    python benchmarks/bench_tracking.py --backends sqlite --step-ms 100 --log-every 10 --json out/tracking.json

Each loop trains a small torch MLP for ``--steps`` steps and logs four metrics every step
(``train/loss``, ``train/lr/vision``, ``train/samples_seen``, ``train/samples_per_s``) to a fresh
run, the logger opened before the loop and closed after it, as in the training loop (which
logs ~11 metrics every ``train.log_every`` = 10 steps; ``--log-every 10`` measures that
cadence). The MLP's batch is doubled until a step takes >= ``--step-ms`` (100 ms: a GPU step is
rarely shorter); ``--step-ms 0`` keeps the tiny step (under a millisecond), a stress test where
any work on another thread shows. The sides (no logging, SQLite, loopback ``mlflow server``)
take turns, repeat by repeat. Reported, as medians: the loop's wall time (what training feels),
the time inside ``log_metrics`` per call, the logger's open and close (final flush + run status)
times, the loop's ratio to the no-logging loop, and every CPU-second logging used (training
thread, delivery thread, loopback server) over the no-logging loop's CPU, which a busy
machine's noise does not hide. Target: <= 1.005 at a >= 100 ms step and the default cadence.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import MIN_REPEATS, REPO_ROOT, machine, median, set_threads, write_json

TARGET = 1.005
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


def _stat(path: str) -> list[str] | None:
    """The fields of a /proc stat file after the command name (None if it is gone)."""
    try:
        return Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_s(fields: list[str] | None) -> float:
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(native_id: int | None) -> float:
    """CPU seconds of one thread of this process (the logger's delivery thread)."""
    return 0.0 if native_id is None else _cpu_s(_stat(f"/proc/self/task/{native_id}/stat"))


def group_cpu_s(pgid: int | None) -> float:
    """CPU seconds of the live processes of a process group (the loopback server and its workers)."""
    if pgid is None:
        return 0.0
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(str(stat))
        if fields is not None and int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += _cpu_s(fields)
    return total


def one_loop(step: Step, steps: int, uri: str | None, flush_every_s: float,
             server_pgid: int | None = None, log_every: int = 1) -> dict[str, float]:
    from scaling import tracking

    logger, run = None, None
    server_before = group_cpu_s(server_pgid)
    opened = time.perf_counter()
    if uri is not None:
        run = tracking.start_run(uri, "bench-tracking", "tiny")
        opened = time.perf_counter()
        logger = tracking.MlflowLogger(uri, run, flush_every_s=flush_every_s)
    in_calls = 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(steps):
        metrics = step(i)
        if logger is not None and i % log_every == 0:
            call = time.perf_counter()
            logger.log_metrics(metrics, i)
            in_calls += time.perf_counter() - call
    ended, cpu_ended = time.perf_counter(), time.process_time()
    # the delivery thread's CPU during the loop (its final flush in close is not counted: the
    # thread is gone after it)
    thread_s = thread_cpu_s(logger._thread.native_id) if logger is not None else 0.0
    if logger is not None:
        logger.close()
    closed = time.perf_counter()
    server_s = group_cpu_s(server_pgid) - server_before  # before the check below: reads are not logging
    if logger is not None and len(tracking.get_metric_history(uri, run, "train/loss")) != -(-steps // log_every):
        raise RuntimeError(f"run {run}: not every step reached {uri}")
    return {"open_s": started - opened, "loop_s": ended - started, "call_us": 1e6 * in_calls / -(-steps // log_every),
            "close_s": closed - ended, "loop_cpu_s": cpu_ended - cpu_started,
            "thread_cpu_s": thread_s, "server_cpu_s": server_s,
            # every CPU-second logging used: calls on the training thread, the delivery thread,
            # the loopback server (an upper bound on the wall time it can take from a loop that
            # keeps every core busy)
            "logging_cpu_s": in_calls + thread_s + server_s}


def bootstrap_median(xs: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 90 % percentile-bootstrap interval of the median of ``xs``: how far the noise alone
    moves it."""
    rng = random.Random(seed)
    meds = sorted(median(rng.choices(xs, k=len(xs))) for _ in range(draws))
    return meds[int(0.05 * draws)], meds[int(0.95 * draws) - 1]


def bench(step_ms: float, uris: dict[str, str | None], args: argparse.Namespace,
          pgids: dict[str, int]) -> dict:
    step, batch, measured_ms = sized_step(step_ms)
    for uri in uris.values():  # warm-up: mlflow's imports, the store's tables, the server
        one_loop(step, 5, uri, args.flush_every)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in uris}
    for _ in range(args.repeats):
        for name, uri in uris.items():
            rows[name].append(one_loop(step, args.steps, uri, args.flush_every, pgids.get(name),
                                       args.log_every))
    base = median([r["loop_s"] for r in rows["none"]])
    base_cpu = median([r["loop_cpu_s"] for r in rows["none"]])
    results = []
    for name, runs in rows.items():
        r = {"backend": name, "step_ms_target": step_ms, "batch": batch, "step_ms": measured_ms}
        for key in ("open_s", "loop_s", "close_s", "call_us", "loop_cpu_s", "thread_cpu_s",
                    "server_cpu_s", "logging_cpu_s"):
            r[key] = median([x[key] for x in runs])
            r[f"{key}_all"] = [x[key] for x in runs]
        r["per_step_ms"] = 1000 * r["loop_s"] / args.steps
        r["overhead_ratio"] = r["loop_s"] / base
        r["overhead_ratio_with_close"] = (r["loop_s"] + r["close_s"]) / base
        # turn by turn: each logging loop against the no-logging loop that ran just before it
        paired = [x["loop_s"] / n["loop_s"] for x, n in zip(runs, rows["none"], strict=True)]
        r["paired_ratio"], r["paired_ratio_all"] = median(paired), paired
        r["paired_ratio_90ci"] = bootstrap_median(paired)
        # CPU of the training process (its threads, the logger's included)
        r["process_cpu_ratio"] = r["loop_cpu_s"] / base_cpu
        # all the CPU logging used, as a share of the no-logging loop's CPU
        r["logging_cpu_share"] = r["logging_cpu_s"] / base_cpu
        results.append(r)
    return {"step_ms_target": step_ms, "batch": batch, "step_ms": measured_ms, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--steps", type=int, default=300, help="training steps per loop (300)")
    parser.add_argument("--repeats", type=int, default=5, help=f"loops per side, interleaved (>= {MIN_REPEATS}, 5)")
    parser.add_argument("--step-ms", type=float, nargs="+", default=[100.0, 0.0],
                        help="step durations to size the MLP for; 0 = the tiny step (100 0)")
    parser.add_argument("--backends", default="sqlite,server",
                        help="comma list of sqlite (embedded default store) and server "
                             "(a loopback `mlflow server` started here)")
    parser.add_argument("--log-every", type=int, default=10,
                        help="log every N-th step (10: the toolkit's default train.log_every; 1 is a "
                             "stress test)")
    parser.add_argument("--flush-every", type=float, default=None,
                        help="MlflowLogger flush period in seconds (default: the logger's, "
                             "scaling.tracking.logger.FLUSH_EVERY_S)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: os.cpu_count(), as training uses)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "server"}
    if unknown or args.steps < 1 or args.repeats < MIN_REPEATS or min(args.step_ms) < 0 \
            or args.log_every < 1:
        parser.error(f"--backends takes sqlite and/or server (got {sorted(unknown)}); --steps must be "
                     f">= 1, --repeats >= {MIN_REPEATS}, --step-ms >= 0, --log-every >= 1")

    if args.flush_every is None:
        from scaling.tracking.logger import FLUSH_EVERY_S

        args.flush_every = FLUSH_EVERY_S
    threads = set_threads(args.threads)
    info = machine()
    print(f"machine: {info}")
    print(f"torch threads: {threads}; {args.steps} steps per loop, {args.repeats} loops per side; "
          f"flush every {args.flush_every} s; logging every {args.log_every} step(s)")
    cache = REPO_ROOT / ".cache"
    runs = []
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="bench-tracking-", dir=cache if cache.is_dir() else None)))
        uris: dict[str, str | None] = {"none": None}
        pgids: dict[str, int] = {}
        if "sqlite" in backends:
            uris["sqlite"] = f"sqlite:///{work / 'mlflow.db'}"
        if "server" in backends:
            from tests.services.mlflow_server import MlflowServer

            server = stack.enter_context(MlflowServer(work / "server"))
            uris["server"], pgids["server"] = server.uri, server._proc.pid  # its own session
        for step_ms in args.step_ms:
            runs.append(bench(step_ms, uris, args, pgids))

    for run in runs:
        print(f"\n== step sized for >= {run['step_ms_target']:g} ms: batch {run['batch']}, "
              f"{run['step_ms']:.2f} ms a step without logging")
        print(f"   {'backend':8} {'loop s':>7} {'ms/step':>8} {'call us':>8} {'open s':>7} {'close s':>8} "
              f"{'ratio':>6} {'paired':>7} {'paired 90% CI':>14} {'+close':>7} {'proc CPU':>9} "
              f"{'logging CPU':>12}")
        for r in run["results"]:
            lo, hi = r["paired_ratio_90ci"]
            print(f"   {r['backend']:8} {r['loop_s']:7.3f} {r['per_step_ms']:8.3f} {r['call_us']:8.1f} "
                  f"{r['open_s']:7.3f} {r['close_s']:8.3f} {r['overhead_ratio']:6.3f} {r['paired_ratio']:7.3f} "
                  f"{f'{lo:.3f}-{hi:.3f}':>14} {r['overhead_ratio_with_close']:7.3f} "
                  f"{r['process_cpu_ratio']:9.3f} {100 * r['logging_cpu_share']:11.2f}%")
    print("\nratio: median loop / median no-logging loop; paired: median of each loop / the no-logging loop "
          "just before it, with its 90 % bootstrap interval;\n+close: with the final flush; proc CPU: the "
          "training process's CPU time ratio (its threads, the logger's included);\nlogging CPU: every "
          "CPU-second logging used (calls, delivery thread, loopback server) / the no-logging loop's CPU: "
          "the most it can add on a machine whose every core trains")
    print(f"target: loop ratio <= {TARGET:.3f}")
    write_json(args.json, {"benchmark": "tracking", "machine": info, "target": TARGET,
                           "threads": threads, "steps": args.steps, "repeats": args.repeats,
                           "log_every": args.log_every, "flush_every_s": args.flush_every, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
