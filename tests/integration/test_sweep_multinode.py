"""Sweeps at cluster grade: a SLURM job array spread over two nodes, and an Optuna study on a real
PostgreSQL server (4 asynchronous workers, 160 trials), each trial one MLflow child run in an
``mlflow server`` whose own store is PostgreSQL too."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from scaling import tracking
from scaling.sweep.runner import absolutize, run_sweep
from scaling.sweep.spec import load_sweep
from scaling.sweep.storage import open_study

pytestmark = pytest.mark.integration

TOY = {
    "base": {"function": "scaling.sweep.toy:quadratic"},
    "search_space": {"x": {"type": "float", "low": -5, "high": 5}, "y": {"type": "float", "low": -5, "high": 5},
                     "steps": 1},
    "objectives": [{"metric": "loss", "direction": "minimize"}],
    "sampler": {"name": "random", "seed": 0},
    "heartbeat_s": 1,
    "stale_after_s": 5,
}  # fmt: skip


def trial_runs(uri: str, experiment: str) -> list:
    return [r for r in tracking.find_runs(uri, experiment) if r.data.tags.get("sweep_role") == "trial"]


def one_run_per_trial(uri: str, experiment: str, trials: list) -> list:
    children = trial_runs(uri, experiment)
    numbers = Counter(int(r.data.tags["optuna_trial_number"]) for r in children)
    assert numbers == Counter(t.number for t in trials)  # exactly one child run per trial
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    assert all(r.info.status == "FINISHED" for r in children)
    return children


def test_sweep_job_array_spreads_over_both_nodes(two_node_cluster, node_mlflow_server, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "array2.yaml"
    # a worker takes both CPUs of a node: the scheduler must put the two array tasks on two nodes
    path.write_text(yaml.safe_dump({**TOY, "name": "array2", "n_trials": 8, "workers": 2, "executor": "slurm",
                                    "resources": {"partition": "debug", "cpus_per_task": two_node_cluster.cpus,
                                                  "timeout_min": 10},
                                    "tracking": {"uri": node_mlflow_server.uri, "experiment": "sweep-two-node"}}))
    spec = load_sweep(path)
    summary = run_sweep(spec)
    assert summary["errors"] == []
    trials = open_study(absolutize(spec)).get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    children = one_run_per_trial(node_mlflow_server.uri, "sweep-two-node", trials)
    assert {r.data.tags["host"] for r in children} == {"sn1", "sn2"}  # the hostnames of the node namespaces
    array_ids = {r.data.tags["slurm_job_id"].split("_")[0] for r in children}
    assert len(array_ids) == 1  # one job array


def test_four_workers_forty_trials_each_on_postgresql(postgres, node_mlflow_server, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = postgres.create_database("optuna_conc")
    assert storage.startswith("postgresql://")  # what a user writes; psycopg2 takes it
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump({**TOY, "name": "pg", "n_trials": 160, "workers": 4, "executor": "local",
                                    "tracking": {"uri": node_mlflow_server.uri, "experiment": "sweep-postgresql"}}))
    spec = load_sweep(path, [f"storage={storage}"])  # chosen on the command line
    summary = run_sweep(spec)
    assert summary["errors"] == []
    trials = open_study(absolutize(spec)).get_trials()
    assert len(trials) == 160 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(160))  # none lost, none twice
    assert len(Counter(t.user_attrs["worker"] for t in trials)) == 4
    one_run_per_trial(node_mlflow_server.uri, "sweep-postgresql", trials)
    # the study really lives in PostgreSQL: count its rows there
    import psycopg2

    with psycopg2.connect(storage) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                    "WHERE s.study_name = 'pg' AND t.state = 'COMPLETE'")
        assert cur.fetchone()[0] == 160
