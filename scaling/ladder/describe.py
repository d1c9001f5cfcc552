"""What a stage's MLflow run says about itself: its params are the stage config after every layer,
with the towers it builds spelled out (the layered config leaves ``model.vision: {}`` to mean "the
rung's tower") and the cost model's params and FLOPs; its lineage is a set of links to the runs
it learns from; the ladder's parent run carries the plan and its stages' headline metrics.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from scaling.config import flatten
from scaling.kinds import stage_kind
from scaling.ladder.estimate import plan_rows, stage_estimate
from scaling.ladder.plan import Plan, PlannedStage
from scaling.models.registry import configured_rung_of
from scaling.stages import LAW_METRIC
from scaling.tracking.ui import ui_base

# Not params: where the run itself is (the job knows it), set after the run exists.
RUN_KEYS = ("tracking.run_id", "tracking.parent_run_id")
HEADLINE = (LAW_METRIC, "eval/mim/loss")  # a stage's result: zero-shot top-1 (CLIP) or held-out loss (MIM)


def stage_params(stage: PlannedStage) -> dict[str, str]:
    """Every key of the stage config after all layers, towers and unset sizes resolved, plus the
    cost model's ``cost.*`` (params, training GFLOPs per sample, samples, FLOPs)."""
    cfg = stage.cfg
    flat = {k: v for k, v in flatten(cfg).items() if k not in RUN_KEYS}
    rung = configured_rung_of(cfg)
    towers = stage_kind(stage.kind).towers(rung)
    for name, spec in towers.items():
        flat.pop(f"model.{name}", None)  # "{}": the rung's tower, spelled out below
        flat.update({f"model.{name}.{k}": "" if v is None else str(v) for k, v in dataclasses.asdict(spec).items()})
    if not flat.get("data.image_size"):
        flat["data.image_size"] = str(towers["vision"].image_size)
    estimate = stage_estimate(stage)
    flat.update({"cost.params": str(estimate["params"]),
                 "cost.gflops_per_sample": f"{estimate['gflops_per_sample']:.6g}",
                 "cost.samples": str(estimate["samples"]), "cost.train_flops": f"{estimate['train_flops']:.6g}",
                 "model.rung_name": rung.name})
    return {k: ("null" if v == "" else v) for k, v in flat.items()}  # MLflow shows "" as nothing


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def lineage_tags(uri: str, experiment_id: str, links: Mapping[str, str | None],
                 names: Mapping[str, str]) -> dict[str, str]:
    """``lineage.<role>`` tags holding run links, and the run's description (Markdown) listing
    them: ``links`` maps a role (teacher, init, text init) to a run id (None: none)."""
    found = {role: run_id for role, run_id in links.items() if run_id}
    tags = {f"lineage.{role.replace(' ', '_')}": run_url(uri, experiment_id, run_id) for role, run_id in found.items()}
    if found:
        tags["mlflow.note.content"] = "Learns from: " + ", ".join(
            f"{role} [{names.get(run_id, run_id)}]({run_url(uri, experiment_id, run_id)})"
            for role, run_id in found.items())
    return tags


def headline_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """``clip-18B/eval/synth_cls/top1``: each finished stage's headline metrics, for the parent run
    (MLflow refuses ``@`` in a metric name, so the stage's ``kind@rung`` is written ``kind-rung``)."""
    out = {}
    for stage, result in results.items():
        metrics = (result or {}).get("metrics") or {}
        out.update({f"{stage.replace('@', '-')}/{key}": float(metrics[key]) for key in HEADLINE if key in metrics})
    return out


def plan_json(plan: Plan) -> str:
    """The plan as ``--dry-run --json`` prints it."""
    return json.dumps(plan_rows(plan), indent=1)
