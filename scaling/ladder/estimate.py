"""What each planned stage costs and whether it fits: params, FLOPs, batch layout, memory per
GPU, GPU-hours, wall time, and what to change when a stage does not fit (no torch)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from scaling import costs, loader_costs
from scaling.batching import (
    batch_layout,
    divisors,
    largest_micro_batch,
    memory,
    phase_config,
    stage_rungs,
    world,
)
from scaling.config import Phase, first_resize, stage_phases
from scaling.kinds import stage_kind
from scaling.ladder.plan import Plan, PlannedStage
from scaling.models.registry import RungSpec, apply_overrides

GIB = 2**30


def _advice(cfg: DictConfig, spec: RungSpec, teacher: RungSpec | None, procs: int, micro: int) -> list[str]:
    """Changes that would make the stage fit, each alone (with the micro-batch it then needs)."""
    gpu, batch, out = str(cfg.resources.gpu), int(cfg.train.batch_size), []
    best = largest_micro_batch(cfg, procs, spec, teacher)
    if best:
        out.append(f"train.micro_batch={best} (accumulation {batch // (best * procs)}) or resources.micro_batch=auto")
    ckpt = bool(cfg.model.grad_checkpointing)
    if not ckpt:
        if costs.fits(memory(cfg, spec, teacher, procs, micro, grad_checkpointing=True), gpu):
            out.append("model.grad_checkpointing=true")
        elif not best and (m := largest_micro_batch(cfg, procs, spec, teacher, grad_checkpointing=True)):
            out.append(f"model.grad_checkpointing=true with train.micro_batch={m}")
    zero = int(cfg.distributed.zero_stage) if cfg.distributed.deepspeed else 0
    for stage in range(zero + 1, 4):
        ds = "" if cfg.distributed.deepspeed else "distributed.deepspeed=true "
        if costs.fits(memory(cfg, spec, teacher, procs, micro, zero_stage=stage), gpu):
            out.append(f"{ds}distributed.zero_stage={stage}")
            break
        if not best and (m := largest_micro_batch(cfg, procs, spec, teacher, zero_stage=stage)):
            out.append(f"{ds}distributed.zero_stage={stage} with train.micro_batch={m}")
            break
    nodes, per_node = int(cfg.resources.nodes), int(cfg.resources.gpus_per_node)
    for more in range(nodes + 1, 8 * nodes + 1):
        p = more * per_node
        if batch % p == 0 and costs.fits(memory(cfg, spec, teacher, p, batch // p), gpu):
            out.append(f"resources.nodes={more} ({p} GPUs, micro-batch {batch // p}, no accumulation)")
            break
    return out or ["a larger GPU (resources.gpu) or a smaller train.batch_size"]


def _divide_advice(batch: int, procs: int, micro: int | None, per_node: int) -> list[str]:
    unit = procs * (micro or 1)  # no micro-batch set: any multiple of the processes
    lower, upper = batch // unit * unit, (batch // unit + 1) * unit
    what = f"{procs} processes" + (f" x micro-batch {micro}" if micro else "")
    out = [f"train.batch_size={lower or upper} or {upper} (multiples of {what})"]
    micro = micro or batch // procs
    if batch % procs == 0:
        fit = next(m for m in divisors(batch // procs) if m <= max(micro, 1))
        out.append(f"train.micro_batch={fit} (accumulation {batch // (fit * procs)})")
    if per_node > 0:
        nodes = [n for n in range(1, 4 * procs // per_node + 1) if batch % (n * per_node) == 0]
        near = min(nodes, key=lambda n: abs(n * per_node - procs), default=None)
        if near:
            out.append(f"resources.nodes={near} ({near * per_node} GPUs)")
    return out


def _phase_rungs(spec: RungSpec, teacher: RungSpec | None, phase: Phase) -> tuple[RungSpec, RungSpec | None]:
    """The rungs as they train during ``phase``: at its image size (the MIM teacher fed the size
    that gives it the student's grid)."""
    if phase.image_size is None:
        return spec, teacher
    spec = apply_overrides(spec, {"image_size": phase.image_size})
    if teacher is not None:
        grid = spec.mim.grid
        teacher = apply_overrides(teacher, {"vision.image_size": grid * teacher.vision.patch_size})
    return spec, teacher


def _phase_check(cfg: DictConfig, label: str, spec: RungSpec, teacher: RungSpec | None) -> dict[str, Any]:
    """One phase's batch layout, memory per GPU and what is wrong with them."""
    res = cfg.resources
    _, gpus_per_node, procs = world(res)
    batch = int(cfg.train.batch_size)
    micro, accum, divides = batch_layout(batch, procs, cfg.train.micro_batch)
    out: dict[str, Any] = {"global_batch": batch, "micro_batch": micro, "accumulation": accum,
                           "divides": divides, "memory": None, "fits": None, "problems": []}
    if not divides:
        out["problems"].append(
            f"{label}: global batch {batch} is not {procs} processes x micro-batch {micro} x an "
            "accumulation count; would divide: "
            + "; ".join(_divide_advice(batch, procs, cfg.train.micro_batch, gpus_per_node)))
    if gpus_per_node > 0:
        mem = memory(cfg, spec, teacher, procs, max(micro, 1))
        out.update(memory=mem, fits=costs.fits(mem, str(res.gpu)))
        if not out["fits"] and divides:
            usable = costs.HEADROOM * costs.GPU_MEMORY_BYTES[str(res.gpu)]
            parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in mem.items() if k != "total")
            ds = int(cfg.distributed.zero_stage) if cfg.distributed.deepspeed else 0
            out["problems"].append(
                f"{label}: {mem['total'] / GIB:.1f} GiB per GPU ({parts}) > {usable / GIB:.1f} GiB usable "
                f"of {res.gpu} ({costs.HEADROOM:.0%}) at micro-batch {micro}, ZeRO-{ds}, {cfg.train.precision}, "
                f"checkpointing {'on' if cfg.model.grad_checkpointing else 'off'}; "
                f"would fit: {'; '.join(_advice(cfg, spec, teacher, procs, micro))}")
    return out


