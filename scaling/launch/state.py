"""A stage's state on disk: ``<out_dir>/stage_state.json`` and ``<out_dir>/progress.json``.

The job writes them (global rank 0), the ladder reads them to skip finished stages and to show
progress; both are tiny JSON files replaced atomically, readable without MLflow or torch.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaling.metrics import NullLogger

STATE_FILE = "stage_state.json"
PROGRESS_FILE = "progress.json"
STATES = ("planned", "submitted", "running", "preempted", "finished", "failed", "cancelled")
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def read_state(out_dir: str | Path) -> dict[str, Any]:
    """The stage's recorded state (``{}`` when it never ran)."""
    return _read_json(Path(out_dir) / STATE_FILE)


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
