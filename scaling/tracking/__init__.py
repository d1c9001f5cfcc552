"""MLflow tracking for ladders, stages and sweeps (docs/tracking.md): an experiment per ladder or
study, a parent run per invocation, a child run per stage (``mlflow.parentRunId``), params = the
flattened config, lineage in tags. Importing it does not import mlflow (a second): first use does."""

from scaling.tracking import store
from scaling.tracking.logger import MlflowLogger
from scaling.tracking.stage_run import open_stage_run
from scaling.tracking.store import *  # noqa: F403

__all__ = ["MlflowLogger", "open_stage_run", *store.__all__]
