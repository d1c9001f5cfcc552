"""Each planned stage's state, run id, job id, progress and final metrics, from its out_dir."""

from __future__ import annotations

from typing import Any

from scaling.ladder.plan import Plan
from scaling.launch.slurm_info import job_report
from scaling.stage_state import read_progress

# Stages whose job may have died without saying so (a lost node): ask SLURM too.
_ASK_SLURM = ("submitted", "running", "preempted", "failed")


def stage_rows(plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for stage in plan.stages:
        state = stage.state()
        progress = read_progress(stage.out_dir)
        metrics = dict(state.get("metrics") or {}) or {
            k: v for k, v in (progress.get("metrics") or {}).items() if k.startswith("eval/")
        }
        seen = state.get("samples_seen") if state.get("state") == "finished" else None
        if seen is None:
            seen = (progress.get("metrics") or {}).get("train/samples_seen", state.get("samples_seen"))
        rows.append({
            "stage": stage.name,
            "state": state.get("state", "new"),
            "run_id": state.get("run_id"),
            "job_id": state.get("job_id"),
            "samples_seen": None if seen is None else int(seen),
            "samples": stage.samples,
            "metrics": metrics,
            "fingerprint": stage.fingerprint,
            "out_dir": stage.out_dir.as_posix(),
            "error": state.get("error"),
            "untracked": bool(state.get("untracked")),  # ran while the store was down
            "nodes": state.get("nodes"),
            **(job_report(state.get("job_id"), state.get("nodes")) if state.get("state") in _ASK_SLURM else {}),
        })
    return rows
