"""Stale trials and the ask lock: what journal storage lacks for many workers.

A running trial's worker touches ``heartbeats/<trial_id>`` in the sweep folder; a trial whose
file went quiet for ``stale_after_s`` is failed and re-queued (``RetryHeartbeatStaleTrialCallback``)
by whichever worker sees it first. Asking for a trial happens under a lock file, after counting
finished and in-flight trials, so concurrent workers never start more trials than the target.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from scaling.sweep.spec import SweepSpec

STALE_REASON = "stale: its worker stopped sending heartbeats (killed, preempted or lost)"


def heartbeat_path(spec: SweepSpec, trial_id: int) -> Path:
    return spec.work_dir() / "heartbeats" / str(trial_id)


def beat(spec: SweepSpec, trial_id: int) -> None:
    path = heartbeat_path(spec, trial_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def reap_stale(study: optuna.Study, spec: SweepSpec, now: float | None = None) -> list[FrozenTrial]:
    """Fail RUNNING trials whose heartbeat went quiet and queue their retries; returns them."""
    now = time.time() if now is None else now
    storage = study._storage
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        path = heartbeat_path(spec, t._trial_id)
        started = t.datetime_start.timestamp() if isinstance(t.datetime_start, datetime) else now
        last = max(started, path.stat().st_mtime if path.exists() else 0.0)
        if now - last <= spec.stale_after_s:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", STALE_REASON)
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        frozen = storage.get_trial(t._trial_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)(study, frozen)
        reaped.append(frozen)
    return reaped


@contextlib.contextmanager
def ask_lock(spec: SweepSpec) -> Iterator[None]:
    """A lock file beside the study (``O_EXCL`` create, NFS-safe; a dead holder's expires)."""
    spec.work_dir().mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(str(spec.work_dir() / "ask"), grace_period=30)
    lock.acquire()
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # force-released by another worker after grace
            lock.release()
