"""Following a submitted job, whatever ran it: ``local`` (submitit subprocesses), ``slurm``
(sacct's state) or ``debug`` (in this process). What differs per executor lives here, so the
ladder's dispatcher asks the same questions of every job."""

from __future__ import annotations

from typing import Any

SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
              "BOOT_FAIL", "DEADLINE", "FINISHED", "INTERRUPTED"}


def submits_ahead(executor: str) -> bool:
    """Whether every stage is submitted up front with dependencies on its upstream jobs (SLURM's
    ``afterok``); the other executors have none, so a stage waits until its upstream finished."""
    return executor == "slurm"


def depend_on(submitter: Any, executor: str, job_ids: list[str]) -> None:
    """Make the next job ``submitter`` submits start only after ``job_ids`` succeeded."""
    if job_ids and submits_ahead(executor):
        submitter.update_parameters(slurm_additional_parameters={"dependency": "afterok:" + ":".join(job_ids)})


def is_done(executor: str, job: Any) -> bool:
    if executor == "debug":
        return True  # runs when its result is asked for
    if executor == "local":
        return bool(job.done())
    state = str(job.get_info(mode="force").get("State") or "").split(" ")[0]
    return state in SLURM_DONE or (job.paths.result_pickle.exists() and state not in ("RUNNING", "PENDING", "REQUEUED"))


def scheduler_state(executor: str, job: Any) -> str:
    """What the scheduler says of the job (``CANCELLED ...``); empty when it cannot say."""
    if executor != "slurm":
        return "CANCELLED" if getattr(job, "cancelled", False) else ""
    try:
        return str(job.get_info(mode="force").get("State") or "")
    except Exception:  # sacct trouble: the state file decides
        return ""


def job_result(executor: str, job: Any) -> Any:
    """The job's return value (rank 0's for a multi-task job); raises what the job raised."""
    if executor == "debug":
        # DebugJob.result() opens pdb on an exception; exception() runs the job without it.
        error = job.exception()
        if error is not None:
            raise error
    return job.results()[0] if getattr(job, "num_tasks", 1) > 1 else job.result()


def keeps_running_when_interrupted(executor: str) -> bool:
    """SLURM jobs outlive the command that submitted them; local and debug jobs do not."""
    return executor == "slurm"
