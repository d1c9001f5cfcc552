"""What the numbers of a ladder's results table mean: chance, each student's teacher, and the
student's held-out losses beside its top-1 (a student under its teacher in top-1 can still beat it
on the losses, which keep falling after top-1 reaches the synthetic world's colour plateau)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scaling.data.world import COLOUR_NAMES, SEEN_COMBOS
from scaling.ladder.plan import Plan

TOP = (("eval/synth_cls/top1", "top-1"), ("eval/synth_cls/top5", "top-5"))
LOSSES = (("eval/synth_cls/loss", "zero-shot cross-entropy"), ("eval/synth_ret/loss", "retrieval InfoNCE"))


def _teacher_of(plan: Plan, stage: str) -> str | None:
    """The CLIP stage that taught the MIM stage ``stage`` starts its vision tower from."""
    by_name = {s.name: s for s in plan.stages}
    mim = by_name.get(plan.stage(stage).init.get("vision", ""))
    return mim.teacher if mim is not None and mim.teacher in by_name else None


def _values(metrics: dict[str, Any], other: dict[str, Any] | None) -> str:
    parts = []
    for key, name in (*TOP, *LOSSES):
        if key not in metrics:
            continue
        pct = key in dict(TOP)
        value = f"{100 * float(metrics[key]):.1f} %" if pct else f"{float(metrics[key]):.3f}"
        if other and key in other:
            value += f" (teacher {100 * float(other[key]):.1f} %)" if pct else f" (teacher {float(other[key]):.3f})"
        parts.append(f"{name} {value}")
    return ", ".join(parts)


def results_legend(plan: Plan, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Lines under the results table: chance level, then per CLIP stage of the ladder (not a
    study's copies) its top-1 and top-5 beside its held-out losses, and its teacher's."""
    n = len(SEEN_COMBOS)
    lines = ["what the numbers mean:",
             f"  chance: 1/{n} = {100 / n:.1f} % top-1 on the {n} colour-shape classes; a model that knows the "
             f"colours and guesses the shape: about {len(COLOUR_NAMES)}/{n} = {100 * len(COLOUR_NAMES) / n:.1f} %. "
             "Held-out losses: lower is better."]  # fmt: skip
    metrics = {r["stage"]: r.get("metrics") or {} for r in rows}
    for stage in plan.stages:
        if stage.kind != "clip" or "." in stage.name or not metrics.get(stage.name):
            continue
        teacher = _teacher_of(plan, stage.name)
        mine, theirs = metrics[stage.name], metrics.get(teacher or "") or None
        role = f"student of {teacher}" if teacher else ("teacher, trained from scratch" if stage.bootstrap else "")
        line = f"  {stage.name}{f' ({role})' if role else ''}: {_values(mine, theirs)}"
        if theirs:
            better = [name for key, name in LOSSES if key in mine and key in theirs and mine[key] < theirs[key]]
            line += f"; beats its teacher on {len(better)} of {len(LOSSES)} held-out losses"
        lines.append(line)
    return lines
