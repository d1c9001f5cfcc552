"""Process helpers shared by the test services: run commands with clear errors, find and
stop the daemons a service started (by a marker in their environment), check ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class ServiceError(RuntimeError):
    """A test service could not be installed, started or stopped; the message says why."""


def tail(text: str | bytes | None, lines: int = 20) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


def run_checked(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run a command; on failure raise ServiceError naming it with its output's tail."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"`{' '.join(cmd)}` failed: {exc}") from exc
    if proc.returncode != 0:
        raise ServiceError(
            f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{tail(proc.stderr + proc.stdout)}"
        )
    return proc.stdout


def which(prog: str) -> str | None:
    # Daemons live in sbin, which a non-login PATH may lack.
    return shutil.which(prog) or shutil.which(prog, path="/usr/sbin:/sbin")


def marker_value(pid: int, marker: str) -> str | None:
    """The value of ``marker`` in a process's environment (None if unset or gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = marker.encode() + b"="
    for item in environ:
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def marked_pids(marker: str, value: str | None = None) -> list[int]:
    """Pids of live processes whose environment has ``marker`` (set to ``value``, if given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            found_value = marker_value(int(entry.name), marker)
            if found_value is not None and value in (None, found_value):
                found.append(int(entry.name))
    return found


def descendants(pids: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            out.append(child)
            todo.append(child)
    return out


def kill_all(pids: list[int], grace: float = 5.0) -> None:
    """TERM, wait up to ``grace`` seconds, then KILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if alive(p)]
            if not pids:
                return
            time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # reap our own zombies; others' are reaped by their parent
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
