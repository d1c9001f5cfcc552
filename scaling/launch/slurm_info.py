"""What SLURM says about a stage's job: its state and nodes, and which of them are lost.

Read by ``python -m scaling.ladder status`` next to the stage's own state file: when a node dies,
the job's surviving ranks record the error, but only the scheduler can name the node that went.
Plain ``sacct``/``sinfo`` calls with short time-outs; nothing when SLURM is not here.
"""

from __future__ import annotations

import shutil
import subprocess

# sinfo node states (``%T``) of a node that is gone or going; '*' marks "not responding".
_LOST = ("down", "drain", "fail", "unknown", "not_responding", "future")


def _out(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def job_report(job_id: str | None, nodes: str | None = None) -> dict[str, object]:
    """``{"slurm_state", "lost_nodes"}`` for a SLURM job id (``{}`` without SLURM or job).

    ``nodes``: the nodelist the job ran on, as the stage recorded it; used when sacct has none
    (a job requeued after a node failure shows "None assigned" while it waits).
    """
    if not job_id or not str(job_id).split("_")[0].isdigit() or shutil.which("sacct") is None:
        return {}
    rows = [line.split("|") for line in _out(["sacct", "-X", "-n", "-P", "-j", str(job_id),
                                               "-o", "JobID,State,NodeList"]).splitlines()]  # fmt: skip
    rows = [r for r in rows if len(r) == 3 and r[0] == str(job_id)]
    if not rows:
        return {}
    _, state, nodelist = rows[-1]
    report: dict[str, object] = {"slurm_state": state.split()[0]}
    if not nodelist or nodelist == "None assigned":
        nodelist = nodes or ""
    if nodelist:
        lost = []
        for line in _out(["sinfo", "-h", "-N", "-n", nodelist, "-o", "%N|%T"]).splitlines():
            name, _, node_state = line.partition("|")
            if node_state.endswith("*") or node_state.lower().startswith(_LOST):
                lost.append(name)
        report["lost_nodes"] = sorted(set(lost))
    return report
