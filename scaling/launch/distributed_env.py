"""torch.distributed environment variables for a job's tasks (SLURM multi-task or local)."""

from __future__ import annotations

import os
import re


def first_host(nodelist: str) -> str:
    """First hostname of a SLURM nodelist: ``gpu[003-005,9],cpu1`` -> ``gpu003``."""
    head = re.match(r"^([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not head:
        return nodelist
    prefix, ranges = head.group(1), head.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _master_port(job_id: str) -> int:
    # Jobs sharing a node must not collide: derive the port from the job id.
    digits = re.sub(r"\D", "", job_id) or "0"
    return 20000 + int(digits) % 20000


def run_distributed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set (and return) RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.

    Values already present (e.g. from torchrun) win. Inside a submitit job the ranks come from
    its JobEnvironment (SLURM_PROCID/... or the local executor's ids) and the master address is
    the first host of the SLURM nodelist. Outside any job: a single process.
    """
    env = os.environ if environ is None else environ
    values = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "JOB_ID": ""}
    if env.get("SUBMITIT_EXECUTOR"):
        import submitit

        job = submitit.JobEnvironment()
        per_node = max(1, job.num_tasks // max(1, job.num_nodes))
        values.update(RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks),
                      LOCAL_RANK=str(job.local_rank), LOCAL_WORLD_SIZE=str(per_node),
                      JOB_ID=str(job.job_id), MASTER_PORT=str(_master_port(str(job.job_id))))
        nodelist = env.get("SLURM_JOB_NODELIST")
        if nodelist:
            values["MASTER_ADDR"] = first_host(nodelist)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if key in env and env[key]:
            values[key] = env[key]
        else:
            env[key] = values[key]
    return values
