"""The Optuna study of a sweep: where it is stored and how it is opened.

Storage is a journal file by default (``JournalFileBackend`` with an ``open(O_EXCL)`` lock, safe
on NFS) or an RDB URL (``storage=postgresql://user@host:port/db`` for many workers on many
nodes). Journal storage has no heartbeats of its own: ``scaling.sweep.heartbeats`` adds them.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

from scaling.sweep.samplers import make_pruner, make_sampler
from scaling.sweep.spec import SweepError, SweepSpec
from scaling.uris import rdb_url


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
