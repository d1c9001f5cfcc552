"""``python -m scaling.ladder``: plan, dry-run, dispatch and follow the weak-to-strong ladder.

The planning path (``--help``, ``--dry-run``, ``status``) imports no torch, mlflow, submitit or
deepspeed; they load only when stages are actually dispatched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from scaling import config_provenance as provenance
from scaling import tracking
from scaling.config import ConfigError, flatten
from scaling.ladder.describe import headline_metrics, plan_json
from scaling.ladder.estimate import plan_problems, plan_rows
from scaling.ladder.plan import plan_ladder
from scaling.ladder.render import phase_lines, plan_table, plan_totals, status_table
from scaling.ladder.status import stage_rows
from scaling.launch.executors import EXECUTORS, LaunchError, resolve_executor
from scaling.models.specs import SpecError
from scaling.stage_state import STOPPED_EXIT, FolderBusy, hold_folder
from scaling.tracking import resolve_uri
from scaling.tracking.probe import store_problem, unreachable
from scaling.tracking.ui import describe_experiment, ladder_description, publish_view, where_to_look
from scaling.uris import error_line, mask

EPILOG = """\
overrides (key=value, validated against the stage schema; see experiments/ladders/eva.yaml):
  train.samples=5000              every stage
  mim.optim.lr=1e-3               every stage of one kind (mim | clip)
  clip@18B.train.samples=5000     one stage
  ladder.teacher_checkpoint=PATH  the --from rung's CLIP checkpoint (needed with --no-proxy)

examples:
  python -m scaling.ladder --from E14 --to 18B --dry-run
  python -m scaling.ladder --from E14 --to 18B                 # proxy ladder, local executor
  python -m scaling.ladder --from E14 --to 18B --no-proxy --executor slurm \\
      resources.partition=gpu ladder.teacher_checkpoint=/ckpt/eva02_clip_e14plus
  python -m scaling.ladder --from B16 --to 18B --no-proxy --dry-run resources.micro_batch=auto
  python -m scaling.ladder status --from E14 --to 18B     # same selectors and overrides as the run

