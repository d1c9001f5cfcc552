"""A tracking URI's password stays out of every record: a real stage logging to a real
``mlflow server`` through ``http://alice:PASSWORD@host`` leaves it nowhere in the stage folder,
the server's store or the console, where the URI shows as ``alice:***@``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scaling.stage_state import stage_run_id

pytestmark = pytest.mark.integration

PASSWORD = "S3cretPW"


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_tracking_password_is_masked_in_folder_store_and_console(tmp_path, mlflow_server):
    host = mlflow_server.uri.split("://", 1)[1]
    uri = f"http://alice:{PASSWORD}@{host}"
    stage = tmp_path / "stage"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run(
        [sys.executable, "-m", "scaling.train", "--stage", "clip", "--rung", "B16", "--out", str(stage), "--mlflow",
         f"tracking.uri={uri}", "tracking.experiment=secrets", f"data.cache_dir={tmp_path / 'synth'}",
         "data.synth_samples=128", "train.batch_size=16", "train.samples=32", "train.log_every=1",
         "train.ckpt_every=1", "eval.max_samples=16"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert PASSWORD not in console
    assert "View run" in console and f"alice:***@{host}" in console  # MLflow's own line, masked

    assert files_holding(stage, PASSWORD.encode()) == []
    saved = yaml.safe_load((stage / "config.yaml").read_text())
    assert saved["tracking"]["uri"] == f"http://alice:***@{host}"
    assert files_holding(mlflow_server.root, PASSWORD.encode()) == []

    from mlflow import MlflowClient

    run = MlflowClient(mlflow_server.uri).get_run(stage_run_id(stage))
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == f"http://alice:***@{host}"
    assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if PASSWORD in v]


def test_the_store_probe_sends_the_password_as_basic_auth_and_shows_it_masked(mlflow_server):
    from scaling.tracking.probe import store_problem, unreachable

    host = mlflow_server.uri.split("://", 1)[1]
    uri = f"http://alice:{PASSWORD}@{host}"
    assert unreachable(uri) is None  # not "Name or service not known": alice:... is no part of the host
    assert store_problem(uri, "nothing-here") == (
        f"experiment 'nothing-here' does not exist at http://alice:***@{host} (nothing was recorded there yet)")
