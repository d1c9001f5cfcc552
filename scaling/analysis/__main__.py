"""``python -m scaling.analysis``: reports from MLflow and the published EVA numbers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaling.stages import LAW_METRIC
from scaling.uris import mask

EXAMPLES = """examples:
  python -m scaling.analysis report --experiment ladder-eva
  python -m scaling.analysis report --experiment sweep-clip-lr --tracking-uri http://127.0.0.1:5000 --out reports/sweep
  python -m scaling.analysis published --table clip_models
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scaling.analysis",
        description="Scaling plots, power-law fits and reports from MLflow records.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="write figures (PNG + SVG) and report.md for one experiment")
    rep.add_argument("--experiment", "-e", required=True, help="MLflow experiment (ladder or sweep study)")
    rep.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI or a .db file "
                          "(default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")  # fmt: skip
    rep.add_argument("--out", default=None, help="output folder (default: reports/<experiment>)")
    rep.add_argument("--metric", default=LAW_METRIC,
                     help=f"metric to fit against compute (default {LAW_METRIC}; a ladder file's law_metric, "
                          "e.g. eval/synth_ret/loss for the study ladder)")  # fmt: skip
    rep.add_argument("--two-step", action="store_true",
                     help="also fit the two-step law: compute -> the held-out task loss of the metric's set "
                          "(eval/<set>/loss; the train loss for runs without one) "
                          "-> accuracy (OLMo's sigmoid link)")  # fmt: skip
    rep.add_argument("--law-compute", choices=("own", "inherited"), default="own",
                     help="the law's compute axis: each stage's own training FLOPs (default), or plus the FLOPs of "
                          "every stage it starts from (teacher, MIM, lower rungs; studies tag it)")
    rep.add_argument("--log-artifacts", action="store_true",
                     help="attach the report to the experiment's latest parent run and record predictions")  # fmt: skip
    pub = sub.add_parser("published", help="print the published EVA results with their source tables")
    pub.add_argument("--table", default=None, help="one table (clip_models, eva02_sizes, headlines); default all")
    pub.add_argument("--sources", action="store_true", help="also print each row's source and note")
    return parser


def _published(args: argparse.Namespace) -> int:
    # pandas and scipy (~1.5 s) load with the subcommand, so that --help stays instant
    from scaling.analysis import published

    names = [args.table] if args.table else list(published.TABLES)
    for name in names:
        if name not in published.TABLES:
            print(f"error: unknown table {name!r}; choose one of {', '.join(published.TABLES)}", file=sys.stderr)
            return 2
        print(published.format_table(name))
        if args.sources:
            df = published.table(name)
            for _, row in df.iterrows():
                note = f" — {row['note']}" if isinstance(row.get("note"), str) else ""
                print(f"  {row['model']}: {row['table']}; {row['source']}{note}")
        print()
    return 0


def _report(args: argparse.Namespace) -> int:
    # pandas, scipy and MLflow load with the subcommand, so that --help stays instant
    from scaling.analysis.load import AnalysisError
    from scaling.analysis.report import build_report

    out = Path(args.out) if args.out else Path("reports") / args.experiment
    try:
        report = build_report(args.tracking_uri, args.experiment, out, metric=args.metric,
                              log_artifacts=args.log_artifacts, two_step=args.two_step,
                              compute=args.law_compute)  # fmt: skip
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # e.g. an unreachable tracking server: one line, not a traceback
        print(f"error: could not read MLflow at {mask(args.tracking_uri) or 'the default URI'}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)  # fmt: skip
        return 1
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {report.path} and {len(report.figures)} figure files")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _published(args) if args.command == "published" else _report(args)


if __name__ == "__main__":
    sys.exit(main())
