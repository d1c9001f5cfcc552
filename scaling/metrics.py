"""Pluggable metric loggers.

A stage talks to one ``MetricLogger``; it never knows whether MLflow, a JSONL file, the console
or an Optuna trial listens. Loggers are called on global rank 0 only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class MetricLogger(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at optimiser ``step``; a resumed stage may re-send old steps."""

    def log_params(self, params: Mapping[str, str]) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class NullLogger:
    """Accepts everything, keeps nothing: a stage runs without any tracking."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_params(self, params: Mapping[str, str]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class JsonlLogger(NullLogger):
    """Appends one JSON object per ``log_metrics`` call; handy for tests and offline runs.

    Each (key, step) is written once: a key's step at or below the highest the file holds (read at
    open: a resumed stage re-sends and re-computes the steps after its checkpoint) is dropped, so
    the first value recorded wins, as in the MLflow logger. A line cut short by a kill is dropped
    at open."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._last = highest_steps(self._repair())

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        step = int(step)
        fresh = {k: float(v) for k, v in metrics.items() if step > self._last.get(k, -1)}
        if not fresh:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **fresh}) + "\n")
        self._last.update(dict.fromkeys(fresh, step))

    def sync(self) -> None:
        """Make what was written survive a crash of the machine, not only of the process."""
        if self.path.exists():
            with self.path.open("rb+") as f:
                os.fsync(f.fileno())

    def read(self) -> list[dict[str, float]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short
                continue
        return rows

    def _repair(self) -> list[dict[str, float]]:
        """The rows on file, less a last line a kill cut short (truncated, so appends start clean)."""
        if self.path.is_file():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with self.path.open("rb+") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        return self.read()


def highest_steps(rows: Sequence[Mapping[str, float]]) -> dict[str, int]:
    """Each metric's highest step in ``rows`` (``{"step": s, key: value, ...}`` records)."""
    last: dict[str, int] = {}
    for row in rows:
        step = int(row["step"])
        for key in row:
            if key != "step" and step > last.get(key, -1):
                last[key] = step
    return last


class MultiLogger(NullLogger):
    """Fans every call out to several loggers (e.g. MLflow + an Optuna trial reporter)."""

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_params(self, params: Mapping[str, str]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for logger in self.loggers:
            logger.set_tags(tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        for logger in self.loggers:
            logger.log_artifact(path, artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        for logger in self.loggers:
            logger.close(status)