A real-size plan whose stage does not fit its GPUs or divide its batch exits 2 before submitting
anything, with what would fit; --force submits anyway.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scaling.ladder",
        description="Plan, dispatch and track the weak-to-strong EVA ladder (teacher CLIP -> MIM -> "
        "CLIP, rung by rung). 'status' as first argument shows each stage's state instead.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="start", metavar="RUNG",
                        help="teacher rung (default: --to's teacher in the ladder file)")
    parser.add_argument("--to", dest="end", metavar="RUNG", help="last rung to train (default: the ladder's last)")
    parser.add_argument("--via", action="append", default=[], metavar="RUNG",
                        help="go through these rungs (repeat or comma-separate); default: the ladder file's teachers")
    parser.add_argument("--ladder", metavar="FILE", help="ladder file (default: experiments/ladders/eva.yaml)")
    parser.add_argument("--executor", choices=EXECUTORS, default="auto",
                        help="auto: slurm when a SLURM cluster is reachable, else local subprocesses")
    proxy = parser.add_mutually_exclusive_group()
    proxy.add_argument("--proxy", dest="proxy", action="store_true", default=None,
                       help="tiny CPU proxies of every rung")
    proxy.add_argument("--no-proxy", dest="proxy", action="store_false", help="real sizes (GPUs)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its costs; submit nothing")
    parser.add_argument("--show-config", metavar="STAGE",
                        help="print STAGE's resolved config (e.g. clip@18B), each key with the layer that set it; "
                             "run nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable output (plan, status or results)")
    parser.add_argument("--force", action="store_true",
                        help="submit even when a stage does not fit its GPUs or divide its batch (warns)")
    parser.add_argument("--experiment", help="MLflow experiment (default: the ladder file's)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--runs-dir", default="runs",
                        help="where stage folders go: RUNS/<experiment>/<stage>-<fingerprint>")
    parser.add_argument("--jobs-dir", help="submitit folder (default: RUNS/<experiment>/jobs)")
    parser.add_argument("--strict-tracking", action="store_true",
                        help="exit 2 when the MLflow server does not answer, instead of training untracked")
    parser.add_argument("--wait", action="store_true",
                        help="when another ladder runs in the same experiment folder, wait for it instead of refusing")
    parser.add_argument("--report-dir", help="where the final report goes (default: reports/<experiment>)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def gpu_visible() -> bool:
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def _fail(message: str) -> int:
    print(f"scaling.ladder: error: {message}", file=sys.stderr)
    return 2


def _plan(args: argparse.Namespace, proxy: bool, dry: bool):
    via = [v for item in args.via for v in item.split(",") if v]
    return plan_ladder(args.start, args.end, via, ladder=args.ladder, proxy=proxy, overrides=args.overrides,
                       experiment=args.experiment, runs_dir=args.runs_dir, tracking_uri=args.tracking_uri,
                       allow_missing_teacher=dry)


def _results(plan, out: Any, uri: str | None, report_dir: str | None, as_json: bool) -> None:
    rows = stage_rows(plan)
    if as_json:
        print(json.dumps(rows, indent=1), file=out)
        return
    print("\nresults (zero-shot top-1 on the held-out evaluation set):", file=out)
    print(status_table(rows), file=out)
    # the legend names the synthetic world's colours (scaling.data), which the dry run must not load
    from scaling.ladder.legend import results_legend

    print("", *results_legend(plan, rows), sep="\n", file=out)
    if uri:
        print("", *where_to_look(uri, plan.experiment), sep="\n", file=out)
        try:
            # pandas, scipy and matplotlib only when a report is written
            from scaling.analysis.report import write_report
        except ImportError:
            return
        try:
            path = write_report(uri, plan.experiment, Path(report_dir or Path("reports") / plan.experiment),
                                metric=plan.ladder.law_metric, log_artifacts=True)
            print(f"report: {path}", file=out)
        except Exception as exc:  # a report problem must not turn a finished ladder into an error
            print(f"warning: no report written: {exc}", file=out)


def split_command(argv: list[str] | None) -> tuple[str, list[str]]:
    """(``run`` | ``status``, the rest): the command word is optional and defaults to ``run``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("status", "run"):
        return argv[0], argv[1:]
    return "run", argv


def print_status(plan: Any, as_json: bool, uri: str | None = None) -> None:
    """Each stage's state, run, job, progress and metrics (``status``); a line on stderr when the
    MLflow store at ``uri`` cannot be reached or holds no such experiment."""
    rows = stage_rows(plan)
    print(json.dumps(rows, indent=1) if as_json else status_table(rows))
    for row in [] if as_json else [r for r in rows if r["untracked"]]:
        print(f"note: {row['stage']} ran untracked (MLflow was down); its metrics wait in {row['out_dir']}/"
              "metric_spool.jsonl: the same command, run with the server up, records them")
    problem = store_problem(uri, plan.experiment) if uri else None
    if problem:
        print(f"MLflow: {problem}; the states above are the stage folders' own", file=sys.stderr)


def main(argv: list[str] | None = None, stage_fn: Any = None) -> int:
    command, argv = split_command(argv)
    args = build_parser().parse_args(argv)

    try:
        executor = resolve_executor(args.executor) if command == "run" else args.executor
        proxy = args.proxy
        if proxy is None:
            proxy = not gpu_visible()
        dry = args.dry_run or command == "status" or bool(args.show_config)
        with provenance.recording() as origins:
            plan = _plan(args, proxy, dry)
        if args.show_config:
            names = [s.name for s in plan.stages]
            if args.show_config not in names:
                return _fail(f"--show-config: no stage '{args.show_config}' on this path; "
                             f"its stages: {', '.join(names)}")
            stage = plan.stage(args.show_config)
            print(provenance.format_config(flatten(stage.cfg), origins.get(stage.name, {})))
            return 0
    except (ConfigError, LaunchError, SpecError, ValueError) as exc:
        return _fail(str(exc))
    if command == "run":
        for note in plan.notes:
            print(note, file=sys.stderr)

    if command == "status":
        print_status(plan, args.json, resolve_uri(args.tracking_uri or plan.stages[0].cfg.tracking.uri))
        return 0

    rows = plan_rows(plan)
    problems = plan_problems(rows)
    if args.dry_run:
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            mode = "proxy (CPU)" if plan.proxy else "real sizes"
            print(f"ladder '{plan.ladder.name}' {' -> '.join(plan.path)}, {mode}, experiment '{plan.experiment}'")
            print(plan_table(rows))
            for line in phase_lines(rows):
                print(line)
            print(plan_totals(rows))
    if problems:
        for problem in problems:
            print(f"scaling.ladder: {'warning' if args.force else 'error'}: {problem}", file=sys.stderr)
        if not args.force:
            print("scaling.ladder: nothing submitted; change the settings above, or pass --force to submit "
                  "anyway", file=sys.stderr)
            return 2
        print(f"scaling.ladder: warning: --force: {'planning' if args.dry_run else 'submitting'} "
              f"{len(problems)} stage problem(s) anyway", file=sys.stderr)
    if args.dry_run:
        return 0

    if args.proxy is None and args.executor == "auto":
        where = "no GPU" if proxy else "a GPU"
        print(f"{where} and {'SLURM' if executor == 'slurm' else 'no SLURM'} here: running the "
              f"{'proxy' if proxy else 'real-size'} ladder on the {executor} executor "
              "(--no-proxy / --executor slurm to change)")
    outcome = run_plan(plan, executor, args, "python -m scaling.ladder", stage_fn=stage_fn)
    if isinstance(outcome, int):
        return outcome
    _results(plan, sys.stdout, outcome.uri, args.report_dir, args.json)
    return 0 if outcome.ok else STOPPED_EXIT if outcome.stopped else 1


def announce(plan: Any, uri: str, command: str, report: Path) -> None:
    """Describe the plan's experiment and store its runs view, then print where to look at it."""
    what = f"{plan.ladder.name} ladder {' -> '.join(plan.path)}" + (" (CPU proxies)" if plan.proxy else "")
    describe_experiment(uri, plan.experiment, ladder_description(what, command, str(report)))
    publish_view(uri, plan.experiment, [plan.ladder.law_metric, "eval/mim/loss", "train/loss"])
    print(*where_to_look(uri, plan.experiment), sep="\n", flush=True)


def start_tracking(plan: Any, uri: str, command: str, args: argparse.Namespace) -> bool:
    """Announce the plan in the store at ``uri``; ``False`` when it cannot be (the stages then run
    untracked, after one warning line), ``LaunchError`` instead with ``--strict-tracking``."""
    why = unreachable(uri)
    if why is None:
        try:
            announce(plan, uri, command, Path(args.report_dir or Path("reports") / plan.experiment) / "report.md")
            return True
        except Exception as exc:  # a down database, a server that errs: the same choice as a silent one
            why = error_line(exc)
    trouble = f"MLflow at {mask(uri)} does not answer ({why})"
    if getattr(args, "strict_tracking", False):
        raise LaunchError(f"{trouble}; start it, or drop --strict-tracking to train untracked")
    print(f"warning: {trouble}: the stages run untracked, each keeps its metrics in <stage folder>/"
          "metric_spool.jsonl; run the same command once the server is back to record them "
          "(--strict-tracking refuses instead)", file=sys.stderr, flush=True)
    return False


def run_plan(plan: Any, executor: str, args: argparse.Namespace, prog: str,
             stage_fn: Any = None, parallel: int = 1) -> Any:
    """Dispatch ``plan`` (the ladder's and the study's commands): its ``Outcome``, with ``uri`` set
    to the store the runs went to (None: they ran untracked), or the exit code when it was
    interrupted or could not launch."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # the dispatcher loads submitit and the jobs: --help, --dry-run and status stay light
    from scaling.ladder.dispatch import Dispatcher

    dispatcher = Dispatcher(plan, executor, tracking_uri=args.tracking_uri, jobs_dir=args.jobs_dir,
                            stage_fn=stage_fn, argv=[prog, *sys.argv[1:]], parallel=parallel)
    try:
        uri = resolve_uri(args.tracking_uri or plan.stages[0].cfg.tracking.uri)
        # one ladder per experiment folder: a second one would train every stage twice
        with hold_folder(plan.runs_dir / plan.experiment, "ladder folder", wait=getattr(args, "wait", False)):
            dispatcher.track = start_tracking(plan, uri, " ".join(dispatcher.argv), args)
            outcome = dispatcher.run()
    except KeyboardInterrupt:
        return 130
    except (ConfigError, LaunchError, FolderBusy) as exc:
        print(f"{prog.removeprefix('python -m ')}: error: {exc}", file=sys.stderr)
        return 2
    if outcome.uri is None and dispatcher.track:
        outcome.uri = uri
    describe_parent(plan, outcome)
    return outcome


def describe_parent(plan: Any, outcome: Any) -> None:
    """The parent run's plan (``plan.json``, as ``--dry-run --json``) and its stages' headline
    metrics (``clip-18B/eval/synth_cls/top1``), so the runs table compares invocations."""
    if not outcome.parent_run_id:
        return
    try:
        mlc = tracking.client(outcome.uri)
        mlc.log_text(outcome.parent_run_id, plan_json(plan), "plan.json")
        for key, value in headline_metrics({r["stage"]: r for r in stage_rows(plan)}).items():
            mlc.log_metric(outcome.parent_run_id, key, value, step=0)
    except Exception as exc:  # tracking trouble must not hide the ladder's own outcome
        print(f"warning: the ladder's MLflow run was not described: {exc}", file=sys.stderr)
