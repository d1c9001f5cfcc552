"""Experiments, runs, params, tags and queries on an MLflow tracking store.

Everything goes through ``MlflowClient`` with explicit run ids, never through MLflow's fluent
"active run": a run can then be created by the ladder in one process, continued by a stage in
another (or on another machine, or after a requeue), and several runs can be handled at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

T = TypeVar("T")

PARENT_TAG = "mlflow.parentRunId"
# MLflow's own limits (mlflow.utils.validation); the tests check they still agree.
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
TRUNCATION_MARKER = "...[truncated]"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
RUN_STATUSES = ("RUNNING", "SCHEDULED", *TERMINAL_STATUSES)

# Errors that another attempt cannot fix (bad input, missing run): everything else from a
# store is treated as transient (server down, database busy, migration race).
PERMANENT_ERROR_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND",
})


def resolve_uri(uri: str | None = None) -> str:
    """Explicit URI > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<cwd>/mlflow.db``.

    Relative SQLite paths become absolute, so a job started from another directory (a SLURM
    node, a requeue) still writes to the same database.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri.strip():
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    uri = uri.strip()
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():
        return f"sqlite:///{db.resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for servers and in-memory stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def artifact_root(uri: str | None) -> str | None:
    """Where experiments created by this toolkit keep artifacts.

    For SQLite: ``mlartifacts/`` next to the database (``./mlruns`` is MLflow's legacy file
    store, which MLflow 3 refuses to mix with a database). For a server: the server decides.
    """
    db = sqlite_path(resolve_uri(uri))
    return (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None


def is_permanent(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in PERMANENT_ERROR_CODES


def with_retries(fn: Callable[[], T], attempts: int = 6, first_delay_s: float = 0.2) -> T:
    """Call ``fn``, retrying transient store errors (busy SQLite, two processes migrating it)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or is_permanent(exc):
                raise
            time.sleep(first_delay_s * 2**attempt)
    raise AssertionError("unreachable")


_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


def client(uri: str | None = None) -> MlflowClient:
    """One cached ``MlflowClient`` per resolved URI (imports mlflow on first use)."""
    uri = resolve_uri(uri)
    with _clients_lock:
        found = _clients.get(uri)
        if found is not None:
            return found
        from mlflow import MlflowClient

        db = sqlite_path(uri)
        if db is None:
            new = MlflowClient(tracking_uri=uri)  # no server call yet: a dead server is fine here
        else:
            db.parent.mkdir(parents=True, exist_ok=True)
            # The first use creates/migrates the schema, and MLflow's SQLite migrations are not
            # transactional: processes starting together (a ladder's stages) take turns.
            with _file_lock(db.with_name(db.name + ".lock")):
                new = with_retries(lambda: _checked_client(MlflowClient, uri))
        _clients[uri] = new
        return new


def _checked_client(factory: Callable[..., MlflowClient], uri: str) -> MlflowClient:
    new = factory(tracking_uri=uri)
    new.search_experiments(max_results=1)
    return new


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the retries alone
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def get_or_create_experiment(name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created (or restored from the bin) if needed; race-safe."""
    if not name or not name.strip():
        raise ValueError("tracking.experiment is empty: give the MLflow experiment a name")
    mlflow_client = client(uri)

    def attempt() -> str:
        found = mlflow_client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                mlflow_client.restore_experiment(found.experiment_id)
            return found.experiment_id
        try:
            return mlflow_client.create_experiment(name, artifact_location=artifact_root(uri))
        except Exception as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
        # Another process created it between our lookup and our create.
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise RuntimeError(f"experiment {name!r} exists and vanished at once")
        return found.experiment_id

    return with_retries(attempt)


def truncate(value: Any, limit: int) -> str:
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _check_key(key: str, kind: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"MLflow {kind} key {key[:80]!r} must have 1..{MAX_KEY_LENGTH} characters")
    return key


def param_entities(params: Mapping[str, Any]) -> list[Any]:
    """``Param`` entities with values cut to MLflow's limit (marked ``...[truncated]``)."""
    from mlflow.entities import Param

    return [Param(_check_key(str(k), "param"), truncate(v, MAX_PARAM_VAL_LENGTH))
            for k, v in params.items()]


def tag_entities(tags: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(_check_key(str(k), "tag"), truncate(v, MAX_TAG_VAL_LENGTH))
            for k, v in tags.items() if v is not None]


def chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_params(uri: str | None, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in MLflow-sized batches; values already logged identically are skipped."""
    mlflow_client = client(uri)
    existing = mlflow_client.get_run(run_id).data.params
    todo = [p for p in param_entities(params) if existing.get(p.key) != p.value]
    changed = [p.key for p in todo if p.key in existing]
    if changed:
        raise ValueError(
            f"run {run_id} already has different values for params {changed[:5]}: MLflow params "
            "are write-once; start a new run for a changed config"
        )
    for batch in chunks(todo, MAX_PARAMS_TAGS_PER_BATCH):
        with_retries(lambda b=batch: mlflow_client.log_batch(run_id, params=b))


def set_tags(uri: str | None, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set (or overwrite) tags on a run; ``None`` values are skipped, long ones truncated."""
    mlflow_client = client(uri)
    for batch in chunks(tag_entities(tags), MAX_PARAMS_TAGS_PER_BATCH):
        with_retries(lambda b=batch: mlflow_client.log_batch(run_id, tags=b))


def start_run(
    uri: str | None,
    experiment: str,
    name: str,
    *,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Create a run (a child of ``parent_run_id`` if given) and return its id.

    The run is not made "active" anywhere: pass the id on (to a job, to ``MlflowLogger``).
    """
    experiment_id = get_or_create_experiment(experiment, uri)
    all_tags = {k: v for k, v in (tags or {}).items() if v is not None}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    mlflow_client = client(uri)
    first, rest = all_tags, {}
    if len(all_tags) > MAX_PARAMS_TAGS_PER_BATCH:
        keys = list(all_tags)
        first = {k: all_tags[k] for k in keys[:MAX_PARAMS_TAGS_PER_BATCH]}
        rest = {k: all_tags[k] for k in keys[MAX_PARAMS_TAGS_PER_BATCH:]}
    run = with_retries(lambda: mlflow_client.create_run(
        experiment_id, run_name=name, tags={t.key: t.value for t in tag_entities(first)}
    ))
    run_id = run.info.run_id
    if rest:
        set_tags(uri, run_id, rest)
    if params:
        log_params(uri, run_id, params)
    return run_id


def check_status(status: str) -> str:
    status = status.upper()
    if status not in RUN_STATUSES:
        raise ValueError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")
    return status


def end_run(uri: str | None, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run terminal (``FINISHED``, ``FAILED`` or ``KILLED``) with an end time."""
    status = check_status(status)
    mlflow_client = client(uri)
    with_retries(lambda: mlflow_client.set_terminated(run_id, status=status))


def run_status(uri: str | None, run_id: str) -> str:
    return client(uri).get_run(run_id).info.status


def get_run(uri: str | None, run_id: str) -> Run:
    return client(uri).get_run(run_id)


def get_metric_history(uri: str | None, run_id: str, key: str) -> list[Metric]:
    """Every logged value of ``key`` (``Metric`` with ``.step``, ``.value``, ``.timestamp``), by step."""
    history = client(uri).get_metric_history(run_id, key)
    return sorted(history, key=lambda m: (m.step, m.timestamp))


def _quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search for a value holding both quote kinds: {value!r}")


def find_runs(
    uri: str | None,
    experiment: str,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    status: str | None = None,
) -> list[Run]:
    """Runs of ``experiment`` with all of ``tags`` (and parent/status if given), newest first."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return []
    clauses = [f"tags.`{k}` = {_quote(str(v))}" for k, v in (tags or {}).items()]
    if parent_run_id:
        clauses.append(f"tags.`{PARENT_TAG}` = {_quote(parent_run_id)}")
    if status:
        clauses.append(f"attributes.status = {_quote(check_status(status))}")
    runs: list[Run] = []
    token = None
    while True:
        page = mlflow_client.search_runs(
            [found.experiment_id], " and ".join(clauses), max_results=1000,
            order_by=["attributes.start_time DESC"], page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_stage_run(uri: str | None, experiment: str, fingerprint: str) -> tuple[str, str] | None:
    """``(run_id, status)`` of the newest run tagged with ``fingerprint``, or ``None``."""
    runs = find_runs(uri, experiment, tags={"fingerprint": fingerprint})
    return (runs[0].info.run_id, runs[0].info.status) if runs else None


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The checkout's commit (``unknown`` outside a git checkout or without git)."""
    from scaling.paths import REPO_ROOT

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def standard_tags(**extra: Any) -> dict[str, str]:
    """``git_sha``, ``host``, ``slurm_job_id`` (``none`` outside SLURM) plus ``extra``.

    Extras are the lineage tags: ``rung``, ``stage``, ``teacher_run_id``, ``init_run_id``,
    ``fingerprint``...; ``None`` values are left out.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    tags = {"git_sha": git_sha(), "host": socket.gethostname(), "slurm_job_id": job or "none"}
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags
