"""``python -m scaling.train``: run one stage (mim | clip) in the foreground.

    python -m scaling.train --stage clip --rung B16 --out runs/clip-b16 train.samples=20000
    python -m scaling.train --stage mim --rung L14 --teacher runs/clip-b16 --out runs/mim-l14
    torchrun --nproc_per_node 2 -m scaling.train --stage clip --rung B16 ...   # N processes

Running the same command again continues from the newest checkpoint in ``--out`` (or just
reports a finished stage). Config errors print one line and exit with status 2. SIGTERM or
Ctrl-C stops at the next step boundary with a checkpoint and exits with status 75 (stopped, the
same command resumes); a second Ctrl-C leaves at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping

from scaling import config_provenance as provenance
from scaling.config import ConfigError, fingerprint, flatten, load_stage_config
from scaling.config_schema import StageConfig
from scaling.data.errors import DataError
from scaling.kinds import kind_names
from scaling.metrics import JsonlLogger, MultiLogger, NullLogger
from scaling.models import UnknownRungError
from scaling.stage_state import FolderBusy, remember_run_id, stage_run_id, stage_tags, write_state
from scaling.tracking import MlflowLogger, open_stage_run, standard_tags
from scaling.train import run_stage
from scaling.train.errors import StageError
from scaling.train.stop import STOPPED_EXIT, StopSignals


def _sections() -> str:
    """Every config key, by section, from the schema (no torch import: --help stays instant)."""
    lines = []
    for f in dataclasses.fields(StageConfig):
        section = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if section is not None and dataclasses.is_dataclass(section):
            lines.append(f"  {f.name}: {', '.join(x.name for x in dataclasses.fields(section))}")
        else:
            lines.append(f"  {f.name}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scaling.train",
        description="Run one training stage (EVA MIM or EVA-CLIP) in the foreground, on 1 process or "
                    "under torchrun/srun on N.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config overrides (key=value), by section:\n" + _sections()
               + "\n\nexamples:\n  python -m scaling.train --stage clip --rung B16 --out runs/clip train.samples=4096"
                 "\n  python -m scaling.train --stage mim --rung L14 --teacher runs/clip --out runs/mim",
    )
    p.add_argument("--stage", required=True, choices=kind_names(), help="stage kind")
    p.add_argument("--rung", required=True, help="rung name or alias (B16, L14, E14, 8B, 18B, ...)")
    p.add_argument("--proxy", action=argparse.BooleanOptionalAction, default=True,
                   help="tiny CPU proxy of the rung (default) or the real sizes (--no-proxy)")
    p.add_argument("--teacher", help="mim: CLIP checkpoint (stage folder, final/, or state dict file) "
                                     "whose vision tower is the frozen teacher (inputs.teacher)")
    p.add_argument("--init", help="clip: MIM or CLIP checkpoint initialising the vision tower (inputs.init_vision)")
    p.add_argument("--init-text", help="clip: CLIP checkpoint initialising the text tower (inputs.init_text)")
    p.add_argument("--out", help="stage folder (out_dir): config, checkpoints, final/")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="extra YAML config layered over the recipes (repeatable)")
    p.add_argument("--metrics", metavar="FILE", help="also append metrics as JSON lines to FILE")
    p.add_argument("--mlflow", action="store_true",
                   help="also log to MLflow (tracking.uri or $MLFLOW_TRACKING_URI, default ./mlflow.db): "
                        "tracking.run_id, or a new run in tracking.experiment, continued on re-runs")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved config, each key with the layer that set it; train nothing")
    p.add_argument("--quiet", action="store_true", help="no metric lines on the console")
    p.add_argument("--wait", action="store_true",
                   help="when another process is writing --out, wait for it instead of refusing (exit 2)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-3")
    return p


class ConsoleLogger:
    """Metric lines on stderr (rank 0 only)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith("train/lr/"))
        print(f"[step {step}] {shown}", file=sys.stderr, flush=True)

    def log_params(self, params) -> None: ...

    def set_tags(self, tags) -> None: ...

    def log_artifact(self, path, artifact_path=None) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


def mlflow_logger(cfg):
    """An MLflow logger for this stage's run: ``tracking.run_id``, else the run a previous attempt
    of the same ``out_dir`` recorded in its state file or one with the same fingerprint, else a
    new one (params = the flattened config)."""
    tags = standard_tags(**stage_tags(cfg.stage.kind, cfg.stage.rung), **dict(cfg.tracking.tags))
    run_id = open_stage_run(cfg.tracking.uri, cfg.tracking.experiment, cfg.stage.name, fingerprint(cfg),
                            known=cfg.tracking.run_id or stage_run_id(cfg.out_dir),
                            parent_run_id=cfg.tracking.parent_run_id, tags=tags, params=flatten(cfg))
    remember_run_id(cfg.out_dir, run_id)
    return MlflowLogger(cfg.tracking.uri, run_id)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.teacher, "inputs.teacher"), (args.init, "inputs.init_vision"),
                      (args.init_text, "inputs.init_text"), (args.out, "out_dir")):
        if flag:
            overrides.append(f"{key}={flag}")
    try:
        with provenance.recording() as origins:
            cfg = load_stage_config(args.stage, args.rung, proxy=args.proxy, overrides=overrides, files=args.config)
    except (ConfigError, UnknownRungError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.show_config:
        print(provenance.format_config(flatten(cfg), next(iter(origins.values()), {})))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    loggers = [] if args.quiet else [ConsoleLogger()]
    if args.metrics:
        loggers.append(JsonlLogger(args.metrics))
    if args.mlflow and int(os.environ.get("RANK", "0")) == 0:
        loggers.append(mlflow_logger(cfg))
    logger = MultiLogger(loggers) if loggers else NullLogger()
    stop = StopSignals().install()
    try:
        result = run_stage(cfg, logger, stop_requested=stop.is_set, wait=args.wait)
    except (StageError, ConfigError, DataError, FolderBusy) as exc:
        logger.close("FAILED")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        logger.close("FAILED")
        raise
    finally:
        stop.restore()
    logger.close("FINISHED" if result.status == "finished" else "KILLED")
    if result.status == "preempted":
        if int(os.environ.get("RANK", "0")) == 0:
            write_state(cfg.out_dir, "preempted", checkpoint=result.checkpoint, samples_seen=result.samples_seen,
                        error=None)
            print(f"stopped by {stop.name} at step {result.steps} ({result.samples_seen} samples): checkpoint "
                  f"{result.checkpoint}, metrics delivered or spooled; run the same command again to resume")
        return STOPPED_EXIT
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{result.status}: {result.steps} steps, {result.samples_seen} samples; checkpoint {result.checkpoint}")
        for key in sorted(result.metrics):
            if key.startswith("eval/") or key == "train/loss":
                print(f"  {key} = {result.metrics[key]:.4f}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.environ.get("WORLD_SIZE", "1") != "1":
        # gloo can abort at interpreter exit after the work is done; leave without the teardown
        os._exit(code)
    sys.exit(code)
