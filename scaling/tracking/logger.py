"""``MlflowLogger``: the ``MetricLogger`` that writes a stage's metrics to an MLflow run (rank 0).

``log_metrics`` appends to a bounded buffer that one thread sends every ``flush_every_s``, keeps
through a server outage and sends when the server is back. MLflow's ``log_batch(synchronous=
False)`` carries params and tags only: its queue is unbounded, and a failed batch is dropped.
No step is logged twice: per key, a step at or below the highest the run holds (read at open: a
requeued stage re-sends the steps since its checkpoint) or this logger took is dropped."""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import scaling.tracking.store as store
from scaling.uris import error_line, mask

log = logging.getLogger("scaling.tracking")
# A log_batch costs ~10 ms of Python (SQLite) plus ~0.1 ms a metric; the UI trails by 5 s.
FLUSH_EVERY_S = 5.0


class MlflowLogger:
    """Logs to the existing run ``run_id`` (made by ``start_run``), reopening it if it ended."""

    def __init__(self, uri: str | None, run_id: str, *, flush_every_s: float = FLUSH_EVERY_S,
                 max_buffer: int = 100_000, close_timeout_s: float = 60.0, max_backoff_s: float = 30.0) -> None:
        if not run_id:
            raise ValueError("MlflowLogger needs the id of an existing run (see start_run)")
        self.uri, self.run_id = store.resolve_uri(uri), run_id
        self.shown_uri = mask(self.uri)  # in warnings: a database's or server's password stays out of logs
        self.flush_every_s, self.max_buffer = flush_every_s, max(1, int(max_buffer))
        self.close_timeout_s, self.max_backoff_s = close_timeout_s, max_backoff_s
        self.dropped = 0  # metrics pushed out of a full buffer
        self._client = store.client(self.uri)  # imports mlflow now: a process at exit may not
        from mlflow.entities import Metric

        self._metric, self._cond = Metric, threading.Condition()
        self._points: deque[Any] = deque()  # Metric entities, oldest first, until delivered
        self._last_step, self._bad_keys = {}, set()  # key -> highest step (>= 0) taken; rejected keys
        self._ops: list[Any] = []  # MLflow's futures for params and tags, awaited at close
        self._opened = self._synced = self._broken = self._closing = False
        self._status, self._deadline, self._outage_since = "FINISHED", float("inf"), None
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()
        self._at_exit = lambda: self.close("KILLED", timeout_s=min(self.close_timeout_s, 10.0))  # preempted
        atexit.register(self._at_exit)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now, step = int(time.time() * 1000), int(step)
        with self._cond:
            if self._closing or self._broken:
                return
            for key, raw in metrics.items():
                if key in self._bad_keys or step <= self._last_step.get(key, -1):
                    continue
                try:
                    self._points.append(self._metric(key, float(raw), now, step))
                    self._last_step[key] = step
                except (TypeError, ValueError):
                    self._reject(key, f"value {raw!r} is not a number")
            while len(self._points) > self.max_buffer:
                self._points.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.warning("MLflow buffer full (%d metrics): dropped the oldest (%d so far); raise "
                                "max_buffer or bring %s back", self.max_buffer, self.dropped, self.shown_uri)

    def log_params(self, params: Mapping[str, Any]) -> None:  # write-once: MLflow keeps the first
        self._ops.append(self._client.log_batch(self.run_id, params=store.param_entities(params), synchronous=False))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._ops.append(self._client.log_batch(self.run_id, tags=store.tag_entities(tags), synchronous=False))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder now (a stage has few), raising what MLflow raises."""
        send = self._client.log_artifacts if Path(path).is_dir() else self._client.log_artifact
        send(self.run_id, str(path), artifact_path)

    @property
    def pending(self) -> int:
        return len(self._points)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every metric logged so far is delivered (preemption); ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify_all()
            while self._points:
                if time.monotonic() >= deadline or not self._thread.is_alive():
                    return False
                self._cond.wait(min(deadline - time.monotonic(), 0.05))
        return True

    def close(self, status: str = "FINISHED", timeout_s: float | None = None) -> None:
        """Deliver what is buffered (up to ``timeout_s``) and mark the run ``status``."""
        with self._cond:
            if self._closing:
                return
            self._closing, self._status = True, store.check_status(status)
            self._deadline = time.monotonic() + (self.close_timeout_s if timeout_s is None else timeout_s)
            self._cond.notify_all()
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + 5.0)
        atexit.unregister(self._at_exit)
        if self._points:
            log.warning("MLflow at %s unreachable: %d metrics of run %s could not be delivered before "
                        "close; they are lost", self.shown_uri, len(self._points), self.run_id)

    def __enter__(self) -> MlflowLogger:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:  # an error: FAILED, KeyboardInterrupt: KILLED
        self.close("FINISHED" if exc_type is None
                   else "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    def _reject(self, key: str, why: str) -> None:
        self._bad_keys.add(key)
        log.warning("MLflow metric %r is not logged: %s", key, why)

    def _sync(self) -> None:
        """Reopen the run; drop buffered points it holds already (a reply lost in an outage)."""
        run = self._client.get_run(self.run_id)
        if not self._opened and run.info.status != "RUNNING":
            self._client.update_run(self.run_id, status="RUNNING")
        steps = {m.key: m.step for m in run.data.to_proto().metrics}  # each key's highest step
        with self._cond:
            for key, step in steps.items():
                self._last_step[key] = max(self._last_step.get(key, step), step)
            self._points = deque(p for p in self._points if p.step > steps.get(p.key, -1))
        self._opened = self._synced = True

    def _deliver(self) -> None:
        if not self._synced:
            self._sync()
        with self._cond:
            batch, dropped = list(self._points), self.dropped
        try:
            self._client.log_batch(self.run_id, metrics=batch, synchronous=True)  # in requests of 1000
        except Exception as exc:
            if not store.is_permanent(exc):
                raise
            for key in {p.key for p in batch}:  # a bad key must not sink the others
                try:
                    self._client.log_batch(self.run_id, metrics=[p for p in batch if p.key == key], synchronous=True)
                except Exception as key_exc:
                    if not store.is_permanent(key_exc):
                        raise
                    with self._cond:
                        self._reject(key, str(key_exc).splitlines()[0])
        with self._cond:  # the batch is still at the front, less what a full buffer dropped since
            for _ in range(len(batch) - (self.dropped - dropped)):
                self._points.popleft()
            self._cond.notify_all()

    def _run(self) -> None:
        wait, backoff = 0.0, 0.0  # connect at once: reopen the run, read its steps early
        while True:
            with self._cond:
                if not self._closing:
                    self._cond.wait(wait)
                closing = self._closing
            try:
                self._deliver()
            except Exception as exc:
                if store.is_permanent(exc) and not self._opened:  # no such run, or unusable
                    log.warning("MLflow run %s at %s cannot be logged to: %s; metrics are discarded",
                                self.run_id, self.shown_uri, error_line(exc))
                    with self._cond:
                        self._broken = True
                        self._points.clear()
                        self._cond.notify_all()
                    return
                self._synced = False  # a batch may have landed before the failure: check first
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    log.warning("MLflow at %s unreachable; buffering %d metrics; will retry (%s)",
                                self.shown_uri, len(self._points), error_line(exc))
                backoff = min(max(0.5, backoff * 2), self.max_backoff_s)
                if closing:  # an outage at close: keep trying until the deadline
                    time.sleep(min(backoff, max(0.0, self._deadline - time.monotonic())))
            else:
                if self._outage_since is not None:
                    log.warning("MLflow at %s reachable again after %.0f s; buffered metrics delivered",
                                self.shown_uri, time.monotonic() - self._outage_since)
                backoff, self._outage_since = 0.0, None
            wait = backoff or self.flush_every_s
            if closing and (not self._points or time.monotonic() >= self._deadline):
                break
        for operation in filter(None, self._ops):  # params and tags (None: none) before the end
            with contextlib.suppress(Exception):  # MLflow has logged what failed
                operation.wait()
        try:
            self._client.set_terminated(self.run_id, status=self._status)
        except Exception as exc:
            log.warning("MLflow run %s not marked %s at %s: %s", self.run_id, self._status, self.shown_uri,
                        error_line(exc))

