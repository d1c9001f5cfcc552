"""What a stage folder says about itself: its state, its MLflow run, its progress, its final checkpoint.

The one place every reader asks (the ladder's plan, dispatch and status, the job, ``python -m
scaling.train``, the training loop). ``<out_dir>/stage_state.json`` holds the stage's state and
its MLflow run id; ``progress.json`` the latest metrics; both are tiny JSON files replaced
atomically and readable without MLflow, SLURM or torch. A complete ``final/`` checkpoint (its
manifest is written last) means finished whatever the state file says, since a job can die
between saving it and recording it: ``read_state`` applies that rule, so every reader agrees.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from scaling.metrics import NullLogger
from scaling.stages import stage_name

STATE_FILE = "stage_state.json"
PROGRESS_FILE = "progress.json"
FINAL_DIR = "final"
MANIFEST = "manifest.json"  # of a checkpoint folder: step, samples, metrics, file sizes; written last
LOCK_FILE = ".lock"  # held by the one process writing the folder (hold_folder)
STATES = ("planned", "submitted", "running", "preempted", "finished", "failed", "cancelled")
# the exit status of a stage (or ladder) stopped by a signal with a checkpoint: the same command
# resumes. sysexits' EX_TEMPFAIL; not 1 (failed), 2 (bad input) or 128+N (killed outright)
STOPPED_EXIT = 75

log = logging.getLogger(__name__)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a complete checkpoint folder, or None (with a warning when it is broken)."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
        for name, size in data["files"].items():
            if (path / name).stat().st_size != size:
                raise ValueError(f"{name} has {(path / name).stat().st_size} bytes, manifest says {size}")
        return data
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring corrupt checkpoint %s: %s", path, exc)
        return None


def final_manifest(out_dir: str | os.PathLike) -> dict | None:
    """The manifest of the stage's complete ``final/`` checkpoint, or None."""
    final = Path(out_dir) / FINAL_DIR
    return read_manifest(final) if final.is_dir() else None


def read_state(out_dir: str | Path) -> dict[str, Any]:
    """The stage's state (``{}`` when it never ran); ``finished`` when ``final/`` is complete."""
    data = _read_json(Path(out_dir) / STATE_FILE)
    if data.get("state") != "finished":
        manifest = final_manifest(out_dir)
        if manifest is not None:
            data.update(state="finished", step=int(manifest["step"]), samples_seen=int(manifest["samples_seen"]),
                        checkpoint=str(Path(out_dir) / FINAL_DIR), error=None)
            data.setdefault("metrics", {k: float(v) for k, v in manifest.get("metrics", {}).items()})
    return data


def newest_finished(runs_dir: str | Path, name: str, experiment: str | None = None,
                    proxy: bool | None = None) -> Path | None:
    """Out_dir of the newest finished stage ``name`` (``clip@L14``) under
    ``runs_dir/<experiment>/<name>-<fingerprint>`` (any experiment when None); ``proxy``, when
    given, keeps stages of that size (a state file without the flag matches either)."""
    best: tuple[float, Path] | None = None
    for candidate in Path(runs_dir).glob(f"{experiment or '*'}/{name}-*"):
        state = read_state(candidate)
        if state.get("state") != "finished":
            continue
        if proxy is not None and bool(state.get("proxy", proxy)) != proxy:
            continue
        stamp = float(state.get("updated", 0))
        if best is None or stamp > best[0]:
            best = (stamp, candidate)
    return best[1] if best else None


def write_state(out_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the state file and set ``state`` (one of ``STATES``)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}; got {state!r}")
    path = Path(out_dir) / STATE_FILE
    data = _read_json(path)
    data.update({k: v for k, v in fields.items() if v is not None})
    data["state"] = state
    data["updated"] = time.time()
    _write_json(path, data)
    return data


def stage_run_id(out_dir: str | Path) -> str | None:
    """The MLflow run this stage logs into (a resumed or requeued stage continues it)."""
    return read_state(out_dir).get("run_id") or None


