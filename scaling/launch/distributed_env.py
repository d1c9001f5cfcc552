"""torch.distributed environment variables for a job's tasks (SLURM multi-node, multi-task or local).

The one place that derives a job's rendezvous: ``scaling.train.distributed.detect`` then reads
the exported variables like torchrun's.
"""

from __future__ import annotations

import os

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_distributed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set (and return) RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.

    Values already present (e.g. from torchrun) win. Inside a submitit job they come from
    submitit's ``TorchDistributedEnvironment``: ranks from SLURM_PROCID/SLURM_LOCALID/... (or the
    local executor's ids), the master address is the first host of the job's node list (so
    every node meets on the first one, never on localhost) and the port is drawn from the job id
    (the same on every task, different for jobs sharing a node). Outside any job: one process.
    """
    env = os.environ if environ is None else environ
    values = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "JOB_ID": "", "NODE": ""}
    if env.get("SUBMITIT_EXECUTOR"):
        # submitit only inside a job: the ladder's dry run imports this module
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        for key in KEYS:  # an empty value counts as unset (submitit would read MASTER_PORT="")
            if env.get(key) == "":
                del env[key]
        job = submitit.JobEnvironment()
        dist_env = TorchDistributedEnvironment()  # reads this process's environment
        values.update(RANK=str(dist_env.rank), WORLD_SIZE=str(dist_env.world_size),
                      LOCAL_RANK=str(dist_env.local_rank), LOCAL_WORLD_SIZE=str(dist_env.local_world_size),
                      MASTER_ADDR=str(dist_env.master_addr), MASTER_PORT=str(dist_env.master_port),
                      JOB_ID=str(job.job_id), NODE=str(job.hostname))  # fmt: skip
        if env["SUBMITIT_EXECUTOR"] == "local":  # one machine: loopback, whether its hostname resolves or not
            values["MASTER_ADDR"] = "127.0.0.1"
    for key in KEYS:
        if key in env and env[key]:
            values[key] = env[key]
        else:
            env[key] = values[key]
    return values
