"""Experiments, runs, params, tags and queries on an MLflow store, by explicit run id (never an
"active run"): a run made by the ladder is continued by a stage in another process or machine."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.uris import MaskedStream, has_secret, mask, rdb_url

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

# No telemetry, and short HTTP retries: a dead server costs seconds a call, not minutes (unless set).
for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
                     ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
    os.environ.setdefault(_key, _value)
__all__ = ["PARENT_TAG", "artifact_root", "client", "end_run", "find_runs", "find_stage_run", "get_metric_history",
           "get_or_create_experiment", "get_run", "log_params", "resolve_uri", "run_status", "search_runs",
           "set_tags", "standard_tags", "start_run"]
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's training-runs view
# MLflow's own limits (mlflow.utils.validation); the tests check they still agree.
MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH = 6000, 8000
TRUNCATION_MARKER = "...[truncated]"
RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
# Errors another attempt cannot fix; anything else (server down, database busy) is transient.
PERMANENT_ERROR_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                                   "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
                                   "ENDPOINT_NOT_FOUND"})


def resolve_uri(uri: str | os.PathLike | None = None) -> str:
    """Explicit URI > ``$MLFLOW_TRACKING_URI`` > ``<cwd>/mlflow.db``; SQLite paths made absolute,
    a bare ``postgresql://`` given the installed driver."""
    text = str(uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip() or str(Path.cwd() / "mlflow.db")
    text = rdb_url(text)
    if "://" not in text and Path(text).suffix in (".db", ".sqlite"):
        text = f"sqlite:///{text}"
    db = sqlite_path(text)
    return f"sqlite:///{db.resolve()}" if db is not None and not db.is_absolute() else text


def sqlite_path(uri: str) -> Path | None:
    path = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def artifact_root(uri: str | None) -> str | None:
    """SQLite: ``mlartifacts/`` beside the database (not MLflow's legacy ``./mlruns``); a server's own."""
    db = sqlite_path(resolve_uri(uri))
    return (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None


def is_permanent(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in PERMANENT_ERROR_CODES


def with_retries(fn: Callable[[], Any], attempts: int = 6, first_delay_s: float = 0.2) -> Any:
    """Call ``fn``, retrying transient store errors (busy SQLite, two processes migrating it)."""
    for attempt in range(attempts - 1):
        try:
            return fn()
        except Exception as exc:
            if is_permanent(exc):
                raise
            time.sleep(first_delay_s * 2**attempt)
    return fn()


def client(uri: str | None = None, *, create: bool = True) -> MlflowClient:
    """An ``MlflowClient`` (imports mlflow); ``create=False`` (read-only use): no new SQLite store."""
    return _client(resolve_uri(uri), create)


@functools.cache
def _client(uri: str, create: bool) -> MlflowClient:
    from mlflow import MlflowClient

    db = sqlite_path(uri)
    if db is not None and not create and not db.is_file():
        raise FileNotFoundError(f"no MLflow store at {db}: nothing was tracked there (check "
                                "--tracking-uri or $MLFLOW_TRACKING_URI)")
    if db is not None:  # a server is not called yet: a dead one is fine here
        db.parent.mkdir(parents=True, exist_ok=True)
        # The first call creates or migrates the schema, and MLflow's SQLite migrations are not
        # transactional: processes starting together (a ladder's stages) take turns.
        with db.with_name(db.name + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            with_retries(lambda: MlflowClient(tracking_uri=uri).search_experiments(max_results=1))
    mlc = MlflowClient(tracking_uri=uri)
    if has_secret(uri):
        _mask_run_links(mlc)
    return mlc


def _mask_run_links(mlc: MlflowClient) -> None:
    """Ending a run on a server, MLflow prints "View run ... at: <URL>" to stdout, the URL with
    the URI's password: that print goes through a masking stream."""
    tracking = getattr(mlc, "_tracking_client", None)
    print_links = getattr(tracking, "_log_url", None)
    if print_links is None:  # another MLflow release: nothing printed this way to mask
        return

    def masked(run_id: str) -> None:
        with contextlib.redirect_stdout(MaskedStream(sys.stdout)):
            print_links(run_id)

    tracking._log_url = masked


def get_or_create_experiment(name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created (or restored from the bin) if needed; race-safe."""
    if not name or not name.strip():
        raise ValueError("tracking.experiment is empty: give the MLflow experiment a name")
    mlc = client(uri)

    def attempt() -> str:
        found = mlc.get_experiment_by_name(name)
        if found is None:
            try:
                return mlc.create_experiment(name, artifact_location=artifact_root(uri), tags=EXPERIMENT_TAGS)
            except Exception as exc:
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = mlc.get_experiment_by_name(name)  # another process made it meanwhile
        if found.lifecycle_stage == "deleted":
            mlc.restore_experiment(found.experiment_id)
        return found.experiment_id

    return with_retries(attempt)


def truncate(value: Any, limit: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def param_entities(params: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param  # values cut to MLflow's limit, marked ...[truncated]

    # a URI's password never reaches the store (tracking.uri, a sweep's storage...)
    return [Param(str(k), truncate(mask(v), MAX_PARAM_VAL_LENGTH)) for k, v in params.items()]


def tag_entities(tags: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(str(k), truncate(mask(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items() if v is not None]


def log_params(uri: str | None, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (MLflow sends 100 a request); values already logged identically are skipped."""
    existing = get_run(uri, run_id).data.params
    todo = [p for p in param_entities(params) if existing.get(p.key) != p.value]
    if changed := [p.key for p in todo if p.key in existing]:
        raise ValueError(f"run {run_id} already has different values for params {changed[:5]}: MLflow "
                         "params are write-once; start a new run for a changed config")
    with_retries(lambda: client(uri).log_batch(run_id, params=todo, synchronous=True))  # whatever the env says


def set_tags(uri: str | None, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set (or overwrite) tags on a run; ``None`` values are skipped, long ones truncated."""
    with_retries(lambda: client(uri).log_batch(run_id, tags=tag_entities(tags), synchronous=True))


def start_run(uri: str | None, experiment: str, name: str, *, parent_run_id: str | None = None,
              tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None) -> str:
    """Make a run (a child of ``parent_run_id`` if given); its id is passed on, to a job or a logger."""
    experiment_id = get_or_create_experiment(experiment, uri)
    tags = {t.key: t.value for t in tag_entities({**(tags or {}), PARENT_TAG: parent_run_id})}
    run_id = with_retries(lambda: client(uri).create_run(experiment_id, run_name=name, tags=tags)).info.run_id
    if params:
        log_params(uri, run_id, params)
    return run_id


def check_status(status: str) -> str:
    if status.upper() not in RUN_STATUSES:
        raise ValueError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")
    return status.upper()


def end_run(uri: str | None, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run terminal (``FINISHED``, ``FAILED`` or ``KILLED``) with an end time."""
    status = check_status(status)
    with_retries(lambda: client(uri).set_terminated(run_id, status=status))


def get_run(uri: str | None, run_id: str) -> Run:
    return client(uri).get_run(run_id)


def run_status(uri: str | None, run_id: str) -> str:
    return get_run(uri, run_id).info.status


def get_metric_history(uri: str | None, run_id: str, key: str) -> list[Metric]:
    """Every logged value of ``key`` (``Metric``: ``.step``, ``.value``, ``.timestamp``), by step."""
    return sorted(client(uri).get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))


def search_runs(mlc: MlflowClient, experiment_ids: list[str], filter_string: str = "",
                newest_first: bool = True) -> list[Run]:
    """Every run of ``experiment_ids`` matching ``filter_string``, all pages."""
    order, runs, token = ["attributes.start_time " + ("DESC" if newest_first else "ASC")], [], None
    while True:
        page = mlc.search_runs(experiment_ids, filter_string, max_results=1000, order_by=order,
                               page_token=token)
        runs, token = runs + list(page), page.token
        if not token:
            return runs


def _quote(value: Any) -> str:
    if "'" in str(value) and '"' in str(value):
        raise ValueError(f"cannot search for a value holding both quote kinds: {value!r}")
    return f'"{value}"' if "'" in str(value) else f"'{value}'"


def find_runs(uri: str | None, experiment: str, tags: Mapping[str, str] | None = None,
              parent_run_id: str | None = None, status: str | None = None) -> list[Run]:
    """Runs of ``experiment`` with all of ``tags`` (and parent/status if given), newest first."""
    found = client(uri).get_experiment_by_name(experiment)
    if found is None:
        return []
    wanted = {**(tags or {}), PARENT_TAG: parent_run_id}.items()
    clauses = [f"tags.`{k}` = {_quote(v)}" for k, v in wanted if v is not None]
    if status:
        clauses.append(f"attributes.status = '{check_status(status)}'")
    return search_runs(client(uri), [found.experiment_id], " and ".join(clauses))


def find_stage_run(uri: str | None, experiment: str, fingerprint: str) -> tuple[str, str] | None:
    """``(run_id, status)`` of the newest run tagged with ``fingerprint``, or ``None``."""
    runs = find_runs(uri, experiment, tags={"fingerprint": fingerprint})
    return (runs[0].info.run_id, runs[0].info.status) if runs else None


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The checkout's commit (``unknown`` outside a git checkout or without git)."""
    from scaling.paths import REPO_ROOT

    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, text=True, timeout=10,
                                       stderr=subprocess.DEVNULL).strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def standard_tags(**extra: Any) -> dict[str, str]:
    """``git_sha``, ``host``, ``slurm_job_id`` (``none`` outside SLURM) and the lineage ``extra``."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    tags = {"git_sha": git_sha(), "host": socket.gethostname(), "slurm_job_id": job or "none"}
    return tags | {k: str(v) for k, v in extra.items() if v is not None}
