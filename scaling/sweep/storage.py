"""The Optuna study of a sweep: storage, sampler, pruner, trial accounting and stale trials.

Storage is a journal file by default (``JournalFileBackend`` with an ``open(O_EXCL)`` lock, safe
on NFS) or an RDB URL (``storage=postgresql://user@host:port/db`` for many workers on many nodes). Journal storage has no heartbeats of its own, so a running trial's worker
touches ``heartbeats/<trial_id>`` in the sweep folder; a trial whose file went quiet for
``stale_after_s`` is failed and re-queued (``RetryHeartbeatStaleTrialCallback``) by whichever
worker sees it first. Asking for a trial happens under a lock file, after counting finished and
in-flight trials, so concurrent workers never start more trials than the target.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from scaling.sweep.spec import Param, SweepError, SweepSpec

STALE_REASON = "stale: its worker stopped sending heartbeats (killed, preempted or lost)"


def distributions(params: list[Param]) -> dict[str, BaseDistribution]:
    """Optuna distributions; a fixed value is a one-choice categorical (so it shows as a param)."""
    out: dict[str, BaseDistribution] = {}
    for p in params:
        if p.type == "float":
            out[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        elif p.type == "categorical":
            out[p.name] = CategoricalDistribution(list(p.choices))
        else:
            out[p.name] = CategoricalDistribution([p.value])
    return out


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler whose ``after_trial`` does not call ``study.stop()``: workers here use
    ask/tell and stop on the trial count, and ``stop()`` outside ``optimize`` raises."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        return None

    def _get_unvisited_grid_ids(self, study: optuna.Study) -> list[int]:
        # Optuna counts a FAILed grid point as visited, so it would never run again; here only
        # COMPLETE/PRUNED points are done, and queued retries count as in flight.
        done, in_flight = set(), set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            grid_id = t.system_attrs.get("grid_id")
            if grid_id is None or not self._same_search_space(t.system_attrs.get("search_space", {})):
                continue
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done.add(grid_id)
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                in_flight.add(grid_id)
        todo = set(range(self._n_min_trials)) - done
        return sorted(todo - in_flight) or sorted(todo)


def make_sampler(spec: SweepSpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    cfg = dict(spec.sampler)
    name = cfg.pop("name", "tpe")
    seed = cfg.pop("seed", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            if name == "grid":
                # The seed shuffles the grid, i.e. maps grid ids to points: it must be the same in
                # every worker, or two workers run the same point under different ids.
                grid = {p.name: list(p.choices) if p.type == "categorical" else [p.value] for p in spec.params}
                return _GridSampler(grid, seed=int(seed or 0))
            # Workers must not draw the same random sequence: offset the seed per worker.
            seed = None if seed is None else int(seed) + 7919 * worker
            if name == "random":
                return optuna.samplers.RandomSampler(seed=seed, **cfg)
            if name == "cmaes":
                if importlib.util.find_spec("cmaes") is None:
                    raise SweepError(f"{spec.path}: sampler 'cmaes' needs the cmaes package: pip install cmaes")
                return optuna.samplers.CmaEsSampler(seed=seed, **cfg)
            return optuna.samplers.TPESampler(seed=seed, **cfg)
        except TypeError as exc:
            raise SweepError(f"{spec.path}: sampler options {cfg}: {exc}") from None


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    cfg = dict(spec.pruner)
    name = cfg.pop("name", "none")
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**cfg)
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(**cfg)
    except TypeError as exc:
        raise SweepError(f"{spec.path}: pruner options {cfg}: {exc}") from None
    return optuna.pruners.NopPruner()


def rdb_url(url: str) -> str:
    """The SQLAlchemy URL for a storage URL: a bare ``postgresql://`` takes the psycopg2 driver
    (the project's dependency) when psycopg 3, SQLAlchemy 2.1's default for it, is not installed."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def open_storage(spec: SweepSpec) -> optuna.storages.BaseStorage:
    """The study's storage; a URL that cannot be opened is a ``SweepError``."""
    url = spec.storage_url()
    if "://" in url:
        try:
            # pre-ping: a worker idle through a database restart must not fail on a dead connection
            return optuna.storages.RDBStorage(rdb_url(url), engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:  # sqlalchemy/driver errors: name the URL, not the stack
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SweepError(f"{spec.path}: cannot open storage '{spec.storage_label()}': {first}. Check that the "
                             "database server runs and the URL's host, port, user and database are right; "
                             "or leave 'storage' unset for the journal file") from None
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return JournalStorage(backend)
    except OSError as exc:
        raise SweepError(f"{spec.path}: cannot open journal storage '{path}': {exc}") from None


def open_study(spec: SweepSpec, create: bool = False, worker: int = 0) -> optuna.Study:
    url = spec.storage_url()
    missing = SweepError(f"no study '{spec.name}' in {spec.storage_label()} yet: start it with "
                         f"'python -m scaling.sweep {spec.path}' (same overrides)")
    # Reading (status, a worker) must not make the journal file or SQLite database it looks for.
    local = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") or "://" not in url else None
    if not create and local is not None and not Path(local).exists():
        raise missing
    storage = open_storage(spec)
    sampler, pruner = make_sampler(spec, worker), make_pruner(spec)
    if create:
        study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler,
                                    pruner=pruner, directions=spec.directions, load_if_exists=True)
        if [d.name.lower() for d in study.directions] != spec.directions:
            raise SweepError(
                f"{spec.path}: study '{spec.name}' already exists in {spec.storage_label()} with directions "
                f"{[d.name.lower() for d in study.directions]}; the file now says {spec.directions}. "
                "Give the sweep a new name (name=...) or another storage."
            )
        return study
    try:
        return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise missing from None


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0
    errors: int = 0  # failures raised by the trial itself (not stale workers)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def in_flight(self) -> int:
        return self.running + self.waiting


def count(trials: list[FrozenTrial]) -> Counts:
    c = Counts()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.WAITING:
            c.waiting += 1
        elif t.state == TrialState.FAIL:
            c.fail += 1
            if t.user_attrs.get("fail_reason", "").split(":")[0] != "stale":
                c.errors += 1
    return c


def heartbeat_path(spec: SweepSpec, trial_id: int) -> Path:
    return spec.work_dir() / "heartbeats" / str(trial_id)


def beat(spec: SweepSpec, trial_id: int) -> None:
    path = heartbeat_path(spec, trial_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def reap_stale(study: optuna.Study, spec: SweepSpec, now: float | None = None) -> list[FrozenTrial]:
    """Fail RUNNING trials whose heartbeat went quiet and queue their retries; returns them."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

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
    from optuna.storages.journal import JournalFileOpenLock

    spec.work_dir().mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(str(spec.work_dir() / "ask"), grace_period=30)
    lock.acquire()
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # force-released by another worker after grace
            lock.release()


def root_trial_number(trial: FrozenTrial) -> int:
    """The number of the first attempt of this trial (a retry resumes its folder)."""
    origin = trial.system_attrs.get("failed_trial")
    return int(origin) if origin is not None else trial.number


def trial_summary(t: FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "values": list(t.values) if t.values else None,
        "params": dict(t.params),
        "metrics": dict(t.user_attrs.get("metrics", {})),
        "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        "retry_of": t.system_attrs.get("failed_trial"),
        "fail_reason": t.user_attrs.get("fail_reason"),
    }
