"""Add a study's control arms and extra seeds to a ladder plan (no torch, no MLflow).

The ladder's own CLIP stage is the ``mim_init`` arm at the config's seed; its other seeds and the
``random_init`` / ``scratch`` arms are new stages with the same recipe and samples, differing only
in ``train.seed`` and the initialisation inputs. Each gets its own fingerprint (so a rerun skips
what finished) and runs after what it needs (the MIM stage, or the teacher CLIP whose text tower
it starts from). MIM stages are not repeated: the seeds measure the CLIP stage's spread for the
one MIM checkpoint of the rung.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from scaling.config import ConfigError, fingerprint
from scaling.ladder.plan import Plan, PlannedStage

ARMS = ("mim_init", "random_init", "scratch")


@dataclass
class StudyPlan:
    plan: Plan  # the ladder's stages and the study's, in an order that runs
    seeds: list[int]
    arms: tuple[str, ...]
    compared: list[str] = field(default_factory=list)  # ladder CLIP stages that got arms
    notes: list[str] = field(default_factory=list)


def arm_name(stage: str, arm: str, seed: int) -> str:
    """``clip@18B.random_init.s1``: unique in the plan, and not matched by the ladder's own
    ``clip@18B-<fingerprint>`` folders when it looks for a finished teacher."""
    return f"{stage}.{arm}.s{seed}"


def _fingerprint(stage: PlannedStage, by_name: dict[str, PlannedStage], internal: dict[str, str]) -> str:
    data = OmegaConf.to_container(stage.cfg, resolve=True)
    data["out_dir"] = ""  # type: ignore[index]
    for key, name in internal.items():
        data["inputs"][key] = f"stage:{name}"  # type: ignore[index]
    return fingerprint(data, [by_name[n].fingerprint for n in dict.fromkeys(internal.values())])


def _variant(base: PlannedStage, plan: Plan, by_name: dict[str, PlannedStage], arm: str, seed: int,
             base_seed: int) -> PlannedStage:
    cfg = copy.deepcopy(base.cfg)
    cfg.train.seed = seed
    init = dict(base.init)
    if arm in ("random_init", "scratch"):
        cfg.inputs.init_vision = None
        init.pop("vision", None)
    if arm == "scratch":
        cfg.inputs.init_text = None
        init.pop("text", None)
    internal = {f"init_{k}": v for k, v in init.items() if v in by_name}
    name = arm_name(base.name, arm, seed - base_seed)
    cfg.stage.name = name
    stage = PlannedStage(name, base.kind, base.rung, cfg, "", base.out_dir, init=init,
                         depends_on=list(dict.fromkeys(internal.values())),
                         tags={"arm": arm, "seed": str(seed - base_seed), "base_stage": base.name})
    stage.fingerprint = _fingerprint(stage, by_name, internal)
    stage.out_dir = plan.runs_dir / plan.experiment / f"{name}-{stage.fingerprint}"
    stage.cfg.out_dir = stage.out_dir.as_posix()
    return stage


def plan_study(plan: Plan, seeds: int = 3, arms: Sequence[str] = ARMS) -> StudyPlan:
    """The ladder ``plan`` plus, for each MIM-initialised CLIP stage, ``seeds`` runs per arm.

    ``scratch`` is left out for a stage whose text tower the ladder already trains from scratch
    (there ``random_init`` is the scratch arm; a note says so).
    """
    arms = tuple(dict.fromkeys(arms))
    bad = [a for a in arms if a not in ARMS]
    if bad or "mim_init" not in arms or len(arms) < 2:
        raise ConfigError(f"--arms: {', '.join(arms) or '(none)'}: choose mim_init and at least one of "
                          f"random_init, scratch (from {', '.join(ARMS)})")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1 (3 or more for an interval worth reading)")
    by_name: dict[str, PlannedStage] = {}
    stages: list[PlannedStage] = []
    out = StudyPlan(plan, list(range(seeds)), arms, notes=list(plan.notes))
    for stage in plan.stages:
        stages.append(stage)
        by_name[stage.name] = stage
        if stage.kind != "clip" or not stage.init.get("vision"):
            continue  # MIM stages, and the bootstrap teacher (from scratch by construction)
        base_seed = int(stage.cfg.train.seed)
        stage.tags.update({"arm": "mim_init", "seed": "0", "base_stage": stage.name})
        out.compared.append(stage.name)
        for arm in arms:
            if arm == "scratch" and not stage.init.get("text"):
                out.notes.append(f"{stage.name}: the ladder trains its text tower from scratch, so "
                                 "random_init is its scratch arm")
                continue
            first = 1 if arm == "mim_init" else 0
            for k in range(first, seeds):
                variant = _variant(stage, plan, by_name, arm, base_seed + k, base_seed)
                stages.append(variant)
                by_name[variant.name] = variant
    if not out.compared:
        raise ConfigError(f"the plan {' -> '.join(plan.path)} has no CLIP stage initialised from a MIM stage: "
                          "nothing to compare (give --to a rung above --from)")
    out.plan = Plan(plan.ladder, plan.path, plan.proxy, plan.experiment, plan.runs_dir, stages,
                    plan.teacher_source, plan.teacher_checkpoint, out.notes)
    return out
