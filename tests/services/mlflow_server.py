"""A real ``mlflow server`` on 127.0.0.1 for tests: SQLite backend and artifacts under one
folder. ``with MlflowServer(tmp_path) as server:`` then log to ``server.uri``.

``host`` puts it on another local address (a multi-node test cluster's bridge, so that jobs in the
node namespaces reach it); ``backend_store_uri`` gives it another store (PostgreSQL). Its log
keeps uvicorn's access lines, so a test can count the requests each client address made."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .processes import ServiceError, tail


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class MlflowServer:
    """Start/stop/restart ``mlflow server``; the store survives restarts on the same port."""

    def __init__(self, root: Path, port: int | None = None, workers: int = 1, host: str = "127.0.0.1",
                 backend_store_uri: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.workers = workers
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.log = self.root / "server.log"
        self._proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180) -> None:
        """Start the server and wait until ``/health`` answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", str(self.root / "artifacts"),
        ]  # fmt: skip
        # The job-execution feature (huey consumers, 7 more processes) is not used by the project.
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise ServiceError(f"`{' '.join(cmd)}` exited during start-up:\n{self._logtail()}")
            if self.healthy():
                return
            time.sleep(0.25)
        self.stop()
        raise ServiceError(f"mlflow server did not answer {self.uri}/health in {timeout:.0f} s:\n"
                           f"{self._logtail()}")  # fmt: skip

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """TERM the server's process group (it stops its workers), KILL it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers of the group may outlive the main pid by a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port and store (a server outage during a stage)."""
        self.stop()
        self.start()

    def requests_from(self) -> dict[str, int]:
        """``{client address: number of requests}`` from the server's access log."""
        counts: dict[str, int] = {}
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        for match in re.finditer(r"INFO:\s+(\d+\.\d+\.\d+\.\d+):\d+ - \"(GET|POST|PATCH|DELETE) ", text):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        return counts

    def _logtail(self) -> str:
        return tail(self.log.read_text(errors="replace") if self.log.exists() else "", 25)
