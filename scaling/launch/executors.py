"""Pick and configure a submitit executor from a stage's ``resources`` section."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from scaling.batching import tasks_per_node

EXECUTORS = ("auto", "local", "slurm", "debug")
MAX_REQUEUES = 20

# Where slurm clients look for the cluster when SLURM_CONF is not set.
_SLURM_CONF_DEFAULTS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf")


class LaunchError(RuntimeError):
    """A job cannot be launched as asked (no scheduler, bad resources); the message says what to do."""


def slurm_available() -> bool:
    """``sbatch`` is on PATH and a cluster config is reachable (``$SLURM_CONF`` or /etc/slurm)."""
    if shutil.which("sbatch") is None:
        return False
    conf = os.environ.get("SLURM_CONF")
    if conf:
        return Path(conf).is_file()
    # An sbatch binary alone (e.g. the client package on a laptop) is not a cluster.
    return any(Path(p).is_file() for p in _SLURM_CONF_DEFAULTS)


def resolve_executor(kind: str) -> str:
    """``auto`` -> ``slurm`` when a SLURM cluster is reachable, else ``local``; checks ``slurm``."""
    if kind not in EXECUTORS:
        raise LaunchError(f"unknown executor '{kind}'; use one of {', '.join(EXECUTORS)}")
    if kind == "auto":
        return "slurm" if slurm_available() else "local"
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise LaunchError(
            "--executor slurm: no SLURM here ('sbatch' is not on PATH); run on a cluster login "
            "node, or use --executor local"
        )
    if kind == "slurm" and not slurm_available():
        _probe_controller()
    return kind


def _probe_controller() -> None:
    """No config file found: the cluster may still answer (configless SLURM); else say why not."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"--executor slurm: the SLURM controller does not answer ({exc})") from None
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LaunchError(
            f"--executor slurm: 'sbatch' is here but no SLURM cluster answers ({last[0]}); "
            "set SLURM_CONF to the cluster's slurm.conf, or use --executor local"
        )


def _as_dict(resources: Any) -> dict[str, Any]:
    if resources is None:
        return {}
    if isinstance(resources, Mapping):
        return dict(resources)

    return dict(OmegaConf.to_container(resources, resolve=True))  # type: ignore[arg-type]


def slurm_parameters(res: Mapping[str, Any], name: str, array_parallelism: int | None = None) -> dict[str, Any]:
    """AutoExecutor parameters for a SLURM job with these resources."""
    params: dict[str, Any] = {
        "name": name,
        "nodes": int(res.get("nodes") or 1),
        "tasks_per_node": tasks_per_node(res),
        "cpus_per_task": int(res.get("cpus_per_task") or 1),
        "timeout_min": int(res.get("timeout_min") or 60),
        "slurm_signal_delay_s": int(res.get("signal_delay_s") or 90),
    }
    gpus = int(res.get("gpus_per_node") or 0)
    if gpus > 0:
        params["gpus_per_node"] = gpus
    if int(res.get("mem_gb") or 0) > 0:
        params["mem_gb"] = int(res["mem_gb"])
    for key in ("partition", "account", "qos", "constraint"):
        if res.get(key):
            params[f"slurm_{key}"] = str(res[key])
    if array_parallelism:
        params["slurm_array_parallelism"] = int(array_parallelism)
    return params


def make_executor(
    kind: str,
    folder: str | Path,
    resources: Any,
    name: str,
    array_parallelism: int | None = None,
):
    """A submitit executor for ``kind`` (auto | local | slurm | debug) with these resources.

    ``local`` runs real subprocesses on this machine (one node, ``tasks_per_node`` tasks);
    ``slurm`` submits with partition/account/qos/constraint, nodes, one task per GPU, CPUs,
    memory, time limit and the USR2 signal delay; ``debug`` runs the job in this process.
    """
    # submitit only when an executor is made: the ladder's dry run imports this module
    import submitit

    kind = resolve_executor(kind)
    res = _as_dict(resources)
    folder = Path(folder)
    if kind == "debug":
        return submitit.DebugExecutor(folder)
    if kind == "local":
        if int(res.get("nodes") or 1) > 1:
            raise LaunchError(
                f"resources.nodes={res['nodes']}: the local executor runs on one node; "
                "use --executor slurm or resources.nodes=1"
            )
        executor = submitit.LocalExecutor(folder, max_num_timeout=MAX_REQUEUES)
        executor.update_parameters(
            timeout_min=int(res.get("timeout_min") or 60),
            tasks_per_node=tasks_per_node(res),
            gpus_per_node=int(res.get("gpus_per_node") or 0),
            signal_delay_s=int(res.get("signal_delay_s") or 30),
        )
        return executor
    # Long stages on clusters with short time limits run as many requeued chunks.
    executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=MAX_REQUEUES)
    executor.update_parameters(**slurm_parameters(res, name, array_parallelism))
    return executor


def job_id_of(job: Any) -> str:
    return str(getattr(job, "job_id", "") or "")
