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
from scaling.ladder.legend import results_legend
from scaling.ladder.plan import plan_ladder
from scaling.ladder.render import plan_table, plan_totals, status_table
from scaling.ladder.status import stage_rows
from scaling.launch.executors import LaunchError, resolve_executor
from scaling.models.specs import SpecError
from scaling.stage_state import STOPPED_EXIT
from scaling.study.arms import DEFAULT_ARMS, plan_study
from scaling.tracking.ui import where_to_look

DESCRIPTION = """\
Run a weak-to-strong ladder together with its controls, on the same budget, and report the gain.

Every CLIP stage that the ladder initialises from its MIM stage runs in these arms, same recipe:
  mim_init             vision tower from the rung's MIM stage (the ladder's own stage is seed 0)
  random_init          vision tower at random init, text tower as in the ladder, the same CLIP
                       samples (sample efficiency: what the MIM init is worth per CLIP sample)
  random_init_compute  the same, given the CLIP samples whose FLOPs equal mim_init's CLIP + MIM
                       FLOPs by the cost model (compute efficiency; --match-teacher: + the teacher's)
  scratch              both towers at random init (left out where the ladder's text tower starts
                       from scratch anyway: there random_init is the scratch arm)
each with --seeds seeds (train.seed = the recipe's seed + 0, 1, ...; the seed tag is that absolute
seed), at each of --budgets (mim_init's CLIP samples; default the stage's own). By default every
seed reads the ladder's one teacher and MIM stage; --reseed-upstream gives each seed its own copy
of the chain, so the interval holds the teacher's and the MIM stage's spread too. All runs are
siblings in the ladder's MLflow experiment under one parent run, tagged arm, seed, budget,
upstream_seed, base_stage and inherited_flops. The report (reports/<experiment>/report.md) gets
a weak-to-strong section: per stage and budget, gain = mean(mim_init) - mean(control) with its
90 % t interval (paired over seeds where both arms ran the same seeds, Welch otherwise), on
top-1 and both held-out losses, the gain against CLIP samples and total compute, and the
scaling law with its held-out-stage rollout against naive predictions. 'status' as first
argument shows each stage's state instead; a rerun skips what finished (same fingerprints).
"""

EPILOG = """\
examples:
  python -m scaling.study --from E14 --to 18B --dry-run          # the stages and their cost
  python -m scaling.study --from E14 --to 18B                    # proxy ladder + controls, 3 seeds
  python -m scaling.study --from E14 --to 18B --reseed-upstream --budgets 2000,4000,8000
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
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help=f"comma-separated arms (default: {','.join(DEFAULT_ARMS)}; mim_init alone: seeds "
                             "for the law, no controls)")
    parser.add_argument("--budgets", default=None, metavar="N,N,...",
                        help="mim_init's CLIP samples to compare the arms at, e.g. 2000,4000,8000,16000 (default: "
                             "each stage's own); warm-up keeps its fraction")
    parser.add_argument("--reseed-upstream", action="store_true",
                        help="each seed its own teacher and MIM chain (the interval then holds their spread)")
    parser.add_argument("--match-teacher", action="store_true",
                        help="random_init_compute also gets the MIM teacher's FLOPs (default: CLIP + MIM only)")
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
    budgets = None
    if args.budgets is not None:
        try:
            budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
        except ValueError:
            raise ConfigError(f"--budgets {args.budgets}: give whole CLIP sample counts, e.g. 2000,4000,8000") from None
    return plan_study(plan, args.seeds, arms, budgets=budgets, reseed_upstream=args.reseed_upstream,
                      match_teacher=args.match_teacher)


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
          f"{len(study.compared)} compared CLIP stage(s), arms {', '.join(study.arms)}, {len(study.seeds)} seed(s), "
          f"upstream {'reseeded per seed' if study.reseed_upstream else 'shared'}")
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
                                                       "study_seeds": str(len(study.seeds)),
                                                       "study_upstream": "reseeded" if study.reseed_upstream
                                                       else "shared"})  # fmt: skip


def _summary(uri: str, experiment: str, report_dir: Path, out: Any, law_metric: str) -> None:
    # pandas and scipy only for the summary
    from scaling.analysis.arms import COMPARISONS, signed_gain, verdict, weak_to_strong
    from scaling.analysis.load import runs_frame
    from scaling.analysis.report import DEFAULT_METRIC, write_report

    path = write_report(uri, experiment, report_dir, metric=law_metric, log_artifacts=True)
    table = weak_to_strong(runs_frame(uri, experiment, with_costs=False), DEFAULT_METRIC)
    print(f"\nweak-to-strong gain in {DEFAULT_METRIC} (mim_init - control, points, 90 % t interval over seeds):",
          file=out)
    for _, row in table.iterrows():
        for a, b, _ in COMPARISONS:
            key = f"{a}-{b}"
            if not row[f"n_{b}"]:
                continue
            lo, hi = row[f"{key}_low"], row[f"{key}_high"]
            interval = f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo == lo else "(no interval)"
            gain = signed_gain(row[key], "+.1f", scale=100)
            print(f"  {row['stage']} at {row['budget']} samples ({row['upstream']} upstream) vs {b}: "
                  f"{gain} {interval}; {row[f'{key}_method']}; {verdict(row, key)}", file=out)
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
        uri = tracking.resolve_uri(args.tracking_uri or study.plan.stages[0].cfg.tracking.uri)
        print_status(study.plan, args.json, uri)
        return 0
    if args.dry_run:
        _dry_run(study, args.json)
        return 0
    for note in study.notes:
        print(note, file=sys.stderr)
    outcome = run_plan(study.plan, executor, args, "python -m scaling.study", parallel=args.parallel)
    if isinstance(outcome, int):
        return outcome
    uri = outcome.uri  # None: the stages ran untracked (the store was down at start), nothing to tag or read
    if uri:
        _tag_runs(uri, study, outcome)
    print("\nresults (zero-shot top-1 on the held-out evaluation set):")
    rows = stage_rows(study.plan)
    print(status_table(rows))
    print("", *results_legend(study.plan, rows), sep="\n")
    report_dir = Path(args.report_dir or Path("reports") / study.plan.experiment)
    if uri:
        try:
            _summary(uri, study.plan.experiment, report_dir, sys.stdout, study.plan.ladder.law_metric)
        except Exception as exc:  # a report problem must not turn a finished study into an error
            print(f"warning: no report written: {type(exc).__name__}: {exc}")
        print("", *where_to_look(uri, study.plan.experiment), sep="\n")
    return 0 if outcome.ok else STOPPED_EXIT if outcome.stopped else 1