def _stage_problems(name: str, cfg: DictConfig, phases: list[Phase], per_phase: list[list[str]]) -> list[str]:
    """A problem every phase has is the stage's, said once; one that only some phases have names
    its phase (and that phase's own micro-batch key, when it sets one)."""
    shared = [m for m in per_phase[0] if all(m in other for other in per_phase)]
    out = list(shared)
    for p, problems in zip(phases, per_phase, strict=True):
        for m in problems:
            if m in shared:
                continue
            text = m.replace(f"{name}:", f"{name} phase '{p.name}':", 1)
            if cfg.phases and cfg.phases[p.index].get("micro_batch") is not None:
                text = text.replace("train.micro_batch=", f"phases[{p.index}].micro_batch=")
            out.append(text)
    return out


def _resize_problems(name: str, cfg: DictConfig, phases: list[Phase], rung_size: int) -> list[str]:
    """A phase that changes the image size cannot run under DeepSpeed (the loop refuses it)."""
    resize = first_resize(phases, rung_size)
    if resize is None or not cfg.distributed.deepspeed:
        return []
    phase, first, size = resize
    return [f"{name} phase '{phase.name}': image size {first} -> {size} needs "
            "distributed.deepspeed=false (DeepSpeed's flat buffers are sized for the first grid's "
            "position table); or run the new size as its own clip stage"]


def stage_estimate(stage: PlannedStage) -> dict[str, Any]:
    cfg = stage.cfg
    spec, teacher = stage_rungs(cfg, stage.teacher_rung)
    samples = int(cfg.train.samples)
    mask_ratio = float(cfg.loss.mask_ratio)
    kind = stage_kind(stage.kind)
    n_params = kind.params(spec, teacher)
    tower = kind.tower(spec)
    gflops_fwd = costs.eva02_gflops(tower)
    # FLOPs summed over the phases at each one's patch dropout and image size; layout and memory
    # checked per phase, and the table shows the phase that needs the most memory (or does not divide)
    phases = stage_phases(cfg)
    total = 0.0
    for p in phases:
        drop = p.patch_dropout if kind.patch_dropout else 0.0
        p_spec, p_teacher = _phase_rungs(spec, teacher, p)
        total += costs.train_flops(p_spec, stage.kind, 1, drop, mask_ratio, p_teacher) * p.samples
    per_sample = total / samples
    checks = [_phase_check(phase_config(cfg, p), stage.name, *_phase_rungs(spec, teacher, p)) for p in phases]
    worst = max(checks, key=lambda c: (not c["divides"], c["memory"]["total"] if c["memory"] else 0.0))
    res = cfg.resources
    nodes, gpus_per_node, procs = world(res)
    out: dict[str, Any] = {
        "params": int(n_params),
        "gflops_per_sample": per_sample / 1e9,  # training: forward + backward (+ frozen teacher)
        "forward_gmacs_eva02": gflops_fwd,  # the EVA-02 papers' "GFLOPs" at 224^2 / 196 tokens
        "samples": samples,
        "train_flops": total,
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "processes": procs,
        "global_batch": worst["global_batch"],
        "micro_batch": worst["micro_batch"],
        "accumulation": worst["accumulation"],
        "divides": all(c["divides"] for c in checks),
        "zero_stage": int(cfg.distributed.zero_stage),
        "precision": str(cfg.train.precision),
        "grad_checkpointing": bool(cfg.model.grad_checkpointing),
        "gpu": str(res.gpu) if gpus_per_node else "cpu",
        "mfu": float(res.mfu),
        "memory_per_gpu_gb": None,
        "memory_gb": None,
        "gpu_memory_gb": None,
        "fits": None,
        "gpu_hours": None,
        "wall_hours": None,
        "problems": _stage_problems(stage.name, cfg, phases, [c["problems"] for c in checks])
        + _resize_problems(stage.name, cfg, phases, tower.image_size),
    }
    if gpus_per_node > 0:
        mem = worst["memory"]
        hours = costs.gpu_hours(total, str(res.gpu), float(res.mfu))
        out.update(memory_per_gpu_gb=mem["total"] / GIB, gpu_hours=hours, wall_hours=hours / procs,
                   fits=all(c["fits"] for c in checks), gpu_memory_gb=costs.GPU_MEMORY_BYTES[str(res.gpu)] / GIB,
                   memory_gb={k: v / GIB for k, v in mem.items()})
        # loader cores a GPU needs: its planned samples/s over one core's, at the stage's image size
        per_gpu = 1.0 / (3600.0 * costs.gpu_hours(per_sample, str(res.gpu), float(res.mfu)))
        out.update(loader_costs.loader_cores(per_gpu, tower.image_size, int(res.cpus_per_task)))
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


def plan_problems(rows: list[dict[str, Any]]) -> list[str]:
    """Why stages that are still to run would not fit their GPUs or divide their batch."""
    return [p for row in rows if row.get("state") != "finished" for p in row["problems"]]
