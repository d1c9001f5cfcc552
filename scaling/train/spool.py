"""``MetricSpool``: every metric of a stage, durably on file in its folder, before any store.

Rank 0's logger in a stage. Each ``log_metrics`` is appended to ``<out_dir>/metric_spool.jsonl``
(flushed to the OS at once, so a ``kill -9`` keeps it) and then handed to the real loggers
(MLflow, ``--metrics`` JSONL, progress). A checkpoint calls ``sync`` before its manifest is
written: a complete checkpoint has every metric up to its step on disk. A resumed stage first
``resend``s the whole spool; each store drops the (key, step) pairs it holds already (the MLflow
logger reads the run's highest step per key; the JSONL logger its file's), so what a killed
process buffered and never delivered is delivered now, and nothing is delivered twice.

Which value wins: the first one recorded. A step the killed process computed after its
checkpoint is in the spool; the resumed process computes it again (bitwise the same at the same
world size: the checkpoint restores RNG and data order) and its value is dropped everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from scaling.metrics import JsonlLogger, MetricLogger

SPOOL_FILE = "metric_spool.jsonl"

log = logging.getLogger(__name__)


class MetricSpool:
    """Writes metrics to the stage's spool file, then passes every call on to ``inner``."""

    def __init__(self, out_dir: str | Path, inner: MetricLogger) -> None:
        self.file = JsonlLogger(Path(out_dir) / SPOOL_FILE)
        self.inner = inner

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.file.log_metrics(metrics, step)
        self.inner.log_metrics(metrics, step)

    def resend(self) -> int:
        """Hand every spooled row to the real loggers (a resume); the number of rows."""
        rows = self.file.read()
        for row in rows:
            self.inner.log_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))
        if rows:
            log.info("resent %d spooled metric rows (steps %d-%d) to the stage's loggers; each keeps "
                     "the steps it did not have", len(rows), rows[0]["step"], rows[-1]["step"])
        return len(rows)

    def sync(self) -> None:
        """A checkpoint is about to be committed: the metrics up to it must be on disk."""
        self.file.sync()

    def log_params(self, params: Mapping[str, str]) -> None:
        self.inner.log_params(params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.inner.set_tags(tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        self.inner.close(status)
