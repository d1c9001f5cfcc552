"""A stage's batch layout, in one place for the training loop, the planner and the rung command
(no torch): how many processes its resources start, how a global batch splits into micro-batches
and accumulation steps, and what ``resources.micro_batch=auto`` picks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from scaling import costs
from scaling.config import Phase, stage_phases
from scaling.kinds import stage_kind
from scaling.models.registry import RungSpec, configured_rung_of, get_rung


def tasks_per_node(res: Mapping[str, Any]) -> int:
    """One process per GPU on GPU nodes; ``tasks_per_node`` processes otherwise."""
    gpus = int(res.get("gpus_per_node") or 0)
    return gpus if gpus > 0 else max(1, int(res.get("tasks_per_node") or 1))


def world(res: Mapping[str, Any]) -> tuple[int, int, int]:
    """(nodes, GPUs per node, processes) that a ``resources`` section starts."""
    nodes = int(res.get("nodes") or 1)
    return nodes, int(res.get("gpus_per_node") or 0), nodes * tasks_per_node(res)


def batch_layout(batch: int, procs: int, micro: int | None = None) -> tuple[int, int, bool]:
    """(micro-batch, accumulation, divides) for a global batch over ``procs`` processes: no
    micro-batch means batch / processes and no accumulation; accumulation is 0 when it does not divide."""
    micro = int(micro or batch // procs)
    divides = micro > 0 and batch % (micro * procs) == 0
    return micro, (batch // (micro * procs) if divides else 0), divides


def divisors(n: int) -> list[int]:
    """Divisors of ``n``, largest first."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)}, reverse=True)


def stage_rungs(cfg: DictConfig, teacher_rung: str | None = None) -> tuple[RungSpec, RungSpec | None]:
    """The stage's rung as configured and its teacher's (``teacher_rung``, else the config's)."""
    teacher = teacher_rung or cfg.stage.teacher_rung
    # the stage's own overrides (model.vision, model.text, data.image_size) change what it costs
    return configured_rung_of(cfg), (get_rung(teacher, proxy=bool(cfg.stage.proxy)) if teacher else None)


def memory(cfg: DictConfig, spec: RungSpec, teacher: RungSpec | None, procs: int, micro: int,
           **changes: Any) -> dict[str, float]:
    """``costs.config_memory`` with some settings changed (``zero_stage``, ``grad_checkpointing``)."""
    if changes:
        cfg = cfg.copy()
        if "grad_checkpointing" in changes:
            cfg.model.grad_checkpointing = changes["grad_checkpointing"]
        if "zero_stage" in changes:
            cfg.distributed.deepspeed, cfg.distributed.zero_stage = True, changes["zero_stage"]
    return costs.config_memory(cfg, spec, teacher, procs, micro)


def largest_micro_batch(cfg: DictConfig, procs: int, spec: RungSpec, teacher: RungSpec | None,
                        **changes: Any) -> int | None:
    """The largest micro-batch that divides ``batch / procs`` and fits the GPU, or None."""
    batch = int(cfg.train.batch_size)
    if batch % procs:
        return None
    for micro in divisors(batch // procs):
        if costs.fits(memory(cfg, spec, teacher, procs, micro, **changes), str(cfg.resources.gpu)):
            return micro
    return None


def phase_config(cfg: DictConfig, phase: Phase) -> DictConfig:
    """The stage config as it trains during ``phase`` (batch layout and patch dropout)."""
    cfg = cfg.copy()
    cfg.train.batch_size, cfg.train.micro_batch = phase.batch_size, phase.micro_batch
    if stage_kind(cfg.stage.kind).patch_dropout:
        cfg.model.patch_dropout = phase.patch_dropout
    return cfg


def auto_micro_batch(cfg: DictConfig, teacher_rung: str | None = None) -> int | None:
    """What ``resources.micro_batch=auto`` sets ``train.micro_batch`` to (GPU stages only)."""
    _, gpus, procs = world(cfg.resources)
    if gpus <= 0:
        return None
    spec, teacher = stage_rungs(cfg, teacher_rung)
    # one micro-batch for every phase that does not set its own: the largest that fits them all
    fits = [largest_micro_batch(phase_config(cfg, p), procs, spec, teacher)
            for p in stage_phases(cfg) if p.micro_batch is None or p.micro_batch == cfg.train.micro_batch]
    return None if not fits or None in fits else min(fits)


def apply_auto_micro_batch(cfg: DictConfig, teacher_rung: str | None = None) -> str | None:
    """``resources.micro_batch=auto``: set ``train.micro_batch`` to the largest that fits the GPU
    (the planner before fingerprinting, the loop for a stage started on its own); a note when none
    fits. CPU processes have no memory model: batch / processes, no accumulation."""
    if cfg.resources.micro_batch != "auto" or int(cfg.resources.gpus_per_node) <= 0:
        return None
    micro = auto_micro_batch(cfg, teacher_rung)
    if micro is None:
        return f"{cfg.stage.name}: resources.micro_batch=auto found no micro-batch that fits {cfg.resources.gpu}"
    cfg.train.micro_batch = micro
    return None
