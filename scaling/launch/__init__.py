"""Dispatch stages as submitit jobs: ``local`` (subprocesses), ``slurm`` and ``debug`` (in process).

``resolve_executor`` imports nothing heavy (the stage state files are ``scaling.stage_state``'s);
``make_executor`` and ``StageJob`` load submitit (and the job loads the training stack) on use.
"""

from __future__ import annotations

from typing import Any

from scaling.launch.distributed_env import run_distributed_env
from scaling.launch.executors import (
    EXECUTORS,
    LaunchError,
    make_executor,
    resolve_executor,
    slurm_available,
)

__all__ = [
    "EXECUTORS",
    "LaunchError",
    "StageJob",
    "make_executor",
    "resolve_executor",
    "run_distributed_env",
    "slurm_available",
]


def __getattr__(name: str) -> Any:
    # StageJob subclasses a submitit class: import it only when a job is actually built.
    if name == "StageJob":
        from scaling.launch.job import StageJob

        return StageJob
    raise AttributeError(f"module 'scaling.launch' has no attribute '{name}'")
