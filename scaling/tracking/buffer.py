"""The training side of ``MlflowLogger``: a bounded, de-duplicating buffer of metric points.

``log_metrics`` only appends to a queue, so the training thread pays a few hundred nanoseconds
a call; the checks (numbers, key length), the de-duplication of steps and the bound are applied
when the queue is read (by the delivery thread, ``flush``, ``close`` or ``pending``). Points
left undelivered at close go to a spill file that the next attempt of the same run reads back.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaling.tracking import store
from scaling.tracking.spill import Point, read_spill, write_spill

log = logging.getLogger("scaling.tracking")


class MetricBuffer:
    """Metric points waiting for delivery, guarded by ``_cond``."""

    def __init__(self, uri: str, run_id: str, max_buffer: int, spill_path: Path | None) -> None:
        self.uri = uri
        self.run_id = run_id
        self.max_buffer = max(1, int(max_buffer))
        # Metrics still undelivered at close are written here, and the next logger of the same
        # run with the same folder (a requeued stage: pass its output folder) sends them.
        self.spill_path = spill_path
        self.dropped = 0  # metrics pushed out of a full buffer
        self._cond = threading.Condition()
        self._points: deque[Point] = deque()
        self._incoming: deque[tuple[int, int, dict[str, Any]]] = deque()  # (step, ms, metrics)
        self._seq = itertools.count()
        self._last_step: dict[str, int] = {}
        self._bad_keys: set[str] = set()
        self._broken = False  # the run cannot be logged to at all (missing, deleted)
        self._closing = False
        self._load_spill()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        # The training thread only appends (a few hundred ns, no lock): checks, de-duplication
        # and the buffer bound are applied off it, by the background thread or by whoever reads
        # the buffer (flush, close, pending).
        if self._closing or self._broken:
            return
        self._incoming.append((int(step), int(time.time() * 1000), dict(metrics)))
        if len(self._incoming) > self.max_buffer:  # the thread is stuck in a call: keep the bound
            self._ingest()

    def _ingest(self) -> None:
        with self._cond:
            while self._incoming:
                step, now, metrics = self._incoming.popleft()
                if not self._broken:
                    self._add_points(metrics, step, now)

    def _add_points(self, metrics: Mapping[str, Any], step: int, now: int) -> None:
        for key, raw in metrics.items():
            if key in self._bad_keys or step <= self._last_step.get(key, -(2**63)):
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                self._reject_key(key, f"value {raw!r} is not a number")
                continue
            if not key or len(key) > store.MAX_KEY_LENGTH:
                self._reject_key(key, f"keys need 1..{store.MAX_KEY_LENGTH} characters")
                continue
            self._last_step[key] = step
            if len(self._points) >= self.max_buffer:
                self._points.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.warning(
                        "MLflow buffer full (%d metrics): dropped the oldest (%d so far); "
                        "raise max_buffer or bring %s back", self.max_buffer, self.dropped,
                        self.uri,
                    )
            self._points.append(Point(next(self._seq), key, value, now, step))

    @property
    def pending(self) -> int:
        self._ingest()
        return len(self._points)

    def _reject_key(self, key: str, why: str) -> None:
        self._bad_keys.add(key)
        log.warning("MLflow metric %r is not logged: %s", key, why)

    def _load_spill(self) -> None:
        if self.spill_path is None or not self.spill_path.exists():
            return
        for key, value, timestamp_ms, step in read_spill(self.spill_path):
            if step > self._last_step.get(key, -(2**63)):
                self._last_step[key] = step
                self._points.append(Point(next(self._seq), key, value, timestamp_ms, step))
        log.warning("MLflow: %d metrics of run %s left undelivered by an earlier attempt "
                    "(%s) will be sent", len(self._points), self.run_id, self.spill_path)

    def _write_spill(self) -> None:
        self._ingest()
        with self._cond:
            points = list(self._points)
        if not points:
            if self.spill_path is not None:
                self.spill_path.unlink(missing_ok=True)
            return
        if self.spill_path is None:
            log.warning("MLflow at %s unreachable: %d metrics of run %s could not be delivered "
                        "before close; they are lost (give spill_dir to keep them)",
                        self.uri, len(points), self.run_id)
            return
        write_spill(self.spill_path, points)
        log.warning("MLflow at %s unreachable: %d metrics of run %s not delivered before close; "
                    "kept in %s for the next attempt of this run", self.uri, len(points),
                    self.run_id, self.spill_path)
