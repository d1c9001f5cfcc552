"""A stage's MLflow run, found or started the same way by the ladder, the sweep's teacher and
``python -m scaling.train``: the run a stage used before (its id from the stage's state file, or
its fingerprint tag) keeps receiving its steps, so a resumed stage logs into one run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scaling.tracking.store import find_stage_run, run_status, start_run


def open_stage_run(uri: str, experiment: str, name: str, fingerprint: str, *, known: str | None = None,
                   parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
                   params: Mapping[str, Any] | None = None) -> str:
    """The id of the stage's run: ``known`` while the store still has it, else an unfinished run
    with the same ``fingerprint`` tag, else a new run (``tags`` plus the fingerprint, ``params``)."""
    if known:
        try:
            run_status(uri, known)
            return str(known)
        except Exception:  # deleted run, another store: look further
            pass
    found = find_stage_run(uri, experiment, fingerprint)
    # A FINISHED run whose stage folder is gone would swallow the retrained steps as duplicates.
    if found and found[1] != "FINISHED":
        return found[0]
    return start_run(uri, experiment, name, parent_run_id=parent_run_id,
                     tags={**(tags or {}), "fingerprint": fingerprint}, params=params)