def remember_run_id(out_dir: str | Path, run_id: str) -> None:
    """Record the stage's MLflow run without changing its state (``planned`` when it has none)."""
    path = Path(out_dir) / STATE_FILE
    data = _read_json(path)
    data.setdefault("state", "planned")
    data.update(run_id=run_id, updated=time.time())
    _write_json(path, data)


def stage_tags(kind: str, rung: str, name: str | None = None) -> dict[str, str]:
    """A stage run's identity tags in MLflow, the same wherever the run is opened: ``stage`` is
    ``kind@rung`` (a study's control arm passes its own ``name``, ``kind@rung.arm.sN``)."""
    return {"stage": name or stage_name(kind, rung), "kind": str(kind), "rung": str(rung)}


def read_progress(out_dir: str | Path) -> dict[str, Any]:
    return _read_json(Path(out_dir) / PROGRESS_FILE)


def write_progress(out_dir: str | Path, step: int, metrics: Mapping[str, float]) -> None:
    data = _read_json(Path(out_dir) / PROGRESS_FILE)
    data["step"] = int(step)
    data["updated"] = time.time()
    for key, value in metrics.items():
        data.setdefault("metrics", {})[key] = float(value)
    _write_json(Path(out_dir) / PROGRESS_FILE, data)


class ProgressLogger(NullLogger):
    """A MetricLogger that keeps the latest value of every metric in ``progress.json``."""

    def __init__(self, out_dir: str | Path, every_s: float = 2.0) -> None:
        self.out_dir = Path(out_dir)
        self.every_s = every_s
        self._last = 0.0
        self._pending: dict[str, float] = {}
        self._step = 0

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._pending.update({k: float(v) for k, v in metrics.items()})
        self._step = max(self._step, int(step))
        now = time.monotonic()
        # Eval results must not wait for the next write window.
        if now - self._last >= self.every_s or any(k.startswith("eval/") for k in metrics):
            self.flush()
            self._last = now

    def flush(self) -> None:
        if self._pending:
            write_progress(self.out_dir, self._step, self._pending)
            self._pending = {}

    def close(self, status: str = "FINISHED") -> None:
        self.flush()


class FolderBusy(RuntimeError):
    """Another process holds a stage's or a ladder's folder; the message names it."""


_HELD: dict[Path, int] = {}  # folders this process holds, with a depth (a job, then its stage)


@contextlib.contextmanager
def hold_folder(folder: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """One writer per folder: an exclusive ``flock`` on ``<folder>/.lock`` for the ``with`` block.

    The lock dies with its process (``kill -9`` included), so a stale one is taken over by the
    next. The file also names the holder (host, pid, SLURM job) for the refusal message. Held
    again by the same process (a job, then its stage), it is only counted. On NFS, Linux turns
    ``flock`` into a whole-file POSIX lock the server arbitrates (NFSv4, or v3 with lockd), so it
    holds across nodes; a node that dies keeps it until the server's lease runs out (90 s by
    default on NFSv4). Without ``wait``, a held folder raises ``FolderBusy`` at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / LOCK_FILE).resolve()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = f"{what} {folder} is in use by {lock_holder(folder)}"
            if not wait:
                raise FolderBusy(f"{busy}: wait for it to end, or pass --wait to queue behind it") from None
            log.warning("%s; waiting for it (--wait)", busy)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                            "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")}))
        f.flush()
        _HELD[path] = 1
        try:
            yield
        finally:
            del _HELD[path]


def lock_holder(folder: str | Path) -> str:
    """Who the lock file of ``folder`` says holds it, in words."""
    data = _read_json(Path(folder) / LOCK_FILE)
    if not data:
        return "another process"
    job = f", job {data['job_id']}" if data.get("job_id") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(data.get("since") or 0)))
    return f"pid {data.get('pid')} on {data.get('host')}{job} (since {since})"
