"""Workers, accounting, stale trials and MLflow links, on toy objectives in this process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from scaling import tracking
from scaling.sweep.__main__ import main
from scaling.sweep.accounting import count, root_trial_number
from scaling.sweep.heartbeats import ask_lock, heartbeat_path, reap_stale
from scaling.sweep.runner import absolutize, run_sweep
from scaling.sweep.samplers import distributions, make_sampler
from scaling.sweep.spec import load_sweep
from scaling.sweep.storage import open_study
from scaling.sweep.worker import run_worker

TOY = {
    "name": "toy",
    "base": {"function": "scaling.sweep.toy:quadratic"},
    "search_space": {"x": {"type": "float", "low": -5, "high": 5},
                     "y": {"type": "float", "low": -5, "high": 5}, "steps": 3},
    "objectives": [{"metric": "loss", "direction": "minimize"}],
    "sampler": {"name": "tpe", "seed": 0},
    "pruner": {"name": "median", "n_startup_trials": 2},
    "n_trials": 6,
    "workers": 1,
    "executor": "debug",
    "heartbeat_s": 0.5,
    "stale_after_s": 2,
}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating one costs seconds (schema migrations)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracking.client(uri)
    return uri


@pytest.fixture
def sweep_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str,
               request: pytest.FixtureRequest):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    test = request.node.name.removeprefix("test_")[:40]

    def write(**changes) -> Path:
        name = f"{test}-{changes.pop('name', 'toy')}"
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**TOY, "name": name, **changes}))
        return path

    return write


def runs_of(spec_or_path) -> list:
    spec = spec_or_path if hasattr(spec_or_path, "experiment") else load_sweep(spec_or_path)
    return tracking.find_runs(None, spec.experiment)


def test_sweep_reaches_exactly_the_target_with_linked_runs(sweep_file) -> None:
    spec = load_sweep(sweep_file())
    summary = run_sweep(spec)
    counts = summary["counts"]
    assert counts["COMPLETE"] + counts["PRUNED"] == 6 and counts["RUNNING"] == counts["WAITING"] == 0
    study = open_study(absolutize(spec))
    trials = study.get_trials()
    assert all(t.intermediate_values for t in trials)  # reported, so the pruner could act
    runs = runs_of(spec)
    children = [r for r in runs if r.data.tags.get("sweep_role") == "trial"]
    parent = next(r for r in runs if r.data.tags.get("sweep_role") == "study")
    assert len(children) == 6
    by_number = {int(r.data.tags["optuna_trial_number"]): r for r in children}
    assert sorted(by_number) == [t.number for t in trials]
    for t in trials:
        run = by_number[t.number]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id  # trial -> run
        assert run.data.tags[tracking.PARENT_TAG] == parent.info.run_id  # run -> parent
        assert run.data.tags["optuna_state"] == t.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[t.state.name]
        assert float(run.data.params["hp/x"]) == pytest.approx(t.params["x"])
        assert "loss" in run.data.metrics
    best = study.best_trial
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.info.status == "FINISHED"
    assert (Path(spec.work_dir()) / "results.csv").read_text().count("\n") == 7


def test_rerun_continues_the_same_study_to_a_new_target(sweep_file) -> None:
    path = sweep_file(n_trials=3, pruner="none")
    run_sweep(load_sweep(path))
    summary = run_sweep(load_sweep(path, ["n_trials=5"]))
    assert summary["counts"]["COMPLETE"] == 5
    parents = [r for r in runs_of(path) if r.data.tags.get("sweep_role") == "study"]
    assert len(parents) == 1  # the same parent run, reopened


def test_stale_trial_is_failed_and_retried_with_its_params(sweep_file) -> None:
    spec = absolutize(load_sweep(sweep_file()))
    study = open_study(spec, create=True)
    trial = study.ask(fixed_distributions=distributions(spec.params))
    assert reap_stale(study, spec) == []  # just started: not stale
    heartbeat_path(spec, trial._trial_id).parent.mkdir(parents=True, exist_ok=True)
    heartbeat_path(spec, trial._trial_id).touch()
    later = time.time() + spec.stale_after_s + 1
    (reaped,) = reap_stale(study, spec, now=later)
    assert reaped.number == trial.number and reaped.state == TrialState.FAIL
    assert reap_stale(study, spec, now=later) == []  # reaped once only
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == trial.params
    assert root_trial_number(waiting[0]) == trial.number
    c = count(study.get_trials())
    assert (c.fail, c.errors, c.waiting) == (1, 0, 1)  # a stale trial is not an error
    # The retry is run by the next worker, in the first attempt's folder, and completes.
    run_worker(spec, uri=None)
    trials = study.get_trials()
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == trial.number)
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.user_attrs["out_dir"].endswith(f"{trial.number:05d}")
    assert count(trials).finished == spec.n_trials


def test_failing_trials_stop_the_worker_after_max_failures(sweep_file) -> None:
    path = sweep_file(base={"function": "scaling.sweep.toy:does_not_exist_at_run"}, max_failures=2)
    spec = absolutize(load_sweep(path))
    open_study(spec, create=True)
    summary = run_worker(spec)
    assert "failed" in summary.stopped
    trials = open_study(spec).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert "cannot be imported" in trials[0].user_attrs["fail_reason"]


def test_multi_objective_pareto_front_on_the_parent_run(sweep_file) -> None:
    path = sweep_file(
        name="pareto", base={"function": "scaling.sweep.toy:noisy_sine"}, pruner="none",
        search_space={"x": [0.0, 0.5, 1.0, 1.5]}, sampler={"name": "grid"}, n_trials=4,
        objectives=[{"metric": "score", "direction": "maximize"}, {"metric": "cost", "direction": "minimize"}])
    summary = run_sweep(load_sweep(path))
    assert summary["counts"]["COMPLETE"] == 4
    params = sorted(t["params"]["x"] for t in summary["trials"])
    assert params == [0.0, 0.5, 1.0, 1.5]  # the grid, each point once
    parent = next(r for r in runs_of(path) if r.data.tags.get("sweep_role") == "study")
    front = {int(n) for n in parent.data.tags["pareto_front"].split(",")}
    assert front == {b["number"] for b in summary["best"]} and front


def test_ask_lock_is_exclusive(sweep_file) -> None:
    spec = absolutize(load_sweep(sweep_file()))
    with ask_lock(spec):
        assert (Path(spec.work_dir()) / "ask.lock").exists()
    assert not (Path(spec.work_dir()) / "ask.lock").exists()


def test_status_command_prints_counts_and_best(sweep_file, capsys: pytest.CaptureFixture[str]) -> None:
    path = sweep_file(n_trials=3, pruner="none")
    assert main([str(path)]) == 0
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3/3 finished" in out and "COMPLETE=3" in out and "best trial" in out
    spec = absolutize(load_sweep(path))
    assert (Path(spec.work_dir()) / "results.md").exists()


def test_grid_point_that_failed_is_run_again(sweep_file) -> None:
    spec = absolutize(load_sweep(sweep_file(search_space={"x": [1.0, 2.0]}, sampler={"name": "grid"},
                                            pruner="none", n_trials=2)))
    study = open_study(spec, create=True)
    dists = distributions(spec.params)
    first = study.ask(fixed_distributions=dists)
    study.tell(first, state=TrialState.FAIL)
    second = study.ask(fixed_distributions=dists)
    study.tell(second, 1.0)
    third = study.ask(fixed_distributions=dists)  # Optuna's own GridSampler would repeat at random
    assert third.params["x"] == first.params["x"] != second.params["x"]
    study.tell(third, 1.0)  # the grid is exhausted: no study.stop() outside optimize


def test_grid_points_are_the_same_in_every_worker(sweep_file) -> None:
    path = sweep_file(search_space={"a": [1, 2, 3], "b": ["p", "q"]}, sampler={"name": "grid"},
                      pruner="none", n_trials=6)
    spec = absolutize(load_sweep(path))
    grids = [make_sampler(spec, worker)._all_grids for worker in range(3)]
    assert grids[0] == grids[1] == grids[2] and len(set(grids[0])) == 6
