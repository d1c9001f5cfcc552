"""``python -m scaling.sweep FILE [key=value ...]`` and ``python -m scaling.sweep status FILE``."""

from __future__ import annotations

import argparse
import json
import sys

from scaling.config import ConfigError
from scaling.launch import EXECUTORS, LaunchError
from scaling.sweep import run_sweep, study_status
from scaling.sweep.runner import prepare
from scaling.sweep.spec import SweepError, load_sweep
from scaling.sweep.status import STATES, format_status, format_table, result_rows

RUN_EPILOG = """\
key=value overrides change the sweep file, e.g. n_trials=4 workers=2 executor=local
storage=postgresql://... (never sqlite with several workers) base.overrides=[train.samples=2048].

The study is named after the file (or name=...), stored in a journal file in the sweep folder
(runs/sweeps/NAME/ by default); re-running the same command continues it to n_trials.
"""


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scaling.sweep",
        description="Run (or resume) an Optuna sweep over a stage: N asynchronous workers, pruning, "
        "MLflow parent/child runs. 'python -m scaling.sweep status FILE' shows a study's state.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="sweep file (path, or a name under sweeps/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the sweep file")
    p.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="where workers run (default: the file's 'executor', else auto)")
    p.add_argument("--check", action="store_true", help="validate the file and open the storage; submit nothing")
    p.add_argument("--detach", action="store_true", help="return once the workers are submitted")
    p.add_argument("--json", metavar="OUT", help="also write the final summary as JSON to OUT")
    return p


def _status_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scaling.sweep status",
                                description="Trials by state, the current best and the result table of a sweep.")
    p.add_argument("file", help="sweep file (path, or a name under sweeps/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="the same overrides the sweep ran with")
    p.add_argument("--all", action="store_true", help="list every trial (also failed and running ones)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def _fail(msg: str) -> int:
    print(f"scaling.sweep: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    status = bool(argv) and argv[0] == "status"
    args = (_status_parser() if status else _run_parser()).parse_intermixed_args(argv[1:] if status else argv)
    try:
        spec = load_sweep(args.file, args.overrides)
        if status:
            summary = study_status(spec)
            if args.json:
                print(json.dumps(summary, indent=2, default=str))
                return 0
            print(format_status(summary, spec))
            states = STATES if args.all else ("COMPLETE", "PRUNED")
            print(format_table(result_rows(summary, spec, states)))
            return 0
        if args.check:
            spec, _, kind = prepare(spec, args.executor, create=False)
            print(f"{spec.path}: ok ({len(spec.params)} parameters, {spec.n_trials} trials, "
                  f"{spec.workers} {kind} worker(s), storage {spec.storage_label()})")
            return 0
        summary = run_sweep(spec, executor=args.executor, detach=args.detach)
    except (SweepError, ConfigError) as exc:
        return _fail(str(exc))
    except Exception as exc:
        if isinstance(exc, LaunchError):
            return _fail(str(exc))
        raise
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    if summary.get("detached"):
        print(f"detached; follow with: python -m scaling.sweep status {args.file}")
        return 0
    print(format_status(summary, spec))
    print(format_table(result_rows(summary, spec, ("COMPLETE", "PRUNED"))))
    counts = summary["counts"]
    return 0 if counts["COMPLETE"] + counts["PRUNED"] >= spec.n_trials else 1


if __name__ == "__main__":
    sys.exit(main())
