"""What each planned stage costs: params, FLOPs, memory per GPU, GPU-hours, wall time (no torch)."""

from __future__ import annotations

import math
from typing import Any

from scaling import costs
from scaling.config import stage_phases
from scaling.data import throughput
from scaling.ladder.plan import Plan, PlannedStage
from scaling.models.registry import get_rung


def _world(res: Any) -> tuple[int, int, int]:
    """(nodes, GPUs per node, processes)."""
    nodes = int(res.nodes)
    gpus = int(res.gpus_per_node)
    procs = nodes * (gpus if gpus > 0 else int(res.tasks_per_node))
    return nodes, gpus, max(1, procs)


def stage_estimate(stage: PlannedStage) -> dict[str, Any]:
    cfg = stage.cfg
    proxy = bool(cfg.stage.proxy)
    spec = get_rung(stage.rung, proxy=proxy)
    teacher = get_rung(stage.teacher_rung, proxy=proxy) if stage.teacher_rung else None
    samples = int(cfg.train.samples)
    patch_dropout = float(cfg.model.patch_dropout) if stage.kind == "clip" else 0.0
    mask_ratio = float(cfg.loss.mask_ratio)
    if stage.kind == "clip":
        n_params = costs.clip_params(spec)
        gflops_fwd = costs.eva02_gflops(spec.vision)
    else:
        teacher_width = teacher.vision.width if teacher else spec.mim.width
        n_params = costs.params(spec.mim) + costs.mim_head_params(spec.mim, teacher_width)
        gflops_fwd = costs.eva02_gflops(spec.mim)
    # phases: FLOPs summed over each phase's samples at its patch dropout; memory at the phase
    # that keeps the most patches
    phases = stage_phases(cfg)
    if stage.kind == "clip":
        patch_dropout = min(p.patch_dropout for p in phases)
    total = sum(costs.train_flops(spec, stage.kind, 1, p.patch_dropout if stage.kind == "clip" else 0.0,
                                  mask_ratio, teacher) * p.samples for p in phases)
    per_sample = total / samples
    res = cfg.resources
    nodes, gpus_per_node, procs = _world(res)
    micro = int(cfg.train.micro_batch or max(1, math.ceil(cfg.train.batch_size / procs)))
    out: dict[str, Any] = {
        "params": int(n_params),
        "gflops_per_sample": per_sample / 1e9,  # training: forward + backward (+ frozen teacher)
        "forward_gmacs_eva02": gflops_fwd,  # the EVA-02 papers' "GFLOPs" at 224^2 / 196 tokens
        "samples": samples,
        "train_flops": total,
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "processes": procs,
        "micro_batch": micro,
        "zero_stage": int(cfg.distributed.zero_stage),
        "gpu": str(res.gpu) if gpus_per_node else "cpu",
        "mfu": float(res.mfu),
        "memory_per_gpu_gb": None,
        "gpu_hours": None,
        "wall_hours": None,
    }
    if gpus_per_node > 0:
        memory = costs.memory_per_gpu(
            spec, stage.kind, procs, micro, int(cfg.distributed.zero_stage),
            precision=str(cfg.train.precision), grad_checkpointing=bool(cfg.model.grad_checkpointing),
            optimizer=str(cfg.optim.name), patch_dropout=patch_dropout, teacher=teacher,
        )
        hours = costs.gpu_hours(total, str(res.gpu), float(res.mfu))
        out.update(memory_per_gpu_gb=memory["total"] / 2**30, gpu_hours=hours, wall_hours=hours / procs,
                   fits=costs.fits(memory, str(res.gpu)))
        # loader cores a GPU needs: its planned samples/s over one core's, at the stage's image size
        per_gpu = 1.0 / (3600.0 * costs.gpu_hours(per_sample, str(res.gpu), float(res.mfu)))
        size = (spec.vision if stage.kind == "clip" else spec.mim).image_size
        out.update(throughput.loader_cores(per_gpu, size, int(res.cpus_per_task)))
    return out


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    """One JSON-ready object per stage (the ``--dry-run --json`` output)."""
    rows = []
    for stage in plan.stages:
        row: dict[str, Any] = {
            "stage": stage.name,
            "rung": stage.rung,
            "kind": stage.kind,
            "teacher": stage.teacher,
            "init": dict(stage.init) or None,
            "depends_on": list(stage.depends_on),
            "bootstrap": stage.bootstrap,
            "proxy": plan.proxy,
            "fingerprint": stage.fingerprint,
            "out_dir": stage.out_dir.as_posix(),
            "state": stage.state().get("state", "new"),
        }
        row.update(stage_estimate(stage))
        row["phases"] = [{"name": p.name, "samples": p.samples, "batch_size": p.batch_size,
                          "patch_dropout": p.patch_dropout, "image_size": p.image_size}
                         for p in stage_phases(stage.cfg)] if stage.cfg.phases else None
        rows.append(row)
    return rows
