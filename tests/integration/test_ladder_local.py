"""The user's command end to end on the embedded defaults: the proxy ladder E14 -> 18B on the local
executor (real subprocess jobs, real stages), a SQLite MLflow store in the working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = ["train.samples=32", "train.batch_size=16", "eval.every_samples=0", "eval.max_samples=32"]


def _ladder(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "scaling.ladder", "--from", "E14", "--to", "18B", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_proxy_ladder_on_the_local_executor(tmp_path):
    from scaling import tracking

    first = _ladder(tmp_path, *TINY)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "running the proxy ladder on the local executor" in out
    for stage in ("clip@E14", "mim@18B", "clip@18B"):
        assert f"[{stage}] submitted: local job" in out and f"[{stage}] finished" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in out
    results = out.split("results (zero-shot")[1]
    assert results.count("finished") == 3 and results.count("synth_cls") == 2 and "mim loss" in results

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = {r.info.run_name: r for r in tracking.find_runs(uri, "ladder-eva")}
    assert {"clip@E14", "mim@18B", "clip@18B"} <= set(runs)
    assert all(runs[s].info.status == "FINISHED" for s in ("clip@E14", "mim@18B", "clip@18B"))

    again = _ladder(tmp_path, *TINY)
    assert again.returncode == 0 and "nothing to run" in again.stdout and "submitted" not in again.stdout

    changed = _ladder(tmp_path, *TINY, "clip@18B.optim.lr=0.001")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "[clip@E14] finished earlier" in changed.stdout and "[mim@18B] finished earlier" in changed.stdout
    assert "[clip@18B] submitted" in changed.stdout
