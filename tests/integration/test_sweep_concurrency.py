"""Many asynchronous local workers on one journal file: exact trial counts, no duplicates, one
MLflow child run per trial; a worker SIGKILLed mid-trial loses nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from scaling import tracking
from scaling.sweep.accounting import count
from scaling.sweep.runner import absolutize, run_sweep
from scaling.sweep.spec import load_sweep
from scaling.sweep.storage import open_study

pytestmark = pytest.mark.integration


def write_sweep(path: Path, **changes) -> Path:
    data = {
        "base": {"function": "scaling.sweep.toy:quadratic"},
        "search_space": {"x": {"type": "float", "low": -5, "high": 5},
                         "y": {"type": "float", "low": -5, "high": 5}, "steps": 1},
        "objectives": [{"metric": "loss", "direction": "minimize"}],
        "sampler": {"name": "random", "seed": 0},
        "executor": "local",
        "heartbeat_s": 1,
        "stale_after_s": 5,
        **changes,
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def reap_workers():
    """Studies whose worker processes are killed after the test, pass or fail (a failed test
    must not leave workers writing into the next run's folders)."""
    studies = []
    yield studies.append
    for study in studies:
        for t in study.get_trials(deepcopy=False):
            pid = t.user_attrs.get("worker_pid")
            if pid and pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_four_workers_forty_trials_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_server,
                                        reap_workers) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path / "conc.yaml", name="conc", n_trials=160, workers=4,
                       tracking={"uri": mlflow_server.uri, "experiment": "sweep-concurrency"})
    spec = load_sweep(path)
    reap_workers(open_study(absolutize(spec), create=True))
    summary = run_sweep(spec)
    assert summary["errors"] == []
    trials = open_study(absolutize(spec)).get_trials()
    assert len(trials) == 160  # never overshot, no failed extras
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(160))
    workers = Counter(t.user_attrs["worker"] for t in trials)
    assert len(workers) == 4  # every worker took trials (asynchronously, not in batches)
    children = [r for r in tracking.find_runs(mlflow_server.uri, "sweep-concurrency")
                if r.data.tags.get("sweep_role") == "trial"]
    numbers = Counter(int(r.data.tags["optuna_trial_number"]) for r in children)
    assert numbers == Counter(range(160))  # exactly one child run per trial
    run_ids = {t.user_attrs["mlflow_run_id"] for t in trials}
    assert run_ids == {r.info.run_id for r in children}
    assert all(r.info.status == "FINISHED" for r in children)


def test_killed_worker_trial_is_retried_and_target_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          reap_workers) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_sweep(tmp_path / "kill.yaml", name="kill", n_trials=6, workers=2,
                       base={"function": "scaling.sweep.toy:slow_first"},
                       search_space={"x": {"type": "float", "low": -5, "high": 5}, "steps": 1, "hang_s": 120},
                       tracking={"uri": uri})
    spec = absolutize(load_sweep(path))
    run_sweep(spec, detach=True)
    study = open_study(spec)
    reap_workers(study)

    def first_trial_running():
        t = study.get_trials(deepcopy=False)
        first = next((x for x in t if x.number == 0), None)
        marker = Path(spec.work_dir()) / "trials" / "00000" / "started"
        running = first and first.state == TrialState.RUNNING
        return first if running and marker.exists() and "worker_pid" in first.user_attrs else None

    victim = wait_for(first_trial_running, 180, "trial 0 to start")
    os.kill(int(victim.user_attrs["worker_pid"]), signal.SIGKILL)
    wait_for(lambda: count(study.get_trials(deepcopy=False)).finished >= 6, 180, "the study to reach 6 trials")
    time.sleep(1.0)  # a straggler would show up as a 7th trial
    trials = study.get_trials()
    c = count(trials)
    assert (c.finished, c.running, c.waiting, c.errors) == (6, 0, 0, 0)
    dead = next(t for t in trials if t.number == 0)
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("stale")
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["out_dir"] == dead.user_attrs["out_dir"]  # resumes the same folder
    assert len([t for t in trials if t.state == TrialState.FAIL]) == 1
    runs = {r.data.tags.get("optuna_trial_number"): r for r in tracking.find_runs(uri, spec.experiment)
            if r.data.tags.get("sweep_role") == "trial"}
    assert runs["0"].info.status == "FAILED" and runs["0"].data.tags["optuna_state"] == "FAIL"
    retry_run = runs[str(retry.number)]
    assert retry_run.data.tags["retry_of"] == "0" and retry_run.info.status == "FINISHED"
