"""``python -m scaling.export``: a finished CLIP stage as an open_clip model folder, and
CLIP_benchmark's results on it logged back to the stage's MLflow run."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from scaling.export.errors import ExportError
from scaling.export.stage import find_stage

EPILOG = """\
examples:
  python -m scaling.export clip@E14 --format open_clip
      newest finished clip@E14 under runs/*/ -> <stage folder>/export/open_clip/, loadable as
      open_clip.create_model('local-dir:<folder>') and by clip_benchmark:
  clip_benchmark eval --model local-dir:<folder> --pretrained export --dataset wds/vtab-cifar10 \\
      --dataset_root data/wds_vtab-cifar10 --task zeroshot_classification --no_amp --output res.json
  python -m scaling.export clip@E14 --log-results res.json
      logs CLIP_benchmark's numbers to the stage's MLflow run as benchmark/<set>/<metric>
      (top1, top5, image_r<k>, text_r<k>: the names of the stage's own eval/<set>/<metric>)

The same folder evaluated by the toolkit: eval.classification=data/wds_vtab-cifar10 (or
eval.retrieval for a set whose dataset_type.txt says retrieval) logs eval/vtab-cifar10/top1.
RMSNorm towers (EVA-CLIP-8B/18B) have no open_clip form; the command says so.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scaling.export", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", help="a stage folder (with final/ and config.yaml), or a stage name such as "
                                      "clip@E14: the newest finished one under RUNS/<experiment>/")
    parser.add_argument("--format", choices=["open_clip"], default="open_clip", help="layout to write")
    parser.add_argument("--out", help="folder to write (default: <stage folder>/export/<format>)")
    parser.add_argument("--runs-dir", default="runs", help="where stage names are looked up (default: runs)")
    parser.add_argument("--experiment", help="look stage names up in this experiment only")
    parser.add_argument("--log-results", nargs="+", metavar="JSON",
                        help="instead of exporting: log clip_benchmark results files to the stage's run")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the stage's tracking.uri, "
                                               "$MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing open_clip's embeddings with the stage's own (proxies only)")
    return parser


def _run(args: argparse.Namespace) -> int:
    stage = find_stage(args.stage, args.runs_dir, args.experiment)
    if args.log_results:
        from scaling.export.benchmark import log_results  # MLflow: only this path needs it

        for key, value in sorted(log_results(stage, args.log_results, args.tracking_uri).items()):
            print(f"{key} = {value:.6g}")
        return 0
    from scaling.export.open_clip import check_export, export_open_clip  # torch: not for --help

    out = Path(args.out) if args.out else stage.out_dir / "export" / args.format
    export_open_clip(stage, out)
    print(f"{stage.name} ({stage.out_dir}) -> {out}")
    if stage.cfg.stage.proxy and not args.no_check:
        diff = check_export(out, stage)
        print(f"open_clip reproduces the stage's embeddings: max |difference| {diff:.2e}")
    print("evaluate with: " + shlex.join(["clip_benchmark", "eval", "--model", f"local-dir:{out.resolve()}",
                                          "--pretrained", "export", "--no_amp", "--dataset", "wds/<set>",
                                          "--dataset_root", "<folder>"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the data and training layers load torch: not for --help
    from scaling.data.errors import DataError
    from scaling.train.errors import CheckpointError

    try:
        return _run(args)
    except (ExportError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
