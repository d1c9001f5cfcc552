"""Services of the multi-node tests: a two-node SLURM cluster (each slurmd in its own network
namespace), PostgreSQL on 127.0.0.1, and an ``mlflow server`` with a PostgreSQL store on the
cluster's bridge address, where jobs on either node reach it.

Each starts once per session, when a test first asks for it, and is torn down at the end of the
session whatever the tests did (namespaces and bridge included). ``SCALING_SKIP_SLURM=1`` skips
the tests that need SLURM, as for the single-node cluster.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import MlflowServer, PostgresServer, ServiceError, SlurmCluster, worker_port_base


def _started(what: str, start) -> None:
    try:
        start()
    except ServiceError as exc:
        error = str(exc)
    else:
        return
    pytest.fail(f"could not start {what}: {error}", pytrace=False)


@pytest.fixture(scope="session")
def _two_node_cluster() -> Iterator[SlurmCluster]:
    if os.environ.get("SCALING_SKIP_SLURM") == "1":
        pytest.skip("SCALING_SKIP_SLURM=1: tests that need SLURM are skipped on request")
    # Unix sockets live under the root: it must be short.
    root = Path(tempfile.mkdtemp(prefix="scaling-slurm2-", dir="/tmp"))
    cluster = SlurmCluster(root, port_base=worker_port_base(nodes=2), nodes=2)
    started = time.monotonic()
    try:
        _started("the two-node SLURM test cluster (set SCALING_SKIP_SLURM=1 to skip SLURM tests on purpose)",
                 cluster.start)
        print(f"\ntwo-node SLURM cluster up in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def two_node_cluster(_two_node_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    """The session's two-node cluster (nodes ``sn1``, ``sn2``); ``SLURM_CONF`` points at it for this
    test only (the single-node cluster's tests keep theirs). Every node is up when the test starts."""
    for name, state in _two_node_cluster.node_states().items():
        if not state.startswith(("idle", "mix", "alloc")):
            _two_node_cluster.restart_node(name)
    for name, value in _two_node_cluster.env.items():
        monkeypatch.setenv(name, value)
    return _two_node_cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """PostgreSQL on 127.0.0.1 (run as ``nobody`` in a scratch folder); ``create_database(name)``."""
    # Outside pytest's folders: the server's user must be able to reach its data folder.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="scaling-pg-", dir="/tmp")))
    try:
        _started("PostgreSQL", server.start)
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def node_mlflow_server(_two_node_cluster: SlurmCluster, postgres: PostgresServer,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` with a PostgreSQL backend store, on the two-node cluster's bridge address."""
    store = postgres.create_database("mlflow").replace("postgresql://", "postgresql+psycopg2://")
    server = MlflowServer(tmp_path_factory.mktemp("node-mlflow"), host=_two_node_cluster.ctld_addr,
                          backend_store_uri=store)
    try:
        _started("mlflow server (PostgreSQL store)", server.start)
        yield server
    finally:
        server.stop()
