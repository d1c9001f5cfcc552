"""Text tables for the dry run, ``status`` and the final results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def human(n: float | None, unit: str = "") -> str:
    """``17.6B``: B for 1e9, as ``python -m scaling.rungs`` writes params and samples."""
    if n is None:
        return "-"
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def duration(hours: float | None) -> str:
    if hours is None:
        return "-"
    if hours >= 48:
        return f"{hours / 24:.1f} d"
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.0f} min"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plan_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["stage", "teacher", "init", "params", "GFLOP/sample", "samples", "train FLOPs",
               "nodes x GPUs", "micro x accum", "mem/GPU (ZeRO)", "loader cores/GPU", "GPU-hours", "wall",
               "state"]
    body = []
    for r in rows:
        init = ", ".join(f"{k}={v}" for k, v in (r.get("init") or {}).items()) or "-"
        if r["gpus_per_node"]:
            world = f"{r['nodes']} x {r['gpus_per_node']}"
            mem = f"{r['memory_per_gpu_gb']:.1f}/{r['gpu_memory_gb']:.0f} GiB (Z{r['zero_stage']})"
            if r.get("fits") is False:
                mem += " !"
        else:
            world, mem = f"cpu x {r['processes']}", "-"
        cores = r.get("loader_cores_per_gpu")
        cores = "-" if cores is None else f"{cores:.2g}" + (" !" if r.get("loader_warning") else "")
        body.append([
            r["stage"] + (" (bootstrap)" if r.get("bootstrap") else ""), r.get("teacher") or "-", init,
            human(r["params"]), f"{r['gflops_per_sample']:.4g}", human(r["samples"]), f"{r['train_flops']:.3g}",
            world,
            f"{r['micro_batch']} x {r['accumulation']}" if r.get("divides", True) else f"{r['micro_batch']} x ? !",
            mem, cores, human(r["gpu_hours"]), duration(r["wall_hours"]), r.get("state", "new"),
        ])
    warned = [f"warning: {r['stage']} {r['loader_warning']}" for r in rows if r.get("loader_warning")]
    return "\n".join([table(headers, body), *warned])


def critical_path_hours(rows: Sequence[dict[str, Any]]) -> float:
    """The plan's wall time: its longest chain of stages through ``depends_on`` (a stage starts when
    its upstream ends; independent stages, a study's arms, run side by side)."""
    ends: dict[str, float] = {}
    for r in rows:  # plan order: upstream first
        ends[r["stage"]] = (r.get("wall_hours") or 0.0) + max((ends.get(d, 0.0) for d in r.get("depends_on") or ()),
                                                               default=0.0)
    return max(ends.values(), default=0.0)


def plan_totals(rows: Sequence[dict[str, Any]]) -> str:
    """The plan's totals: training FLOPs, GPU-hours and wall time, of the stages still to run."""
    todo = [r for r in rows if r.get("state") != "finished"]
    flops = sum(r["train_flops"] for r in todo)
    done = f" ({len(rows) - len(todo)} finished stage(s) left out)" if len(todo) < len(rows) else ""
    if not any(r.get("gpu_hours") is not None for r in todo):
        return f"total: {flops:.3g} training FLOPs in {len(todo)} stage(s){done}; CPU proxies: no GPU-hours"
    hours = sum(r.get("gpu_hours") or 0.0 for r in todo)
    wall = critical_path_hours(todo)
    return (f"total: {flops:.3g} training FLOPs, {human(hours)} GPU-hours, {wall / 24:.1f} wall days "
            f"(the longest chain of dependent stages) in {len(todo)} stage(s){done}")


def zero_shot(metrics: dict[str, Any] | None) -> str:
    """``eval/<set>/top1`` values as ``set 12.3%``."""
    found = [(k.split("/")[1], v) for k, v in (metrics or {}).items()
             if k.startswith("eval/") and k.endswith("/top1") and k.count("/") == 2]
    if not found and "eval/mim/loss" in (metrics or {}):  # a MIM stage has no zero-shot head
        return f"mim loss {float(metrics['eval/mim/loss']):.3f}"  # type: ignore[index]
    return ", ".join(f"{name} {100 * float(v):.1f}%" for name, v in sorted(found)) or "-"


def status_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = ["stage", "state", "run id", "job id", "progress", "zero-shot top-1 / eval", "out_dir"]
    body = []
    for r in rows:
        done, total = r.get("samples_seen"), r.get("samples")
        progress = f"{human(done)}/{human(total)} ({100 * done / total:.0f}%)" if done is not None and total else "-"
        body.append([r["stage"], _state(r), r.get("run_id") or "-", r.get("job_id") or "-", progress,
                     zero_shot(r.get("metrics")), r["out_dir"]])
    notes = [f"{r['stage']}: job {r.get('job_id') or '-'} on {r.get('nodes') or '-'}: {r['error']}"
             for r in rows if r.get("error") and r.get("state") == "failed"]
    return "\n".join([table(headers, body), *notes])


def phase_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per stage with phases: each phase's samples, batch and patch dropout."""
    lines = []
    for r in rows:
        if r.get("phases"):
            parts = [f"{p['name']} {human(p['samples'])} samples (batch {human(p['batch_size'])}, patch dropout "
                     f"{p['patch_dropout']:g}" + (f", {p['image_size']} px" if p.get("image_size") else "") + ")"
                     for p in r["phases"]]
            lines.append(f"{r['stage']} phases: " + " -> ".join(parts))
    return lines


def _state(row: dict[str, Any]) -> str:
    """The stage's own state, with what SLURM adds: a job that ended otherwise, lost nodes."""
    text = str(row["state"])
    slurm = str(row.get("slurm_state") or "")
    if slurm and row["state"] in ("running", "submitted") and slurm not in ("RUNNING", "PENDING", "REQUEUED"):
        text += f" (job {slurm})"
    if slurm in ("PENDING", "REQUEUED") and row["state"] in ("failed", "preempted"):
        text += " (requeued by SLURM)"
    if row.get("lost_nodes"):
        text += f" (node {', '.join(row['lost_nodes'])} lost)"
    return text
