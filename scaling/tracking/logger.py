"""``MlflowLogger``: the ``MetricLogger`` that writes a stage's metrics to an MLflow run.

Construct it on global rank 0 only (other ranks get a ``NullLogger``). Training never waits for
MLflow: ``log_metrics`` only appends to a bounded buffer; a background thread delivers it in
batches, keeps it through a server outage (warning once) and sends it when the server is back.
The MLflow client calls themselves run in a helper process (``scaling.tracking.remote``), so
that their Python work does not hold the training process's GIL; ``delivery="thread"`` (or
``$SCALING_MLFLOW_DELIVERY=thread``) makes them in the thread instead.

No metric step is ever logged twice, even when a requeued stage resumes the same run and
re-sends the steps since its last checkpoint: per key, a step at or below the highest step
already logged (by this process or, read at open, by earlier attempts) is dropped. Steps are
assumed not to go backwards within a key, which holds for optimiser steps.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaling.metrics import MetricLogger, NullLogger
from scaling.tracking import store
from scaling.tracking.buffer import MetricBuffer
from scaling.tracking.spill import Point, spill_file

log = logging.getLogger("scaling.tracking")

DELIVERY_ENV = "SCALING_MLFLOW_DELIVERY"  # process (default) | thread


# MLflow's stores also pay per call (SQLite: ~9 ms a log_batch): 5 s batches cost ~25 % less CPU
# than 2 s ones at 4 metrics every 30 ms step (benchmarks/bench_tracking.py); the UI trails by 5 s.
FLUSH_EVERY_S = 5.0


class MlflowLogger(MetricBuffer):
    """Logs to the existing run ``run_id`` (created by ``start_run``); resumes it if it ended."""

    def __init__(
        self,
        uri: str | None,
        run_id: str,
        *,
        flush_every_s: float = FLUSH_EVERY_S,
        max_buffer: int = 100_000,
        close_timeout_s: float = 60.0,
        max_backoff_s: float = 30.0,
        spill_dir: str | Path | None = None,
        delivery: str | None = None,
    ) -> None:
        if not run_id:
            raise ValueError("MlflowLogger needs the id of an existing run (see start_run)")
        self.flush_every_s = flush_every_s
        self.close_timeout_s = close_timeout_s
        self.max_backoff_s = max_backoff_s
        super().__init__(store.resolve_uri(uri), run_id, max_buffer,
                         spill_file(spill_dir, run_id) if spill_dir else None)
        self.delivered = 0
        self._ops: deque[tuple[str, Any]] = deque()
        self._server_params: dict[str, str] = {}
        self._connected = False
        self._resync = False
        self._outage_since: float | None = None
        self._closed = False
        self._final_status: str | None = None
        self._close_deadline = float("inf")
        self._tmp: Path | None = None
        self._remote = self._start_remote(delivery or os.environ.get(DELIVERY_ENV) or "process")
        # mlflow is imported here, not in the thread: a process that ends soon after (a
        # preempted job) could not import it any more at exit. No server call is made yet.
        if self._remote is None:
            self._client()
        else:
            import mlflow.entities  # noqa: F401
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # -- MetricLogger -------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._queue("params", dict(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._queue("tags", dict(tags))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder; it must still exist when the background thread sends it."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        self._queue("artifact", (str(path.resolve()), artifact_path))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Save ``data`` as JSON (or YAML for ``.yaml``/``.yml``) under ``artifact_file``."""
        if artifact_file.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2, default=str)
        self.log_text(text, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="mlflow-logger-"))
        # A folder per call: the same name logged twice before upload keeps both versions.
        local = Path(tempfile.mkdtemp(dir=self._tmp)) / Path(artifact_file).name
        local.write_text(text)
        parent = str(Path(artifact_file).parent)
        self._queue("artifact", (str(local), None if parent == "." else parent))

    def log_checkpoint(
        self, path: str | Path, *, upload: bool = False, name: str = "checkpoint"
    ) -> None:
        """Record a checkpoint by reference (tag ``<name>_path``) or upload it as an artifact."""
        path = Path(path).resolve()
        self.set_tags({f"{name}_path": str(path)})
        if upload:
            self.log_artifact(path, f"checkpoints/{path.name}" if path.is_dir() else "checkpoints")

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything queued so far is delivered; ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s
        self._ingest()
        with self._cond:
            self._cond.notify_all()
            while self._points or self._ops:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, status: str = "FINISHED", timeout_s: float | None = None) -> None:
        """Deliver what is buffered (up to ``timeout_s``) and mark the run ``status``."""
        status = store.check_status(status)
        with self._cond:
            if self._closed:
                return
            self._closed = self._closing = True
            self._final_status = status
            self._close_deadline = time.monotonic() + (
                self.close_timeout_s if timeout_s is None else timeout_s
            )
            self._cond.notify_all()
        self._thread.join(max(0.0, self._close_deadline - time.monotonic()) + 5.0)
        atexit.unregister(self._close_at_exit)
        self._write_spill()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> MlflowLogger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # -- internals ----------------------------------------------------------------------------

    def _close_at_exit(self) -> None:
        # The process ends without close(): a preemption or a crash, not a finished stage.
        self.close("KILLED", timeout_s=min(self.close_timeout_s, 10.0))

    def _queue(self, kind: str, payload: Any) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError(f"MlflowLogger for run {self.run_id} is closed")
            if self._broken:
                return
            self._ops.append((kind, payload))
            self._cond.notify_all()

    def _client(self) -> Any:
        return self._remote if self._remote is not None else store.client(self.uri)

    def _start_remote(self, delivery: str) -> Any:
        if delivery not in ("process", "thread"):
            raise ValueError(f"MlflowLogger delivery (or ${DELIVERY_ENV}) must be process or thread; "
                             f"got {delivery!r}")
        if delivery == "thread":
            return None
        # Imported here: ``python -m scaling.tracking.remote`` must not find itself imported.
        from scaling.tracking import remote

        try:  # started now, waited for by the thread: its import overlaps the stage's set-up
            via = remote.helper()
            via.start(wait=False)
        except OSError as exc:
            return self._without_helper(exc)
        return remote.RemoteClient(self.uri, via)

    def _await_remote(self) -> None:
        from scaling.tracking import remote

        try:
            self._remote.via.start()
        except (OSError, remote.HelperError) as exc:
            self._remote = self._without_helper(exc)

    def _without_helper(self, exc: Exception) -> None:
        log.warning("MLflow helper process unavailable (%s); metrics are sent from a thread of "
                    "this process instead", exc)

    def _server_steps(self, run: Any) -> dict[str, int]:
        objs = getattr(run.data, "_metric_objs", None)
        if objs is not None:
            return {m.key: m.step for m in objs}
        # Older/other clients: read the history of the keys we are about to send.
        with self._cond:
            keys = {p.key for p in self._points}
        out = {}
        for key in keys:
            history = self._client().get_metric_history(self.run_id, key)
            if history:
                out[key] = max(m.step for m in history)
        return out

    def _sync(self) -> None:
        """Read what the server already has, then drop buffered points it holds already."""
        client = self._client()
        run = client.get_run(self.run_id)
        if not self._connected:
            self._server_params = dict(run.data.params)
            if run.info.status != "RUNNING":
                client.update_run(self.run_id, status="RUNNING")
        steps = self._server_steps(run)
        with self._cond:
            for key, step in steps.items():
                self._last_step[key] = max(self._last_step.get(key, step), step)
            kept = [p for p in self._points if p.step > steps.get(p.key, -(2**63))]
            self._points = deque(kept)
        self._connected = True
        self._resync = False

    def _send_op(self, kind: str, payload: Any) -> None:
        client = self._client()
        if kind == "params":
            todo = []
            for param in store.param_entities(payload):
                old = self._server_params.get(param.key)
                if old is None:
                    todo.append(param)
                elif old != param.value:
                    log.warning(
                        "MLflow param %r of run %s stays %r (params are write-once); new value "
                        "%r not logged", param.key, self.run_id, old, param.value,
                    )
            for batch in store.chunks(todo, store.MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(self.run_id, params=batch)
                self._server_params.update({p.key: p.value for p in batch})
        elif kind == "tags":
            for batch in store.chunks(store.tag_entities(payload), store.MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(self.run_id, tags=batch)
        else:
            local, artifact_path = payload
            if Path(local).is_dir():
                client.log_artifacts(self.run_id, local, artifact_path)
            else:
                client.log_artifact(self.run_id, local, artifact_path)

    def _send_ops(self) -> None:
        while True:
            with self._cond:
                if not self._ops:
                    return
                kind, payload = self._ops[0]
            try:
                self._send_op(kind, payload)
            except Exception as exc:
                if not store.is_permanent(exc):
                    raise
                log.warning("MLflow rejected %s for run %s: %s", kind, self.run_id, exc)
            with self._cond:
                self._ops.popleft()
                self._cond.notify_all()

    def _send_points(self, points: list[Point]) -> None:
        from mlflow.entities import Metric

        def send(group: list[Point]) -> None:
            self._client().log_batch(
                self.run_id, metrics=[Metric(p.key, p.value, p.timestamp_ms, p.step) for p in group]
            )

        try:
            send(points)
        except Exception as exc:
            if not store.is_permanent(exc):
                raise
            # One bad key must not sink the batch: retry key by key and drop only the bad ones.
            for key, group in itertools.groupby(sorted(points, key=lambda p: p.key), lambda p: p.key):
                try:
                    send(list(group))
                except Exception as key_exc:
                    if not store.is_permanent(key_exc):
                        raise
                    with self._cond:
                        self._reject_key(key, str(key_exc).splitlines()[0])

    def _send_metrics(self) -> None:
        while True:
            with self._cond:
                batch = list(itertools.islice(self._points, store.MAX_METRICS_PER_BATCH))
            if not batch:
                return
            self._send_points(batch)
            with self._cond:
                while self._points and self._points[0].seq <= batch[-1].seq:
                    self._points.popleft()
                self.delivered += len(batch)
                self._cond.notify_all()

    def _deliver(self) -> None:
        if not self._connected or self._resync:
            self._sync()
        self._send_ops()
        self._send_metrics()

    def _run(self) -> None:
        backoff = 0.0
        first = True  # connect at once: resume the run and read its logged steps early
        if self._remote is not None:
            self._await_remote()
        while True:
            with self._cond:
                if not self._closing and not first:
                    self._cond.wait(backoff or self.flush_every_s)
                first = False
                closing = self._closing
            if closing and backoff and time.monotonic() < self._close_deadline:
                # Closing during an outage: keep retrying at a gentle pace until the deadline.
                time.sleep(min(backoff, max(0.0, self._close_deadline - time.monotonic())))
            self._ingest()
            try:
                if not self._broken:
                    self._deliver()
            except Exception as exc:
                backoff = self._on_failure(exc, backoff)
            else:
                if self._outage_since is not None:
                    log.warning(
                        "MLflow at %s reachable again after %.0f s; buffered metrics delivered",
                        self.uri, time.monotonic() - self._outage_since,
                    )
                    self._outage_since = None
                backoff = 0.0
            if closing:
                empty = not self._points and not self._ops and not self._incoming
                if empty or time.monotonic() >= self._close_deadline:
                    self._finish(delivered_all=empty)
                    return

    def _on_failure(self, exc: Exception, backoff: float) -> float:
        if store.is_permanent(exc) and not self._connected:
            # The run itself is missing or unusable: nothing can ever be delivered.
            log.warning("MLflow run %s at %s cannot be logged to: %s; metrics are discarded",
                        self.run_id, self.uri, str(exc).splitlines()[0])
            with self._cond:
                self._broken = True
                self._points.clear()
                self._incoming.clear()
                self._ops.clear()
                self._cond.notify_all()
            return self.max_backoff_s
        self._resync = True  # a batch may have landed before the failure: check before resending
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "MLflow at %s unreachable; buffering %d metrics; will retry (%s)",
                self.uri, len(self._points), str(exc).splitlines()[0][:200],
            )
        return min(max(0.5, backoff * 2), self.max_backoff_s)

    def _finish(self, delivered_all: bool) -> None:
        try:
            self._client().set_terminated(self.run_id, status=self._final_status)
        except Exception as exc:
            log.warning("MLflow run %s not marked %s at %s: %s", self.run_id, self._final_status,
                        self.uri, str(exc).splitlines()[0][:200])
        with self._cond:
            self._cond.notify_all()


def rank_zero_logger(uri: str | None, run_id: str, rank: int | None = None,
                     **kwargs: Any) -> MetricLogger:
    """An ``MlflowLogger`` on global rank 0 (``rank`` or ``$RANK``), a ``NullLogger`` elsewhere."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    return MlflowLogger(uri, run_id, **kwargs) if rank == 0 else NullLogger()
