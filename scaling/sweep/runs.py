"""MLflow side of a sweep: one parent run per study, one child run per trial (attempt).

Trial states map to run statuses as COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED; the
Optuna state itself is the ``optuna_state`` tag, so the UI can filter on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scaling import tracking
from scaling.config import flatten
from scaling.sweep.spec import SweepSpec
from scaling.tracking import MlflowLogger

log = logging.getLogger(__name__)

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def study_tags(spec: SweepSpec) -> dict[str, str]:
    return {
        "optuna_study": spec.name,
        "optuna_storage": spec.storage_label(),
        "sampler": json.dumps(spec.sampler, sort_keys=True),
        "pruner": json.dumps(spec.pruner, sort_keys=True),
        "objectives": ", ".join(f"{o.key} ({o.direction})" for o in spec.objectives),
        "n_trials": str(spec.n_trials),
        "workers": str(spec.workers),
        "sweep_file": str(spec.path),
        "sweep_role": "study",
    }


def start_parent_run(spec: SweepSpec, uri: str, existing: str | None) -> str:
    """The study's parent run: ``existing`` (reopened) when the study already has one."""
    if existing:
        try:
            tracking.client(uri).update_run(existing, status="RUNNING")
            return existing
        except Exception as exc:  # deleted run, other server: start a fresh parent, say so
            log.warning("parent run %s cannot be reopened (%s); starting a new one", existing, exc)
    params = {f"search_space.{p.name}": _describe(p) for p in spec.params}
    return tracking.start_run(uri, spec.experiment, f"sweep:{spec.name}",
                              tags=tracking.standard_tags(**study_tags(spec)), params=params)


def _describe(p: Any) -> str:
    if p.type == "categorical":
        return json.dumps(list(p.choices))
    if p.type == "fixed":
        return json.dumps(p.value)
    return f"{p.type}[{p.low}, {p.high}]{' log' if p.log else ''}"


def start_trial_run(spec: SweepSpec, uri: str, parent_run_id: str | None, number: int,
                    params: Mapping[str, Any], configs: Sequence[Any], *, retry_of: int | None,
                    worker: int) -> str:
    """Create the trial's child run with its params (``hp/<name>``) and resolved configs."""
    all_params: dict[str, Any] = {f"hp/{k}": v for k, v in params.items()}
    for cfg in configs:
        prefix = f"{cfg.stage.kind}." if spec.base.prefixed else ""
        all_params.update({f"{prefix}{k}": v for k, v in flatten(cfg).items()})
    tags = {
        "optuna_study": spec.name,
        "optuna_trial_number": str(number),
        "optuna_state": "RUNNING",
        "sweep_role": "trial",
        "sweep_worker": str(worker),
        "retry_of": None if retry_of is None else str(retry_of),
    }
    if configs:
        cfg = configs[-1]
        tags.update(rung=str(cfg.stage.rung), stage="+".join(spec.base.stages))
    return tracking.start_run(uri, spec.experiment, f"trial-{number}", parent_run_id=parent_run_id,
                              tags=tracking.standard_tags(**tags), params=all_params)


def trial_logger(uri: str, run_id: str) -> Any:
    return MlflowLogger(uri, run_id, flush_every_s=1.0)


def finish_trial_run(uri: str, run_id: str | None, logger: Any, state: str, reason: str = "") -> None:
    """Final state tag, then deliver buffered metrics and mark the run terminal."""
    if run_id is None:
        return

    try:
        tags = {"optuna_state": state}
        if reason:
            tags["optuna_reason"] = reason[:4000]
        tracking.set_tags(uri, run_id, tags)
        if logger is not None:
            logger.close(RUN_STATUS.get(state, "FAILED"))
        else:
            tracking.end_run(uri, run_id, RUN_STATUS.get(state, "FAILED"))
    except Exception as exc:  # tracking must not turn a finished trial into a lost one
        log.warning("could not finish MLflow run %s (%s): %s", run_id, state, exc)


def mark_stale_run(uri: str, run_id: str | None, reason: str) -> None:
    """A reaped trial's run (its worker died): FAILED with the reason."""
    if run_id:
        finish_trial_run(uri, run_id, None, "FAIL", reason)


def finish_parent_run(uri: str, run_id: str, spec: SweepSpec, summary: dict[str, Any],
                      table_files: Sequence[Path], done: bool) -> None:
    """Best trial(s) / Pareto front as tags and metrics; the result tables as artifacts."""
    tags: dict[str, Any] = {
        "trials_complete": summary["counts"]["COMPLETE"],
        "trials_pruned": summary["counts"]["PRUNED"],
        "trials_fail": summary["counts"]["FAIL"],
    }
    best = summary.get("best") or []
    if len(spec.objectives) == 1 and best:
        b = best[0]
        tags.update(best_trial=b["number"], best_value=b["values"][0], best_params=json.dumps(b["params"]),
                    best_mlflow_run_id=b.get("mlflow_run_id"))
    elif best:
        tags["pareto_front"] = ",".join(str(b["number"]) for b in best)
        tags["pareto_runs"] = ",".join(str(b.get("mlflow_run_id")) for b in best)
    tracking.set_tags(uri, run_id, tags)
    client = tracking.client(uri)
    if len(spec.objectives) == 1 and best:
        client.log_metric(run_id, f"best/{spec.objectives[0].key}", best[0]["values"][0])
    for path in table_files:
        client.log_artifact(run_id, str(path), "results")
    tracking.end_run(uri, run_id, "FINISHED" if done else "KILLED")
