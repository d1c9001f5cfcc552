"""Session-wide test setup: an isolated environment, and the real services integration tests use.

Services start lazily (only when a test asks for the fixture) and once per session. When SLURM
cannot start, the tests that need it fail with the reason; set ``SCALING_SKIP_SLURM=1`` to skip
them on purpose (for example on a machine without root).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tests.services` and `scaling` import from a bare `pytest`
    sys.path.insert(0, str(REPO_ROOT))

from tests.services import MlflowServer, ServiceError, SlurmCluster, worker_port_base  # noqa: E402

CACHE = REPO_ROOT / ".cache"
# Unix socket paths hold 108 bytes: the sockets under the SLURM root need a short root.
_MAX_SLURM_ROOT = 75


def _isolate_environment() -> None:
    """Keep temp files and caches in the project, telemetry off, and the user's services out."""
    paths = {
        "TMPDIR": CACHE / "tmp",
        "MPLCONFIGDIR": CACHE / "matplotlib",
        # Persistent: DeepSpeed's C++ ops take up to a minute to compile.
        "TORCH_EXTENSIONS_DIR": CACHE / "torch_extensions",
    }
    for name, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    tempfile.tempdir = None  # re-read TMPDIR
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["OMP_NUM_THREADS"] = "1"
    # A test must never log to, or submit on, whatever the developer's shell points at.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
                 "SLURM_CONF"):  # fmt: skip
        os.environ.pop(name, None)
    # Subprocesses and SLURM jobs (which inherit this environment) import the repo's code.
    pythonpath = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))


def pytest_configure(config: pytest.Config) -> None:
    _isolate_environment()



@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running single-node SLURM cluster (partition ``debug``); ``SLURM_CONF`` points at it."""
    if os.environ.get("SCALING_SKIP_SLURM") == "1":
        pytest.skip("SCALING_SKIP_SLURM=1: tests that need SLURM are skipped on request")
    root = tmp_path_factory.mktemp("slurm")
    if len(str(root)) > _MAX_SLURM_ROOT:
        root = Path(tempfile.mkdtemp(prefix="scaling-slurm-", dir="/tmp"))
    cluster = SlurmCluster(root, port_base=worker_port_base())  # a port block per xdist worker
    try:
        cluster.start()
    except ServiceError as exc:
        error = str(exc)
    else:
        error = ""
    if error:  # failed outside the except block: the report shows the reason, not a chain
        pytest.fail(f"could not start the SLURM test cluster (set SCALING_SKIP_SLURM=1 to skip "
                    f"SLURM tests on purpose): {error}", pytrace=False)  # fmt: skip
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in cluster.env.items():  # submitit runs sbatch/sacct with os.environ
                patch.setenv(name, value)
            yield cluster
    finally:
        cluster.stop()
        # Keep the logs in pytest's folder; drop the ~100 MB accounting database.
        shutil.rmtree(root if root.parent == Path("/tmp") else root / "mysql", ignore_errors=True)


@pytest.fixture(scope="session")
def _mlflow_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        server.start()
    except ServiceError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        pytest.fail(f"could not start mlflow server: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server(_mlflow_server_session: MlflowServer) -> MlflowServer:
    """The session's ``mlflow server`` on 127.0.0.1 (SQLite store); use ``.uri``. A test may
    ``stop()``/``restart()`` it (same port and store); the next test gets it running again."""
    _mlflow_server_session.start()  # no-op while it runs
    return _mlflow_server_session


@pytest.fixture
def submitit_folder(tmp_path: Path) -> Path:
    """A submitit folder of the test's own: job ids restart at 1 on a fresh cluster, so shared
    folders would mix up jobs."""
    folder = tmp_path / "submitit"
    folder.mkdir()
    return folder
