"""MLflow client calls made by a helper process, so that their Python work stays off the GIL of
the training process.

MLflow's SQLAlchemy store spends ~0.1 ms of Python per metric and ~12 ms per batch. Made by
``MlflowLogger``'s thread inside the training process, that work holds the GIL in slices the
training loop waits for between its torch calls: measured 5 % of a 30 ms step's wall time with
the SQLite store (``benchmarks/bench_tracking.py``). Here the thread only pickles the call and
waits on a pipe; one helper process per training process serves every URI, runs at a lower CPU
priority, ignores the job's signals (the training process decides when the run ends) and exits
when its pipe closes. ``helper().call(uri, "log_batch", run_id, metrics=[...])`` is
``store.client(uri).log_batch(run_id, metrics=[...])`` in the helper. Errors come back as
``MlflowException`` with the same error code (``store.is_permanent`` reads it); a helper that
died is started again on the next call.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
from typing import Any, BinaryIO

HELPER_NICE = 10  # a little CPU share when training saturates every core; plenty otherwise


class HelperError(RuntimeError):
    """The helper process could not be started."""


class Helper:
    def __init__(self, start_timeout_s: float = 120.0) -> None:
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._lock = threading.Lock()

    def call(self, uri: str, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            proc = self._running()
            try:
                _send(proc.stdin, (uri, name, args, kwargs))
                ok, payload = _receive(proc.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                self._stop()
                raise _error(f"MLflow helper process lost during {name}: {exc!r}", "INTERNAL_ERROR") from None
        if ok:
            return payload
        message, code = payload
        raise _error(message, code)

    def start(self, wait: bool = True) -> None:
        """Start the helper; ``wait``: until it has imported mlflow (else the first call waits)."""
        with self._lock:
            if wait:
                self._running()
            elif self._proc is None or self._proc.poll() is not None:
                self._spawn()

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _running(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        if not self._ready:
            self._await_ready()
        return self._proc

    def _spawn(self) -> None:
        self._stop()
        self._proc = subprocess.Popen([sys.executable, "-m", "scaling.tracking.remote"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self._ready = False

    def _await_ready(self) -> None:
        proc, hello = self._proc, []
        reader = threading.Thread(target=lambda: hello.append(_receive_or_none(proc.stdout)), daemon=True)
        reader.start()
        reader.join(self.start_timeout_s)
        if hello != [(True, "ready")]:
            self._stop(kill=True)
            raise HelperError(f"the MLflow helper process did not start within {self.start_timeout_s:.0f} s "
                              f"(exit code {proc.poll()}); see its messages above")
        self._ready = True

    def _stop(self, kill: bool = False) -> None:
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=0 if kill else 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_helper: Helper | None = None
_helper_lock = threading.Lock()


def helper() -> Helper:
    """This process's helper (started on first use, closed at exit)."""
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = Helper()
            atexit.register(_helper.close)
        return _helper


class RemoteClient:
    """The subset of ``MlflowClient`` that ``MlflowLogger`` uses, served by the helper."""

    def __init__(self, uri: str, via: Helper | None = None) -> None:
        self.uri = uri
        self.via = via or helper()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.via.call(self.uri, name, *args, **kwargs)


def _error(message: str, code: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    try:
        value = ErrorCode.Value(code)
    except ValueError:
        value = ErrorCode.Value("INTERNAL_ERROR")
    return MlflowException(message, error_code=value)


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # whole, or nothing written
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    return pickle.load(stream)


def _receive_or_none(stream: BinaryIO) -> Any:
    try:
        return _receive(stream)
    except Exception:
        return None


def _serve() -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):  # not all exist off POSIX
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        os.nice(HELPER_NICE)
    # The protocol owns the real stdout; anything printed goes to stderr (the job's log).
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    inp = sys.stdin.buffer

    import mlflow  # noqa: F401 - imported before "ready", so that calls are answered at once

    from scaling.tracking import store

    _send(out, (True, "ready"))
    while True:
        try:
            uri, name, args, kwargs = _receive(inp)
        except EOFError:
            return
        try:
            result = getattr(store.client(uri), name)(*args, **kwargs)
            reply = (True, result)
        except Exception as exc:  # every failure goes back to the caller, which decides
            reply = (False, (str(exc) or type(exc).__name__, getattr(exc, "error_code", "INTERNAL_ERROR")))
        try:
            _send(out, reply)  # pickles first: a result that cannot be pickled writes nothing
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _send(out, (False, (f"{name} returned an unpicklable result: {exc}", "INTERNAL_ERROR")))


if __name__ == "__main__":
    _serve()
