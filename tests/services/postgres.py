"""A real PostgreSQL server for tests: Debian's ``postgresql`` (15), one scratch data folder,
listening on 127.0.0.1 only, run as an unprivileged user (PostgreSQL refuses to run as root).

    with PostgresServer(root) as pg:
        url = pg.create_database("optuna")   # postgresql://scaling@127.0.0.1:PORT/optuna

Authentication is ``trust`` for the loopback address: the server lives as long as the test
session, in a folder only its user can read.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from .mlflow_server import free_port
from .processes import ServiceError, alive, kill_all, marked_pids, marker_value, run_checked, tail

PACKAGE = "postgresql"
SUPERUSER = "scaling"
# Daemons carry this variable so that a crashed session's server can be found and stopped.
MARKER = "SCALING_TEST_POSTGRES_ROOT"


def bin_dir() -> Path | None:
    """The newest installed server's bin folder (``/usr/lib/postgresql/<major>/bin``)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def ensure_package() -> Path:
    """Install Debian's ``postgresql`` when no server is installed (root only)."""
    found = bin_dir()
    if found:
        return found
    if os.geteuid() != 0:
        raise ServiceError(f"PostgreSQL tests need the Debian package {PACKAGE}; as root: apt-get install -y {PACKAGE}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    run_checked(["apt-get", *lock, "update", "-qq"], env=env, timeout=600)
    run_checked(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", PACKAGE], env=env, timeout=900)
    found = bin_dir()
    if not found:
        raise ServiceError(f"apt-get installed {PACKAGE} but no /usr/lib/postgresql/*/bin/postgres appeared")
    return found


class PostgresServer:
    """``initdb`` + ``postgres`` under ``root`` (created with the right owner), on ``port``."""

    def __init__(self, root: Path, port: int | None = None, user: str = "nobody") -> None:
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.user = user
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _demote(self) -> None:  # runs in the child, before exec
        entry = pwd.getpwnam(self.user)
        os.setgid(entry.pw_gid)
        os.setgroups([])
        os.setuid(entry.pw_uid)

    def _run_as_user(self, cmd: list[str], timeout: float = 120) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=self._demote if os.geteuid() == 0 else None, cwd=self.root)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"`{' '.join(cmd)}` failed: {exc}") from exc
        if proc.returncode != 0:
            raise ServiceError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{tail(proc.stderr + proc.stdout)}")
        return proc.stdout

    def start(self, timeout: float = 60) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        bindir = ensure_package()
        _stop_orphans()
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)
        if not (self.data / "PG_VERSION").exists():
            self._run_as_user([str(bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                               "--auth=trust", "-E", "UTF8", "--no-sync"])  # fmt: skip
        (self.root / "owner").write_text(str(os.getpid()))
        cmd = [str(bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
               "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=200",
               "-c", "shared_buffers=32MB"]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", MARKER: str(self.root)}
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          preexec_fn=self._demote if os.geteuid() == 0 else None,
                                          start_new_session=True, cwd=self.root)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise ServiceError(f"postgres exited during start-up:\n{self._logtail()}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServiceError(f"PostgreSQL did not accept connections on 127.0.0.1:{self.port} in {timeout:.0f} s:\n"
                           f"{self._logtail()}")  # fmt: skip

    def ready(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self.url(), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def create_database(self, name: str) -> str:
        """Create (or empty) database ``name``; return its SQLAlchemy/psycopg2 URL."""
        import psycopg2

        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then KILL what is left of the server's processes."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, 2)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=5)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _logtail(self) -> str:
        return tail(self.log.read_text(errors="replace") if self.log.exists() else "", 25)


def _stop_orphans() -> None:
    """Stop the servers of test sessions that died without stopping them."""
    orphans = []
    for pid in marked_pids(MARKER):
        try:
            owner = int((Path(marker_value(pid, MARKER) or "/nonexistent") / "owner").read_text())
        except (OSError, ValueError):
            owner = 0
        if not owner or not alive(owner):
            orphans.append(pid)
    kill_all(orphans)
