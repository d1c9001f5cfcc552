"""Small functions for submitit jobs in tests. They live in an importable module (not a test
file) because submitit pickles functions by reference: the job process imports them again."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import submitit


def where_am_i(x: int) -> dict[str, object]:
    """Return what the job saw: its SLURM id, host and a value computed from the input."""
    return {
        "square": x * x,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "host": socket.gethostname(),
        "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
    }


def fail(message: str) -> None:
    raise RuntimeError(message)


class Countdown(submitit.helpers.Checkpointable):
    """Counts ``steps`` ticks of ``tick_s`` seconds; submitit pickles ``self`` on preemption,
    so a requeued run resumes from the tick it reached. ``progress`` is touched at every tick so
    a test can wait until the job really runs."""

    def __init__(self) -> None:
        self.done = 0
        self.starts: list[int] = []  # the tick each attempt started from

    def __call__(self, steps: int, tick_s: float, progress: Path) -> dict[str, object]:
        self.starts.append(self.done)
        while self.done < steps:
            time.sleep(tick_s)
            self.done += 1
            progress.write_text(str(self.done))
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        return {"done": self.done, "starts": self.starts, "restarts": restarts}


class PacedStage:
    """The real ``run_stage``, with every training step held for at least ``seconds``.

    A test of a real SLURM time limit needs a stage that is still training when the limit's
    signal comes, however fast the machine is. The pause sits where the loop polls for a stop,
    once per step on every rank, so it changes nothing the stage computes; not in the logger,
    through which a resumed stage first resends its metric spool (paced there, a resume would
    spend its whole time limit resending).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, cfg, logger=None, stop_requested=None):
        from scaling.train import run_stage

        seconds = self.seconds

        def paced() -> bool:
            time.sleep(seconds)
            return bool(stop_requested is not None and stop_requested())

        return run_stage(cfg, logger=logger, stop_requested=paced)
