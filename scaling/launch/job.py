"""``StageJob``: one training stage as a checkpointable submitit job.

On USR2 (timeout or preemption, sent by SLURM or by submitit's ``job._interrupt()``), TERM or
INT, the job only raises a flag; the stage notices it at the next step boundary, saves a checkpoint
and returns ``preempted``. Then, if USR2 came, the job hands over to submitit's own handler,
which calls ``checkpoint()`` (a fresh ``StageJob`` pointing at the newest checkpoint), dumps it
and requeues the job. A TERM or INT alone (``scancel``, ``kill``, an outside ``scontrol requeue``)
stops without requeueing, recorded ``preempted``: SLURM, or the next run of the ladder, decides
what happens next. The requeued job resumes from the stage's
``out_dir`` and keeps logging to the same MLflow run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from scaling.launch.artifacts import log_stage_files
from scaling.launch.distributed_env import run_distributed_env
from scaling.metrics import MultiLogger
from scaling.stage_state import ProgressLogger, hold_folder, write_state
from scaling.tracking import MlflowLogger
from scaling.tracking.system import SAMPLE_EVERY_S, start_system_metrics, stop_system_metrics
from scaling.train import run_stage
from scaling.train.stop import STOP_SIGNALS, StopSignals

log = logging.getLogger("scaling.launch")

# After TERM, how long to wait for the USR2 that submitit's _interrupt() sends right after it.
_USR2_GRACE_S = 5.0


class StopFlag(StopSignals):
    """Records USR2, TERM and INT; keeps submitit's USR2 handler to requeue through it later."""

    def __init__(self) -> None:
        super().__init__((submitit.JobEnvironment._usr_sig(), *STOP_SIGNALS))
        self.submitit_handler: Any = None

    def install(self) -> StopFlag:
        previous = signal.getsignal(submitit.JobEnvironment._usr_sig())
        # Only a submitit handler (a bound method) can requeue; defaults/None cannot.
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
            self.submitit_handler = previous
        super().install()
        return self

    def wants_requeue(self, grace_s: float | None = None) -> bool:
        usr = submitit.JobEnvironment._usr_sig()
        deadline = time.monotonic() + (_USR2_GRACE_S if grace_s is None else grace_s)
        while usr not in self.signals and time.monotonic() < deadline:
            time.sleep(0.1)
        return usr in self.signals

    def requeue(self) -> None:
        """Let submitit checkpoint (``StageJob.checkpoint``) and requeue; exits the process."""
        if self.submitit_handler is None:
            return
        try:
            self.submitit_handler(submitit.JobEnvironment._usr_sig(), None)
        except subprocess.CalledProcessError as exc:
            # e.g. SLURM already requeued the job itself: nothing left to do but leave.
            log.warning("requeue failed (%s); exiting, the scheduler decides what follows", exc)
            sys.exit(-1)


