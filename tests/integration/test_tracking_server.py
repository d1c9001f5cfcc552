"""MLflow tracking against a real ``mlflow server`` on loopback: lineage over REST, outages."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaling import tracking
from tests.services.mlflow_server import MlflowServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


def rest(uri: str, endpoint: str, body: dict | None = None) -> dict:
    """Call the tracking REST API directly, the way another tool would (no mlflow client)."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_run_tree_with_lineage_is_queryable_over_rest(server: MlflowServer) -> None:
    uri = server.uri
    parent = tracking.start_run(uri, "eva-ladder", "E14->18B", tags=tracking.standard_tags())
    teacher = "e14-clip-run"
    mim = tracking.start_run(
        uri, "eva-ladder", "mim@18B", parent_run_id=parent,
        tags=tracking.standard_tags(rung="18B", stage="mim", teacher_run_id=teacher,
                                    fingerprint="fp-mim"),
        params={"model.rung": "18B", "optim.lr": "0.0015"},
    )
    clip = tracking.start_run(
        uri, "eva-ladder", "clip@18B", parent_run_id=parent,
        tags=tracking.standard_tags(rung="18B", stage="clip", init_run_id=mim,
                                    teacher_run_id=teacher, fingerprint="fp-clip"),
    )
    with tracking.MlflowLogger(uri, mim, flush_every_s=0.1) as logger:
        for step in range(5):
            logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step)

    experiment = rest(uri, "experiments/get-by-name?" + urllib.parse.urlencode(
        {"experiment_name": "eva-ladder"}))["experiment"]
    # made by the toolkit: MLflow 3's UI opens it in the training-runs view
    assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    found = rest(uri, "runs/search", {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.`mlflow.parentRunId` = '{parent}'",
    })["runs"]
    by_name = {run["info"]["run_name"]: run for run in found}
    assert set(by_name) == {"mim@18B", "clip@18B"}
    tags = {t["key"]: t["value"] for t in by_name["clip@18B"]["data"]["tags"]}
    assert tags["init_run_id"] == mim and tags["teacher_run_id"] == teacher
    assert {"rung", "stage", "fingerprint", "git_sha", "host", "slurm_job_id"} <= set(tags)
    assert by_name["clip@18B"]["info"]["run_id"] == clip
    mim_run = by_name["mim@18B"]
    assert mim_run["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in mim_run["data"]["params"]}["optim.lr"] == "0.0015"
    history = rest(uri, "metrics/get-history?" + urllib.parse.urlencode(
        {"run_id": mim, "metric_key": "train/loss"}))["metrics"]
    assert sorted(int(m["step"]) for m in history) == list(range(5))
    # The same tree through the toolkit's own queries.
    assert {r.info.run_id for r in tracking.find_runs(uri, "eva-ladder", parent_run_id=parent)} == {
        mim, clip}
    assert tracking.find_stage_run(uri, "eva-ladder", "fp-clip") == (clip, "RUNNING")


def test_server_killed_mid_stage_loses_no_metric(
    server: MlflowServer, caplog: pytest.LogCaptureFixture
) -> None:
    uri = server.uri
    run = tracking.start_run(uri, "outage", "clip@B16")
    logger = tracking.MlflowLogger(uri, run, flush_every_s=0.1, max_backoff_s=2.0)
    slowest_call = 0.0
    step = 0

    def train(steps: int) -> None:
        nonlocal step, slowest_call
        for _ in range(steps):
            started = time.perf_counter()
            logger.log_metrics({"train/loss": 1.0 / (step + 1), "train/samples_seen": 8.0 * step},
                               step)
            slowest_call = max(slowest_call, time.perf_counter() - started)
            step += 1
            time.sleep(0.005)

    with caplog.at_level(logging.WARNING, logger="scaling.tracking"):
        train(100)
        # SIGKILL, not a polite stop: a batch may be cut mid-request, as in a real crash.
        os.killpg(server._proc.pid, signal.SIGKILL)
        server.stop()
        train(100)  # training goes on while the server is down
        restarting = threading.Thread(target=server.start)
        restarting.start()
        while restarting.is_alive():
            train(10)
        restarting.join()
        train(100)
        logger.close(timeout_s=60)

    assert server.healthy()
    for key in ("train/loss", "train/samples_seen"):
        steps = [m.step for m in tracking.get_metric_history(uri, run, key)]
        assert steps == list(range(step)), f"{key}: {len(steps)} logged of {step}"
    assert tracking.run_status(uri, run) == "FINISHED"
    # A blocked call would take MLflow's HTTP retries (seconds); the margin is for a busy CI box.
    assert slowest_call < 0.5, f"log_metrics blocked training for {slowest_call:.3f} s"
    messages = [r.getMessage() for r in caplog.records]
    assert sum(f"MLflow at {uri} unreachable; buffering" in m for m in messages) == 1
    assert any("reachable again" in m for m in messages)


def race_to_create(uri: str, name: str, folder: Path, processes: int = 3) -> set[str]:
    """``processes`` interpreters create experiment ``name`` at the same moment; their ids."""
    go = folder / "go"
    code = textwrap.dedent(f"""
        import pathlib, sys, time
        import mlflow  # imported before the start signal, so the calls below really overlap
        from scaling import tracking
        pathlib.Path({str(folder)!r}, "ready-" + sys.argv[1]).touch()
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.005)
        print(tracking.get_or_create_experiment({name!r}, {uri!r}))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(processes)]
    deadline = time.monotonic() + 180
    while len(list(folder.glob("ready-*"))) < processes and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    return {out.strip() for out, _ in outs}


def test_processes_racing_on_a_fresh_database_share_one_experiment(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # schema not created yet either
    assert len(race_to_create(uri, "shared", tmp_path)) == 1
    names = [e.name for e in tracking.client(uri).search_experiments()]
    assert names.count("shared") == 1


def test_processes_racing_on_a_server_share_one_experiment(server: MlflowServer,
                                                           tmp_path: Path) -> None:
    assert len(race_to_create(server.uri, "shared-on-server", tmp_path)) == 1
