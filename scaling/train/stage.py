"""``run_stage``: one MIM or CLIP stage as a function of its resolved config."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig

from scaling.config import save_resolved
from scaling.kinds import stage_kind
from scaling.metrics import MetricLogger, NullLogger
from scaling.stage_state import FINAL_DIR, FolderBusy, final_manifest, hold_folder
from scaling.train.errors import StageInputError
from scaling.train.result import StageResult
from scaling.train.spool import MetricSpool

log = logging.getLogger(__name__)


def finished_result(out_dir: str | os.PathLike) -> StageResult | None:
    """The result of a stage whose ``final/`` checkpoint is complete, or None (no torch needed)."""
    manifest = final_manifest(out_dir)
    if manifest is None:
        return None
    return StageResult("finished", int(manifest["step"]), int(manifest["samples_seen"]),
                       {k: float(v) for k, v in manifest.get("metrics", {}).items()},
                       str(Path(out_dir) / FINAL_DIR), str(out_dir))


def check_inputs(cfg: DictConfig) -> None:
    """Fail before any heavy import when a stage input is missing (the error names the key)."""
    if stage_kind(cfg.stage.kind).needs_teacher and cfg.inputs.teacher is None:
        raise StageInputError(
            f"a {cfg.stage.kind} stage needs a teacher: set 'inputs.teacher' (or --teacher) to a CLIP checkpoint "
            "(a clip stage folder, its final/ checkpoint, or an open_clip state dict file)")
    for key in ("teacher", "init_vision", "init_text"):
        path = cfg.inputs[key]
        if path is not None and not Path(path).expanduser().exists():
            raise StageInputError(f"'inputs.{key}': checkpoint not found: {path}")


def pin_cpu_threads(cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> int | None:
    """Set torch's intra-op threads to the stage's ``resources.cpus_per_task`` unless
    ``OMP_NUM_THREADS`` says otherwise; returns the count set (None: left to the environment).

    Without it a stage used every core torch found on the host, so one config gave other numbers
    on another machine or from another shell (the thread count changes the order of float
    reductions: the proxy teacher reached 14.1 % with 2 threads and 15.4 % with 1), and stages
    run side by side oversubscribed the cores."""
    if environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    threads = max(1, int(cfg.resources.cpus_per_task))
    torch.set_num_threads(threads)
    return threads


def run_stage(cfg: DictConfig, logger: MetricLogger | None = None,
              stop_requested: Callable[[], bool] | None = None, wait: bool = False) -> StageResult:
    """Train (or continue, or just report) the stage described by ``cfg`` under ``cfg.out_dir``.

    Resumes from the newest complete checkpoint there; returns at once when ``final/`` exists.
    ``stop_requested`` is polled at every step boundary (OR over ranks); when true the stage saves
    a checkpoint and returns ``status='preempted'``. Only global rank 0 talks to ``logger``.
    Rank 0 holds the folder's lock throughout: another process on it raises ``FolderBusy``
    naming the holder, or with ``wait`` queues behind it.
    """
    out = Path(cfg.out_dir)
    done = finished_result(out)
    if done is not None:
        log.info("stage already finished: %s", done.checkpoint)
        return done
    check_inputs(cfg)
    # torch after the checks: a misconfigured stage fails at once
    import torch.distributed as dist

    import scaling.train.distributed as distributed
    from scaling.train.engine import check_combination
    from scaling.train.loop import TrainingLoop

    check_combination(cfg)
    pin_cpu_threads(cfg)
    env = distributed.detect()
    device = distributed.pick_device(env)
    owns_group = not (dist.is_available() and dist.is_initialized())
    distributed.init(env, distributed.pick_backend(cfg.distributed.backend, device),
                     export=cfg.distributed.deepspeed)
    rank, _ = distributed.world()
    held = contextlib.ExitStack()
    if rank == 0:
        try:
            held.enter_context(hold_folder(out, "stage folder", wait=wait))
        except FolderBusy:
            if owns_group and dist.is_initialized():
                dist.destroy_process_group()
            raise
        save_resolved(cfg, out / "config.yaml")
        # every metric goes through the stage's spool first; a resume resends what it holds
        logger = MetricSpool(out, logger if logger is not None else NullLogger())
        logger.resend()
        logger.set_tags(distributed.kernel_tags(device))
    else:
        logger = NullLogger()
    try:
        result = TrainingLoop(cfg, device, logger, stop_requested).run()
    except BaseException:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    finally:
        held.close()
    if owns_group:
        distributed.cleanup()
    return result