def _has_job_env() -> bool:
    """Inside a local or SLURM submitit job (not an in-process debug one)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def _container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


class StageJob(submitit.helpers.Checkpointable):
    """Runs ``scaling.train.run_stage(cfg)`` in a job; requeues itself on timeout/preemption.

    The config travels as a plain dict (picklable). ``resume_from`` is informative only: the
    stage always resumes from the newest complete checkpoint under ``cfg.out_dir``.
    """

    def __init__(self, cfg: DictConfig | Mapping[str, Any], resume_from: str | None = None,
                 stage_fn: Callable[..., Any] | None = None) -> None:
        self.cfg = _container(cfg)
        self.resume_from = resume_from
        # A stand-in for run_stage (tests of the dispatch machinery); None -> the real stages.
        self.stage_fn = stage_fn

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Runs in the job process, where the stage has already imported torch.
        from scaling.train.checkpoint import latest_checkpoint

        found = latest_checkpoint(self.cfg["out_dir"])
        newest = str(found) if found is not None else None
        log.info("requeueing %s from %s", self.cfg["stage"]["name"], newest or "its start")
        return submitit.helpers.DelayedSubmission(StageJob(self.cfg, newest, self.stage_fn))

    def _logger(self, cfg: DictConfig, rank: int) -> Any:
        if rank != 0:
            return None
        progress = ProgressLogger(cfg.out_dir)
        if not cfg.tracking.run_id:
            return progress
        return MultiLogger([MlflowLogger(cfg.tracking.uri, cfg.tracking.run_id), progress])

    def __call__(self) -> dict[str, Any]:
        if not logging.getLogger().handlers:  # the job's log file shows the stage's own progress
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        cfg = OmegaConf.create(self.cfg)
        env = run_distributed_env()
        rank = int(env["RANK"])
        stop = StopFlag().install()
        try:
            # before the state file is touched: a second writer must not mark the holder's stage
            with hold_folder(cfg.out_dir, "stage folder") if rank == 0 else contextlib.nullcontext():
                return self._run(cfg, env, rank, stop)
        finally:
            stop.restore()

    def _run(self, cfg: DictConfig, env: dict[str, str], rank: int, stop: StopFlag) -> dict[str, Any]:
        logger = self._logger(cfg, rank)
        run_id = cfg.tracking.run_id
        if rank == 0:
            write_state(cfg.out_dir, "running", job_id=env.get("JOB_ID"), run_id=run_id,
                        resume_from=self.resume_from, started=time.time(), world_size=int(env["WORLD_SIZE"]),
                        nodes=os.environ.get("SLURM_JOB_NODELIST"), master=f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}")
            if logger is not None and self.resume_from is None:
                # The ladder opens a stage's MLflow run when it submits the job, on SLURM long
                # before an upstream stage lets it start: this tag is when its own time begins.
                logger.set_tags({"stage_started_at": f"{time.time():.3f}"})
        # in the job process, as above
        from scaling.train.checkpoint import latest_checkpoint

        # Every rank says where it stands: a requeued multi-node job must resume all its ranks
        # from the same checkpoint (each task's own log shows it).
        log.info("rank %d of %s on %s: %s starts from %s", rank, env["WORLD_SIZE"], env.get("NODE") or "-",
                 cfg.stage.name, latest_checkpoint(cfg.out_dir) or "step 0")
        stage_fn = run_stage if self.stage_fn is None else self.stage_fn
        monitor = start_system_metrics(cfg.tracking.uri, run_id, int(env["LOCAL_RANK"]),
                                       float(cfg.tracking.get("system_metrics_s", SAMPLE_EVERY_S)))
        try:
            result = stage_fn(cfg, logger=logger, stop_requested=stop.is_set)
        except BaseException as exc:
            stop_system_metrics(monitor)
            if rank == 0:
                write_state(cfg.out_dir, "failed", error=f"{type(exc).__name__}: {exc}")
                if logger is not None:
                    logger.close("FAILED")
            raise
        stop_system_metrics(monitor)  # before the run is marked ended
        out = {"stage": cfg.stage.name, "status": result.status, "metrics": dict(result.metrics),
               "checkpoint": result.checkpoint, "run_id": run_id, "steps": result.steps,
               "samples_seen": result.samples_seen, "out_dir": cfg.out_dir}
        if result.status == "preempted":
            if rank == 0:
                if logger is not None and hasattr(logger, "loggers"):
                    for sub in logger.loggers:
                        getattr(sub, "flush", lambda: None)()
                write_state(cfg.out_dir, "preempted", checkpoint=result.checkpoint,
                            samples_seen=result.samples_seen)
            if stop.is_set() and stop.wants_requeue():
                stop.requeue()  # does not return when submitit requeues
            elif stop.is_set() and _has_job_env():
                raise SystemExit(143)  # TERM only: cancelled, or requeued by SLURM itself
            return out
        if rank == 0:
            if logger is not None:
                logger.close("FINISHED")  # progress.json now holds every metric's last value
                log_stage_files(cfg)
            write_state(cfg.out_dir, "finished", checkpoint=result.checkpoint, metrics=out["metrics"],
                        samples_seen=result.samples_seen, steps=result.steps, finished=time.time())
        return out
