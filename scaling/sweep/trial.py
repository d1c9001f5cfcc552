"""Run one asked trial: its MLflow child run, heartbeats, the stage pipeline (or function),
intermediate reports for the pruner, and the final ``tell``.

The child run is created when the trial starts, so the MLflow UI shows it (params, live
metrics) while it trains. The link is kept both ways: run tags ``optuna_study`` /
``optuna_trial_number`` and the trial's ``mlflow_run_id`` user attribute.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from scaling.metrics import MetricLogger, MultiLogger, NullLogger
from scaling.sweep import runs
from scaling.sweep.accounting import root_trial_number
from scaling.sweep.heartbeats import beat
from scaling.sweep.pipeline import trial_configs, trial_costs
from scaling.sweep.spec import SweepError, SweepSpec
from scaling.train import run_stage

log = logging.getLogger(__name__)


class TrialTimeout(RuntimeError):
    """The trial ran past the sweep's ``timeout_min``."""


class PrefixedLogger(NullLogger):
    """Names a pipeline stage's metrics ``<stage>/<metric>`` in the trial's single run."""

    def __init__(self, inner: MetricLogger, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.inner.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step)


class TrialReporter(NullLogger):
    """Hands the objective's intermediate values to Optuna; raises ``TrialPruned`` when told.

    Also keeps the newest value of every metric, for the trial's result row.
    """

    def __init__(self, trial: optuna.Trial, key: str | None) -> None:
        self.trial, self.key = trial, key
        self.latest: dict[str, float] = {}
        self.last_step = 0

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.latest.update({k: float(v) for k, v in metrics.items()})
        self.last_step = max(self.last_step, int(step))
        if self.key is None or self.key not in metrics:
            return
        # A resumed stage may re-send a step that was already reported: Optuna ignores it.
        self.trial.report(float(metrics[self.key]), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {self.key}={float(metrics[self.key]):.4g}")


@dataclass
class TrialContext:
    """What a ``base.function`` objective gets besides its parameters."""

    number: int
    out_dir: Path
    retry_of: int | None
    logger: MetricLogger
    deadline: float
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step)

    def should_stop(self) -> bool:
        return time.monotonic() > self.deadline


def load_function(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SweepError(f"base.function '{ref}' cannot be imported: {exc}") from None
    if not callable(obj):
        raise SweepError(f"base.function '{ref}' is not callable")
    return obj


class Heartbeat:
    """Touches the trial's heartbeat file every ``interval`` seconds from a daemon thread."""

    def __init__(self, spec: SweepSpec, trial_id: int) -> None:
        self.spec, self.trial_id = spec, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        beat(self.spec, self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.spec.heartbeat_s):
            try:
                beat(self.spec, self.trial_id)
            except OSError as exc:  # a full or flaky disk: the trial may be reaped; say why
                log.warning("heartbeat of trial %s failed: %s", self.trial_id, exc)


def _run_function(spec: SweepSpec, params: dict[str, Any], ctx: TrialContext) -> dict[str, float]:
    fn = load_function(spec.base.function or "")
    result = fn(params, ctx)
    if isinstance(result, Mapping):
        return {str(k): float(v) for k, v in result.items()}
    if len(spec.objectives) == 1:
        return {spec.objectives[0].key: float(result)}
    raise SweepError(f"base.function returned {type(result).__name__}; with several objectives "
                     "it must return a dict of metric -> value")


def _run_pipeline(configs: list[Any], spec: SweepSpec, logger: MetricLogger, deadline: float) -> dict[str, float]:
    final: dict[str, float] = {}
    for cfg in configs:
        stage = str(cfg.stage.kind)
        prefix = f"{stage}/" if spec.base.prefixed else ""
        result = run_stage(cfg, logger=PrefixedLogger(logger, prefix),
                           stop_requested=lambda: time.monotonic() > deadline)
        if result.status != "finished":
            raise TrialTimeout(f"the {stage} stage stopped at step {result.steps} ({result.status}): "
                               f"the trial ran past timeout_min={spec.timeout_min}")
        final.update({f"{prefix}{k}": float(v) for k, v in result.metrics.items()})
    return final


def _objective_values(spec: SweepSpec, metrics: Mapping[str, float]) -> list[float]:
    missing = [o.key for o in spec.objectives if o.key not in metrics]
    if missing:
        raise SweepError(f"the trial finished without logging objective metric(s) {', '.join(missing)}; "
                         f"it logged: {', '.join(sorted(metrics)) or 'nothing'}")
    return [float(metrics[o.key]) for o in spec.objectives]


def run_trial(study: optuna.Study, trial: optuna.Trial, spec: SweepSpec, *, uri: str,
              parent_run_id: str | None, worker: int) -> TrialState:
    """Run ``trial`` (already asked) to its end and ``tell`` the study; returns its final state."""
    frozen = study._storage.get_trial(trial._trial_id)
    retry_of = frozen.system_attrs.get("failed_trial")
    root = root_trial_number(frozen)
    trial_dir = spec.work_dir() / "trials" / f"{root:05d}"
    params = dict(trial.params)
    deadline = time.monotonic() + spec.timeout_min * 60
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("out_dir", str(trial_dir))
    run_id, mlflow_logger = None, None
    single = spec.objectives[0].key if len(spec.objectives) == 1 and spec.pruner.get("name") != "none" else None
    reporter = TrialReporter(trial, single)
    state, values, reason = TrialState.FAIL, None, ""
    returned: dict[str, float] = {}
    with Heartbeat(spec, trial._trial_id):
        try:
            configs = []
            if spec.base.function is None:
                configs = trial_configs(spec, params, trial_dir)
            run_id = runs.start_trial_run(spec, uri, parent_run_id, trial.number, params, configs,
                                          retry_of=retry_of, worker=worker)
            trial.set_user_attr("mlflow_run_id", run_id)
            mlflow_logger = runs.trial_logger(uri, run_id)
            logger = MultiLogger([mlflow_logger, reporter])
            if spec.base.function is not None:
                ctx = TrialContext(trial.number, trial_dir, retry_of, logger, deadline)
                metrics = _run_function(spec, params, ctx)
            else:
                metrics = _run_pipeline(configs, spec, logger, deadline)
                metrics.update(trial_costs(configs))
            returned = {k: v for k, v in metrics.items() if reporter.latest.get(k) != v}
            reporter.latest.update(metrics)
            values = _objective_values(spec, metrics)
            state = TrialState.COMPLETE
        except optuna.TrialPruned as exc:
            state, reason = TrialState.PRUNED, str(exc)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("trial %d failed: %s\n%s", trial.number, reason, traceback.format_exc())
        finally:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if reporter.latest:
                    trial.set_user_attr("metrics", _finite(reporter.latest))
                if reason:
                    trial.set_user_attr("fail_reason" if state == TrialState.FAIL else "pruned_reason", reason[:1000])
            if mlflow_logger is not None and returned:
                # Final values the stages did not log themselves (costs, a function's result).
                mlflow_logger.log_metrics(_finite(returned), step=reporter.last_step)
            runs.finish_trial_run(uri, run_id, mlflow_logger, state.name, reason)
    try:
        study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Reaped as stale while it ran (heartbeats starved): its retry is queued and will run
        # it again; this result is dropped so the trial is not counted twice.
        log.warning("trial %d was failed as stale while running; its result is dropped", trial.number)
        return TrialState.FAIL
    return state


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if v == v and abs(v) != float("inf")}
