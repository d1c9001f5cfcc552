"""Stop a stage cleanly on a signal: the handler only raises a flag; the training loop polls it at
every step boundary, writes a checkpoint (its metrics spooled first) and returns ``preempted``.

``python -m scaling.train`` then exits ``STOPPED_EXIT``; a ladder job records ``preempted``,
which ``ladder status`` shows and the next run of the same command resumes. A second Ctrl-C
leaves at once (KeyboardInterrupt), for a user who will not wait for the checkpoint.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable
from typing import Any

from scaling.stage_state import STOPPED_EXIT

__all__ = ["STOPPED_EXIT", "STOP_SIGNALS", "StopSignals"]

log = logging.getLogger("scaling.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Records the signals in ``handled`` (SIGTERM and SIGINT by default) instead of dying."""

    def __init__(self, handled: Iterable[int] = STOP_SIGNALS) -> None:
        self.handled = tuple(handled)
        self.signals: list[int] = []
        self._saved: dict[int, Any] = {}

    def install(self) -> StopSignals:
        for signum in self.handled:
            self._saved[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any = None) -> None:
        if signum == signal.SIGINT and signum in self.signals:
            raise KeyboardInterrupt  # the second Ctrl-C: no checkpoint, leave now
        self.signals.append(signum)
        log.warning("received %s: stopping at the next step boundary with a checkpoint%s",
                    signal.Signals(signum).name, " (Ctrl-C again: at once, without)" if signum == signal.SIGINT else "")

    def restore(self) -> None:
        """Put back the handlers found at ``install`` (matters for stages run in-process)."""
        for signum, handler in self._saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._saved = {}

    def is_set(self) -> bool:
        return bool(self.signals)

    @property
    def name(self) -> str:
        """The first signal received (``SIGTERM``), or empty."""
        return signal.Signals(self.signals[0]).name if self.signals else ""
