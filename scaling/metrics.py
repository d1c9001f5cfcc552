"""Pluggable metric loggers.

A stage talks to one ``MetricLogger``; it never knows whether MLflow, a JSONL file, the console
or an Optuna trial listens. Loggers are called on global rank 0 only.
"""

from __future__ import annotations

import json
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
    """Appends one JSON object per ``log_metrics`` call; handy for tests and offline runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def read(self) -> list[dict[str, float]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


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
