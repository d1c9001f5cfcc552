"""MLflow tracking for ladders, stages and sweeps.

Conventions: an experiment per ladder (or sweep study), a parent run per invocation, a child run
per stage linked by the ``mlflow.parentRunId`` tag (works across processes and machines), params
= the flattened resolved config, lineage in tags (``standard_tags``). Default store: SQLite at
``<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts``; ``$MLFLOW_TRACKING_URI`` or
``tracking.uri=`` for a server.

Importing this package does not import mlflow (about a second): that happens on first use.
"""

from __future__ import annotations

import os

# Before mlflow is imported anywhere through us: no usage telemetry, and short HTTP retries so a
# dead server costs seconds, not minutes, per call (the logger retries on its own schedule).
# setdefault: a value the user exported wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

from scaling.tracking.logger import MlflowLogger, rank_zero_logger  # noqa: E402
from scaling.tracking.store import (  # noqa: E402
    PARENT_TAG,
    TERMINAL_STATUSES,
    artifact_root,
    client,
    end_run,
    find_runs,
    find_stage_run,
    get_metric_history,
    get_or_create_experiment,
    get_run,
    git_sha,
    log_params,
    resolve_uri,
    run_status,
    set_tags,
    standard_tags,
    start_run,
)

__all__ = [
    "PARENT_TAG",
    "TERMINAL_STATUSES",
    "MlflowLogger",
    "artifact_root",
    "client",
    "end_run",
    "find_runs",
    "find_stage_run",
    "get_metric_history",
    "get_or_create_experiment",
    "get_run",
    "git_sha",
    "log_params",
    "rank_zero_logger",
    "resolve_uri",
    "run_status",
    "set_tags",
    "standard_tags",
    "start_run",
]
