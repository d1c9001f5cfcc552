"""The test services are real: submitit jobs run on the local slurmctld (results, dependencies,
preemption + requeue) and runs logged to `mlflow server` read back over its REST API."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import submitit

from tests.services import MlflowServer, SlurmCluster, jobs

pytestmark = pytest.mark.integration


def slurm_executor(folder: Path, **extra: object) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition="debug", timeout_min=10, cpus_per_task=1, **extra)
    return executor


# sacct states after which a job will not run again (REQUEUED, PENDING, ... are not final).
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def wait_final(job: submitit.Job, timeout: float = 90) -> str:
    """Wait until sacct gives the job a final state and return it. (submitit's ``done()`` turns
    true as soon as the result file exists, while the job may still be finishing.)"""
    deadline = time.monotonic() + timeout
    while True:
        state = job.get_info(mode="force").get("State", "UNKNOWN")
        if state.startswith(FINAL_STATES):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"job {job.job_id} still {state} after {timeout:.0f} s\n"
                        f"stderr:\n{job.stderr() or ''}")  # fmt: skip
        time.sleep(0.5)


def test_submitit_job_runs_on_local_slurm(
    slurm_cluster: SlurmCluster, submitit_folder: Path
) -> None:
    job = slurm_executor(submitit_folder).submit(jobs.where_am_i, 7)
    assert isinstance(job, submitit.SlurmJob)

    assert wait_final(job) == "COMPLETED"
    result = job.result()
    assert result["square"] == 49
    assert result["job_id"] == job.job_id
    assert result["host"].split(".")[0] == slurm_cluster.node


def test_afterok_dependant_of_failed_job_is_cancelled(
    slurm_cluster: SlurmCluster, submitit_folder: Path
) -> None:
    failing = slurm_executor(submitit_folder).submit(jobs.fail, "planned failure")
    dependant = slurm_executor(
        submitit_folder, slurm_additional_parameters={"dependency": f"afterok:{failing.job_id}"}
    ).submit(jobs.where_am_i, 3)

    assert wait_final(failing) == "FAILED"
    assert "planned failure" in str(failing.exception())
    # kill_invalid_depend: the dependant is cancelled instead of pending forever, never runs.
    assert wait_final(dependant, timeout=60).startswith("CANCELLED")
    dependant._results_timeout_s = (
        1  # submitit waits 15 s for a result file from a job that never ran
    )
    assert isinstance(dependant.exception(), submitit.core.utils.UncompletedJobError)
    assert not dependant.paths.result_pickle.exists()


def test_preempted_checkpointable_job_requeues_and_resumes(
    slurm_cluster: SlurmCluster, submitit_folder: Path, tmp_path: Path
) -> None:
    progress = tmp_path / "progress"
    job = slurm_executor(submitit_folder).submit(jobs.Countdown(), 12, 0.4, progress)
    deadline = time.monotonic() + 60
    while not (progress.exists() and int(progress.read_text() or 0) >= 3):
        assert time.monotonic() < deadline, f"job {job.job_id} did not start: {job.state}"
        time.sleep(0.2)

    job._interrupt()  # what a preemption does: SIGTERM, then submitit's USR2 -> checkpoint

    assert wait_final(job, timeout=120) == "COMPLETED"
    result = job.result()
    assert result["done"] == 12
    assert result["restarts"] >= 1
    assert result["starts"][0] == 0 and result["starts"][-1] >= 3, "did not resume from checkpoint"


def rest(uri: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """Call the tracking REST API with the standard library only, as another tool would."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def log_run(uri: str, experiment: str, tmp_path: Path) -> tuple[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(experiment_id, tags={"rung": "B16", "stage": "mim"})
    client.log_param(run.info.run_id, "optim.lr", "0.0015")
    for step, loss in enumerate([2.0, 1.5, 1.25]):
        client.log_metric(run.info.run_id, "train/loss", loss, step=step)
    note = tmp_path / "note.txt"
    note.write_text("hello from a test")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)
    return experiment_id, run.info.run_id


def test_mlflow_run_logged_over_http_reads_back_through_rest(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    experiment_id, run_id = log_run(mlflow_server.uri, "services-roundtrip", tmp_path)

    run = rest(mlflow_server.uri, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert {"key": "optim.lr", "value": "0.0015"} in run["data"]["params"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["rung"] == "B16" and tags["stage"] == "mim"
    history = rest(mlflow_server.uri, "metrics/get-history", run_id=run_id, metric_key="train/loss")
    assert [m["value"] for m in sorted(history["metrics"], key=lambda m: m["step"])] == [
        2.0,
        1.5,
        1.25,
    ]

    found = rest(mlflow_server.uri, "runs/search", {
        "experiment_ids": [experiment_id], "filter": "params.`optim.lr` = '0.0015'"})["runs"]  # fmt: skip
    assert [r["info"]["run_id"] for r in found] == [run_id]
    # Artifacts are proxied by the server into its own folder, not written by the client.
    files = rest(mlflow_server.uri, "artifacts/list", run_id=run_id)["files"]
    assert [f["path"] for f in files] == ["note.txt"]
    assert [p.read_text() for p in (mlflow_server.root / "artifacts").rglob("note.txt")] == [
        "hello from a test"
    ]


def test_mlflow_server_restart_keeps_port_and_store(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    uri = mlflow_server.uri
    _, run_id = log_run(uri, "services-restart", tmp_path)
    mlflow_server.stop()
    assert not mlflow_server.healthy()

    mlflow_server.restart()
    assert mlflow_server.uri == uri and mlflow_server.healthy()
    assert rest(uri, "runs/get", run_id=run_id)["run"]["info"]["run_id"] == run_id
