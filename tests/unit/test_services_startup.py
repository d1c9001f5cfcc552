"""The SLURM test cluster's start-up checks, without starting SLURM (no root needed)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import processes as ps
from tests.services.slurm import SlurmCluster


@pytest.fixture
def cluster() -> Iterator[SlurmCluster]:
    root = Path(tempfile.mkdtemp(prefix="scaling-slurm-", dir="/tmp"))  # short: socket paths
    cluster = SlurmCluster(root)
    cluster.logs.mkdir(parents=True)
    cluster._spawned = {}
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_a_live_daemon_counts_as_started_even_when_proc_hides_its_environment(
    cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Right after exec, /proc/PID/environ can read empty; that must not make a daemon "exit".
    monkeypatch.setattr(ps, "marked_pids", lambda *a, **k: [])
    cluster._spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cluster._check_daemons()
        assert cluster._spawned["sleeper"].poll() is None
    finally:
        cluster.stop()
    assert cluster._spawned["sleeper"].poll() is not None  # stop() reaches it by its handle


def test_a_daemon_that_exits_is_reported_with_its_status_and_log(cluster: SlurmCluster) -> None:
    cluster._spawn("broken", [sys.executable, "-c", "print('no key file'); raise SystemExit(3)"])
    cluster._spawned["broken"].wait(timeout=30)
    with pytest.raises(ps.ServiceError, match=r"broken exited during start-up with status 3"):
        cluster._check_daemons()
    with pytest.raises(ps.ServiceError, match="no key file"):
        cluster._check_daemons()
