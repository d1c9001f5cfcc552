"""``python -m scaling.study``: the ladder plus its weak-to-strong controls, and the report.

The same selectors and overrides as ``python -m scaling.ladder`` (they plan the same ladder),
plus ``--seeds`` and ``--arms``. ``--dry-run`` and ``status`` import no torch or mlflow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from scaling import tracking
from scaling.config import ConfigError
from scaling.ladder.cli import build_parser as ladder_parser
from scaling.ladder.cli import gpu_visible, print_status, run_plan, split_command
from scaling.ladder.estimate import plan_rows
from scaling.ladder.plan import plan_ladder
from scaling.ladder.render import plan_table, plan_totals, status_table
from scaling.ladder.status import stage_rows
from scaling.launch.executors import LaunchError, resolve_executor
from scaling.models.specs import SpecError
from scaling.study.arms import plan_study

DESCRIPTION = """\
Run a weak-to-strong ladder together with its controls, on the same budget, and report the gain.

Every CLIP stage that the ladder initialises from its MIM stage runs in three arms at the same CLIP
samples and recipe:
  mim_init     vision tower from the rung's MIM stage (the ladder's own stage is seed 0)
  random_init  vision tower at random init, text tower as in the ladder
  scratch      both towers at random init (left out where the ladder's text tower starts from
               scratch anyway: there random_init is the scratch arm)
each with --seeds seeds (train.seed = the recipe's seed + 0, 1, ...). MIM stages run once. All runs
are siblings in the ladder's MLflow experiment under one parent run, tagged arm=..., seed=...,
base_stage=clip@RUNG. The report (reports/<experiment>/report.md) gets a weak-to-strong section:
per stage, gain = mean(mim_init) - mean(random_init) zero-shot top-1 with its 90 % bootstrap
interval over seeds, and the scaling law with its held-out-stage rollout. 'status' as first
argument shows each stage's state instead; a rerun skips what finished (same fingerprints).
"""

EPILOG = """\
examples:
  python -m scaling.study --from E14 --to 18B --dry-run          # the stages and their cost
  python -m scaling.study --from E14 --to 18B                    # proxy ladder + controls, 3 seeds
  python -m scaling.study --ladder study --seeds 3               # the scaling study (experiments/ladders/study.yaml)
  python -m scaling.study --from E14 --to 18B --seeds 2 --arms mim_init,random_init train.samples=400
  python -m scaling.study status --from E14 --to 18B
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ladder_parser()  # the same selectors, executors and overrides as the ladder
    parser.prog = "python -m scaling.study"
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3; 2 gives an interval, barely)")
    parser.add_argument("--arms", default="mim_init,random_init,scratch",
                        help="comma-separated arms (default: mim_init,random_init,scratch)")
    parser.add_argument("--parallel", type=int, default=min(os.cpu_count() or 1, 8), metavar="N",
                        help="local executor: run up to N stages at once whose upstream finished (default: "
                             "the CPU count, at most 8; the arms are independent, one thread each)")
    return parser


def _fail(message: str) -> int:
    print(f"scaling.study: error: {message}", file=sys.stderr)
    return 2


def _study(args: argparse.Namespace, proxy: bool, dry: bool):
    via = [v for item in args.via for v in item.split(",") if v]
    plan = plan_ladder(args.start, args.end, via, ladder=args.ladder, proxy=proxy, overrides=args.overrides,
                       experiment=args.experiment, runs_dir=args.runs_dir, tracking_uri=args.tracking_uri,
                       allow_missing_teacher=dry)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    return plan_study(plan, args.seeds, arms)


