"""A sweep worker: ask -> run -> tell, again and again, until the study holds its target.

Workers are asynchronous (each asks as soon as it is free) and identical: any of them may be
killed at any time. Counting happens under the ask lock: a worker starts a new trial only while
``finished + in flight < n_trials``; when the rest are in flight elsewhere it waits, reaping
stale trials, so that a retried trial still finds a worker.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field

import optuna

from scaling import tracking
from scaling.sweep import runs
from scaling.sweep.accounting import count
from scaling.sweep.heartbeats import ask_lock, reap_stale
from scaling.sweep.samplers import distributions
from scaling.sweep.spec import SweepError, SweepSpec
from scaling.sweep.storage import open_study
from scaling.sweep.trial import run_trial

log = logging.getLogger(__name__)


@dataclass
class WorkerSummary:
    worker: int
    pid: int
    trials: dict[str, int] = field(default_factory=dict)
    stopped: str = ""


def _max_failures(spec: SweepSpec) -> int:
    return spec.max_failures if spec.max_failures is not None else spec.n_trials


def run_worker(spec: SweepSpec, worker: int = 0, uri: str | None = None,
               parent_run_id: str | None = None, poll_s: float = 0.5) -> WorkerSummary:
    """Work on the study until it holds ``spec.n_trials`` finished (COMPLETE + PRUNED) trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    uri = tracking.resolve_uri(uri)
    study = open_study(spec, worker=worker)
    dists = distributions(spec.params)
    summary = WorkerSummary(worker, os.getpid())
    while True:
        trial = None
        with ask_lock(spec):
            for stale in reap_stale(study, spec):
                log.warning("trial %d went stale (worker gone); queued for retry", stale.number)
                runs.mark_stale_run(uri, stale.user_attrs.get("mlflow_run_id"), stale.user_attrs.get("fail_reason", ""))
            c = count(study.get_trials(deepcopy=False))
            if c.finished >= spec.n_trials:
                summary.stopped = "target reached"
                break
            if c.errors >= _max_failures(spec):
                summary.stopped = f"{c.errors} trials failed (max_failures={_max_failures(spec)})"
                log.error("worker %d stops: %s; see the trials' fail_reason", worker, summary.stopped)
                break
            # Retries waiting in the queue are always taken; a new trial only below the target.
            if c.waiting > 0 or c.finished + c.running < spec.n_trials:
                trial = study.ask(fixed_distributions=dists)
        if trial is None:
            time.sleep(poll_s)
            continue
        state = run_trial(study, trial, spec, uri=uri, parent_run_id=parent_run_id, worker=worker)
        summary.trials[state.name] = summary.trials.get(state.name, 0) + 1
    return summary


def worker_entry(spec: SweepSpec, worker: int, uri: str | None, parent_run_id: str | None) -> WorkerSummary:
    """What a submitted job runs (picklable; sets up logging in the job's process)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker{worker} %(levelname)s %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        return run_worker(spec, worker, uri, parent_run_id)
    except SweepError as exc:
        log.error("%s", exc)
        raise
