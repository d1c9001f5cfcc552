"""Process-group setup for 1 or N processes, from torchrun's or SLURM's environment.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; under
``srun`` (or submitit) we read ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and take the
master address from the first host of ``SLURM_JOB_NODELIST``. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """The launch environment does not describe a usable process group."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(env: dict, key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise DistributedError(f"environment variable {key}={env[key]!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM node list (``node[01-04],gpu7`` -> ``node01``)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass  # no scontrol on this host: expand the common forms by hand
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def detect(env: dict | None = None) -> DistEnv:
    """Read the process's place in the job from the environment (torchrun first, then SLURM)."""
    env = dict(os.environ if env is None else env)
    port = _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500
    if "WORLD_SIZE" in env and "RANK" in env:
        world = _int_env(env, "WORLD_SIZE")
        return DistEnv(rank=_int_env(env, "RANK"), world_size=world,
                       local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                       master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=port,
                       source="torchrun" if world > 1 else "single")
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and _int_env(env, "SLURM_NTASKS") > 1:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        addr = env.get("MASTER_ADDR") or first_slurm_host(nodelist)
        if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
            port = 20000 + int(env["SLURM_JOB_ID"]) % 20000  # same on every task, rarely taken
        return DistEnv(rank=_int_env(env, "SLURM_PROCID"), world_size=_int_env(env, "SLURM_NTASKS"),
                       local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                       master_addr=addr, master_port=port, source="slurm")
    return DistEnv()


def pick_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        if requested == "nccl" and device.type != "cuda":
            raise DistributedError("distributed.backend=nccl needs CUDA devices; use gloo (or auto) on CPU")
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def pick_device(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def kernel_tags(device: torch.device) -> dict[str, str]:
    """What picks a run's floating-point kernels, as MLflow tags. On CPU, torch's instruction set
    (``AVX512`` or ``AVX2``; ``ATEN_CPU_CAPABILITY`` and oneDNN's ``ONEDNN_MAX_CPU_ISA`` cap it)
    changes the rounding, and a proxy stage from the same seed then takes another trajectory, as
    large as a seed change: two runs that differ should be checked here first."""
    tags = {"torch_version": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        tags["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    if device.type == "cuda":
        tags["gpu"] = torch.cuda.get_device_name(device)
    return tags


def init(env: DistEnv, backend: str, export: bool = False) -> None:
    """Join the process group (nothing to do for one process). ``export`` writes the torchrun
    variables, which DeepSpeed reads even for a single process."""
    if export or env.distributed:
        os.environ.update({"RANK": str(env.rank), "WORLD_SIZE": str(env.world_size),
                           "LOCAL_RANK": str(env.local_rank), "MASTER_ADDR": env.master_addr,
                           "MASTER_PORT": str(env.master_port)})
    if not env.distributed or dist.is_initialized():
        return
    dist.init_process_group(backend=backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                            rank=env.rank, world_size=env.world_size)


def cleanup() -> None:
    """Barrier + destroy: without it gloo sometimes aborts at exit after the work is done."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def any_true(flag: bool) -> bool:
    """OR over all ranks, so that every rank stops at the same step."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean(values: list[float]) -> list[float]:
    """Average a few scalars over ranks (losses for logging)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
