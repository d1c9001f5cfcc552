"""Metric points on their way to MLflow, and the file that keeps them across process restarts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple


class Point(NamedTuple):
    seq: int  # order of arrival in this process: delivered batches are a prefix
    key: str
    value: float
    timestamp_ms: int
    step: int


def spill_file(folder: str | Path, run_id: str) -> Path:
    return Path(folder) / f"mlflow-undelivered-{run_id}.jsonl"


def read_spill(path: Path) -> list[tuple[str, float, int, int]]:
    """``(key, value, timestamp_ms, step)`` rows; a line cut by a crash while writing is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            key, value, timestamp_ms, step = json.loads(line)
        except ValueError:
            continue
        rows.append((str(key), float(value), int(timestamp_ms), int(step)))
    return rows


def write_spill(path: Path, points: Iterable[Point]) -> None:
    """Replace ``path`` atomically with ``points`` (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps([p.key, p.value, p.timestamp_ms, p.step]) + "\n"
                           for p in points))
    tmp.replace(path)
