"""What a sweep's machinery costs per trial: storage, MLflow, and throughput with 1 and 2 workers.

    python benchmarks/bench_sweep.py                        # prints the figures
    python benchmarks/bench_sweep.py --json bench_sweep.json --trials 40
    python benchmarks/bench_sweep.py --mlflow-uri http://127.0.0.1:5000

Figures (tiny trials: ``scaling.sweep.toy:quadratic`` with one step, nothing trained):

* ``throughput``: trials per minute with 1 and 2 local workers, counted from the first trial's
  start to the last trial's end (``steady``) and over the whole command (``wall``: includes
  submitting the workers and each worker importing optuna and mlflow).
* ``overhead``: per-trial time in this process, split into the Optuna journal storage alone
  (ask under the lock + tell) and the MLflow side alone (child run with params and tags,
  metrics through the batching logger, final state, close); their sum is what one trial of
  zero length costs a worker.

The machine's load average is printed with the figures: wall times stretch with it.
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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def write_sweep(folder: Path, name: str, trials: int, workers: int, uri: str) -> Path:
    import yaml

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "base": {"function": "scaling.sweep.toy:quadratic"},
        "search_space": {"x": {"type": "float", "low": -5, "high": 5},
                         "y": {"type": "float", "low": -5, "high": 5}, "steps": 1},
        "objectives": [{"metric": "loss", "direction": "minimize"}],
        "sampler": {"name": "random", "seed": 0},
        "n_trials": trials,
        "workers": workers,
        "executor": "local",
        "workdir": str(folder / "runs" / name),
        "tracking": {"uri": uri, "experiment": f"bench-{name}"},
    }))
    return path


def throughput(folder: Path, trials: int, workers: int, uri: str) -> dict[str, float]:
    from scaling.sweep.runner import absolutize, run_sweep
    from scaling.sweep.spec import load_sweep
    from scaling.sweep.storage import open_study

    spec = load_sweep(write_sweep(folder, f"w{workers}", trials, workers, uri))
    t0 = time.perf_counter()
    summary = run_sweep(spec)
    wall = time.perf_counter() - t0
    done = [t for t in open_study(absolutize(spec)).get_trials() if t.datetime_complete]
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    steady = (last - first).total_seconds()
    per_trial = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    return {
        "workers": workers,
        "trials": summary["counts"]["COMPLETE"] + summary["counts"]["PRUNED"],
        "trials_per_min_steady": 60.0 * len(done) / steady if steady > 0 else float("nan"),
        "trials_per_min_wall": 60.0 * len(done) / wall,
        "wall_s": wall,
        "trial_s_median": statistics.median(per_trial),
    }


def overhead(folder: Path, trials: int, uri: str) -> dict[str, float]:
    """Storage alone and MLflow alone, in this process, per trial (medians, ms)."""
    import optuna

    from scaling import tracking
    from scaling.config import flatten, load_stage_config
    from scaling.sweep import runs
    from scaling.sweep.heartbeats import ask_lock
    from scaling.sweep.runner import absolutize
    from scaling.sweep.samplers import distributions
    from scaling.sweep.spec import load_sweep
    from scaling.sweep.storage import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = absolutize(load_sweep(write_sweep(folder, "overhead", trials, 1, uri)))
    study = open_study(spec, create=True)
    dists = distributions(spec.params)
    storage_ms = []
    for i in range(trials):
        t0 = time.perf_counter()
        with ask_lock(spec):
            trial = study.ask(fixed_distributions=dists)
        trial.set_user_attr("mlflow_run_id", f"bench-{i}")
        study.tell(trial, 1.0)
        storage_ms.append(1e3 * (time.perf_counter() - t0))
    parent = runs.start_parent_run(spec, tracking.resolve_uri(uri), None)
    # A real stage's child run also carries its flattened config (~100 params).
    cfg = load_stage_config("clip", "B16", proxy=True)
    n_params = len(flatten(cfg))
    mlflow_ms = []
    for i in range(trials):
        t0 = time.perf_counter()
        run_id = runs.start_trial_run(spec, tracking.resolve_uri(uri), parent, i, {"x": 0.5, "y": 1.0},
                                      [cfg], retry_of=None, worker=0)
        logger = runs.trial_logger(tracking.resolve_uri(uri), run_id)
        logger.log_metrics({"loss": 1.0}, step=1)
        runs.finish_trial_run(tracking.resolve_uri(uri), run_id, logger, "COMPLETE")
        mlflow_ms.append(1e3 * (time.perf_counter() - t0))
    return {
        "storage_ms_per_trial": statistics.median(storage_ms),
        "mlflow_ms_per_trial": statistics.median(mlflow_ms),
        "total_ms_per_trial": statistics.median(storage_ms) + statistics.median(mlflow_ms),
        "mlflow_params_per_run": n_params + 2,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Sweep machinery: trials/min with 1 and 2 workers, per-trial overhead.")
    p.add_argument("--trials", type=int, default=30, help="trials per throughput run (default 30)")
    p.add_argument("--overhead-trials", type=int, default=20, help="trials for the overhead split (default 20)")
    p.add_argument("--mlflow-uri", default=None, help="MLflow server URI (default: a SQLite file in the work folder)")
    p.add_argument("--workdir", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT")
    args = p.parse_args(argv)
    out = Path(args.json).resolve() if args.json else None
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    uri = args.mlflow_uri or f"sqlite:///{folder / 'mlflow.db'}"
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_before": os.getloadavg()[0]},
        "mlflow_uri": "server" if uri.startswith("http") else "sqlite",
        "overhead": overhead(folder, args.overhead_trials, uri),
        "throughput": [throughput(folder, args.trials, w, uri) for w in (1, 2)],
    }
    result["machine"]["load_avg_after"] = os.getloadavg()[0]
    o = result["overhead"]
    print(f"per-trial overhead ({result['mlflow_uri']} MLflow): storage {o['storage_ms_per_trial']:.1f} ms + "
          f"MLflow {o['mlflow_ms_per_trial']:.1f} ms = {o['total_ms_per_trial']:.1f} ms "
          f"({o['mlflow_params_per_run']} params per child run)")
    for t in result["throughput"]:
        print(f"{t['workers']} worker(s): {t['trials']} trials, {t['trials_per_min_steady']:.1f} trials/min steady, "
              f"{t['trials_per_min_wall']:.1f} trials/min over the whole command ({t['wall_s']:.1f} s), "
              f"median trial {1e3 * t['trial_s_median']:.0f} ms")
    print(f"load average: {result['machine']['load_avg_before']:.1f} -> {result['machine']['load_avg_after']:.1f}")
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
