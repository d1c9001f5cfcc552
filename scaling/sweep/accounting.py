"""Trial accounting read from a study: counts by state, a retry's first attempt, a trial's summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState


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