def _dry_run(study, as_json: bool) -> None:
    rows = plan_rows(study.plan)
    for row, stage in zip(rows, study.plan.stages, strict=True):
        row.update(stage.tags)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    plan = study.plan
    mode = "proxy (CPU)" if plan.proxy else "real sizes"
    print(f"study on ladder '{plan.ladder.name}' {' -> '.join(plan.path)}, {mode}, experiment '{plan.experiment}': "
          f"{len(study.compared)} compared CLIP stage(s), arms {', '.join(study.arms)}, {len(study.seeds)} seed(s)")
    print(plan_table(rows))
    flops = sum(r["train_flops"] for r in rows)
    clip = sum(r["samples"] for r in rows if r["kind"] == "clip")
    print(f"\n{len(rows)} stages, {clip} CLIP samples in all, {flops:.3g} training FLOPs")
    print(plan_totals(rows))
    for note in study.notes:
        print(f"note: {note}")


def _tag_runs(uri: str, study, outcome) -> None:
    """Arm tags on every stage run (also those skipped as finished earlier), study tags on the parent."""
    for stage in study.plan.stages:
        run_id = outcome.run_ids.get(stage.name)
        if stage.tags and run_id:
            try:
                tracking.set_tags(uri, run_id, stage.tags)
            except Exception as exc:  # a finished run kept elsewhere: the report reads what it can
                print(f"warning: could not tag {stage.name} ({run_id}): {exc}", file=sys.stderr)
    if outcome.parent_run_id:
        tracking.set_tags(uri, outcome.parent_run_id, {"role": "study", "study_arms": ",".join(study.arms),
                                                       "study_seeds": str(len(study.seeds))})


def _summary(uri: str, experiment: str, report_dir: Path, out: Any, law_metric: str) -> None:
    # pandas and scipy only for the summary
    from scaling.analysis.arms import verdict, weak_to_strong
    from scaling.analysis.load import runs_frame
    from scaling.analysis.report import DEFAULT_METRIC, write_report

    path = write_report(uri, experiment, report_dir, metric=law_metric, log_artifacts=True)
    table = weak_to_strong(runs_frame(uri, experiment, with_costs=False), DEFAULT_METRIC)
    print(f"\nweak-to-strong gain (mim_init - random_init, {DEFAULT_METRIC}, 90 % bootstrap over seeds):", file=out)
    for _, row in table.iterrows():
        lo, hi = row["mim_init-random_init_low"], row["mim_init-random_init_high"]
        interval = f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo == lo else "(no interval)"
        print(f"  {row['stage']}: {100 * row['mim_init-random_init']:+.1f} points {interval}; "
              f"seeds {int(row['n_mim_init'])}/{int(row['n_random_init'])}/{int(row['n_scratch'])}; {verdict(row)}",
              file=out)  # fmt: skip
    print(f"report: {path}", file=out)


def main(argv: list[str] | None = None) -> int:
    command, argv = split_command(argv)
    args = build_parser().parse_args(argv)

    try:
        executor = resolve_executor(args.executor) if command == "run" and not args.dry_run else args.executor
        proxy = not gpu_visible() if args.proxy is None else args.proxy
        study = _study(args, proxy, args.dry_run or command == "status")
    except (ConfigError, LaunchError, SpecError, ValueError) as exc:
        return _fail(str(exc))
    if command == "status":
        print_status(study.plan, args.json)
        return 0
    if args.dry_run:
        _dry_run(study, args.json)
        return 0
    for note in study.notes:
        print(note, file=sys.stderr)
    outcome = run_plan(study.plan, executor, args, "python -m scaling.study", parallel=args.parallel)
    if isinstance(outcome, int):
        return outcome
    uri = outcome.uri
    _tag_runs(uri, study, outcome)
    print("\nresults (zero-shot top-1 on the held-out evaluation set):")
    print(status_table(stage_rows(study.plan)))
    report_dir = Path(args.report_dir or Path("reports") / study.plan.experiment)
    try:
        _summary(uri, study.plan.experiment, report_dir, sys.stdout, study.plan.ladder.law_metric)
    except Exception as exc:  # a report problem must not turn a finished study into an error
        print(f"warning: no report written: {type(exc).__name__}: {exc}")
    return 0 if outcome.ok else 1
