"""Add a study's control arms, budgets and extra seeds to a ladder plan (no torch, no MLflow).

The ladder's own CLIP stage is the ``mim_init`` arm at the config's seed and samples; the other
seeds, budgets and the control arms are copies of it (``scaling.study.variants``) that differ in
``train.seed``, ``train.samples`` and the initialisation inputs. Seeds are absolute
(``train.seed``), and so is the ``seed`` tag.

Upstream: by default every seed starts from the ladder's one teacher and MIM checkpoint (the
interval holds the CLIP stage's spread only). ``reseed_upstream`` gives seed ``k`` its own copy
of the whole ladder chain at ``train.seed + k`` (teacher, MIM stages and the CLIP stages between),
so the interval holds their spread too. The tag ``upstream_seed`` names the chain a run reads
(empty for a run that reads none, as ``scratch``).

The compute-matched control ``random_init_compute`` gets the CLIP samples whose FLOPs equal
mim_init's CLIP FLOPs plus its MIM stage's (and, with ``match_teacher``, the MIM teacher's), by
the cost model (``scaling.costs``). Every stage is tagged ``inherited_flops``: the FLOPs of the
stages whose weights it starts from, directly or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from scaling.config import ConfigError
from scaling.ladder.plan import Plan, PlannedStage
from scaling.study.variants import FlopsOf, copy_stage

ARMS = ("mim_init", "random_init", "random_init_compute", "scratch")
DEFAULT_ARMS = ARMS
# what each arm leaves at random init
_DROP = {"mim_init": (), "random_init": ("vision",), "random_init_compute": ("vision",), "scratch": ("vision", "text")}


@dataclass
class StudyPlan:
    plan: Plan  # the ladder's stages and the study's, in an order that runs
    seeds: list[int]  # offsets from each stage's train.seed
    arms: tuple[str, ...]
    compared: list[str] = field(default_factory=list)  # ladder CLIP stages that got arms
    budgets: dict[str, list[int]] = field(default_factory=dict)  # per compared stage: mim_init's CLIP samples
    reseed_upstream: bool = False
    notes: list[str] = field(default_factory=list)


def arm_name(stage: str, arm: str, seed: int, budget: int | None = None) -> str:
    """``clip@18B.random_init.s1`` (``.n8000`` before the seed for another budget): unique in the
    plan, and not matched by the ladder's own ``clip@18B-<fingerprint>`` folders."""
    return f"{stage}.{arm}" + (f".n{budget}" if budget is not None else "") + f".s{seed}"


def _check(arms: Sequence[str], seeds: int, budgets: Sequence[int] | None) -> tuple[str, ...]:
    arms = tuple(dict.fromkeys(arms))
    bad = [a for a in arms if a not in ARMS]
    if bad or "mim_init" not in arms:
        raise ConfigError(f"--arms: {', '.join(arms) or '(none)'}: choose mim_init and any of "
                          f"{', '.join(ARMS[1:])} (mim_init alone: seeds for the law, no controls)")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1 (3 or more for an interval worth reading)")
    if budgets is not None and (not budgets or any(b < 1 for b in budgets)):
        raise ConfigError(f"--budgets {','.join(map(str, budgets))}: give positive CLIP sample counts, e.g. 2000,4000")
    return arms


def _is_compared(stage: PlannedStage) -> bool:
    # a vision init is what a MIM stage hands its rung's CLIP: the arms compare those stages
    return bool(stage.init.get("vision"))


def _text_from_scratch(stage: PlannedStage) -> bool:
    # the plan writes init["text"] = "scratch" for a text tower it trains from scratch
    return stage.init.get("text") in (None, "scratch")


def _chains(plan: Plan, seeds: int, by_name: dict[str, PlannedStage], stages: list[PlannedStage],
            compared: set[str]) -> list[dict[str, str]]:
    """Seed k's own copy of every ladder stage (k >= 1); returns per k the ladder name -> copy name."""
    chains: list[dict[str, str]] = [{}]
    for k in range(1, seeds):
        remap: dict[str, str] = {}
        for stage in plan.stages:
            seed = int(stage.cfg.train.seed) + k
            name = arm_name(stage.name, "mim_init", seed) if stage.name in compared else f"{stage.name}.s{seed}"
            tags = {**stage.tags, "seed": str(seed), "base_stage": stage.name}
            copy = copy_stage(stage, plan, by_name, name, seed=seed, remap=remap, tags=tags)
            stages.append(copy)
            by_name[name] = copy
            remap[stage.name] = name
        chains.append(remap)
    return chains


def plan_study(plan: Plan, seeds: int = 3, arms: Sequence[str] = DEFAULT_ARMS, *,
               budgets: Sequence[int] | None = None, reseed_upstream: bool = False,
               match_teacher: bool = False) -> StudyPlan:
    """The ladder ``plan`` plus, for each MIM-initialised CLIP stage, ``seeds`` runs per arm at
    each budget in ``budgets`` (default: the stage's own CLIP samples).

    ``scratch`` is left out for a stage whose text tower the ladder already trains from scratch
    (there ``random_init`` is the scratch arm; a note says so).
    """
    arms = _check(arms, seeds, budgets)
    by_name: dict[str, PlannedStage] = {s.name: s for s in plan.stages}
    stages: list[PlannedStage] = list(plan.stages)
    compared = {s.name for s in plan.stages if _is_compared(s)}
    if not compared:
        raise ConfigError(f"the plan {' -> '.join(plan.path)} has no CLIP stage initialised from a MIM stage: "
                          "nothing to compare (give --to a rung above --from)")
    out = StudyPlan(plan, list(range(seeds)), arms, reseed_upstream=reseed_upstream, notes=list(plan.notes))
    chains = _chains(plan, seeds, by_name, stages, compared) if reseed_upstream else [{}]
    flops = FlopsOf(by_name)
    for stage in (s for s in plan.stages if s.name in compared):
        out.compared.append(stage.name)
        own = int(stage.cfg.train.samples)
        out.budgets[stage.name] = stage_budgets = list(dict.fromkeys(budgets or [own]))
        stage_arms = [a for a in arms if a != "scratch" or not _text_from_scratch(stage)]
        if len(stage_arms) < len(arms):
            out.notes.append(f"{stage.name}: the ladder trains its text tower from scratch, so random_init "
                             "is its scratch arm")
        base_seed = int(stage.cfg.train.seed)
        for k in range(seeds):
            seed = base_seed + k
            remap = chains[k] if reseed_upstream else {}
            chain = str(seed) if reseed_upstream else str(base_seed)
            mim_name = remap.get(stage.init["vision"], stage.init["vision"])
            extra = flops(mim_name)
            teacher = by_name[mim_name].teacher
            if match_teacher and teacher in by_name:
                extra += flops(teacher)
            per_sample = flops(stage.name) / own
            # the ladder's own stage (or this seed's chain copy of it) is mim_init at its own samples
            existing = by_name[remap.get(stage.name, stage.name)] if k == 0 or reseed_upstream else None
            if existing is not None:
                existing.tags.update({"arm": "mim_init", "seed": str(seed), "base_stage": stage.name,
                                      "budget": str(own), "upstream_seed": chain})  # fmt: skip
            for budget in stage_budgets:
                for arm in stage_arms:
                    if arm == "mim_init" and budget == own and existing is not None:
                        continue
                    tags = {"arm": arm, "seed": str(seed), "base_stage": stage.name, "budget": str(budget),
                            "upstream_seed": chain}
                    samples = budget + (math.ceil(extra / per_sample) if arm == "random_init_compute" else 0)
                    name = arm_name(stage.name, arm, seed, budget if budgets else None)
                    variant = copy_stage(stage, plan, by_name, name, seed=seed, samples=samples, drop=_DROP[arm],
                                         remap=remap, tags=tags)  # fmt: skip
                    if not variant.depends_on:
                        variant.tags["upstream_seed"] = ""  # reads no upstream stage: in every set
                    stages.append(variant)
                    by_name[name] = variant
    for s in stages:
        s.tags["inherited_flops"] = f"{flops.inherited(s.name):.6g}"
    if "random_init_compute" in arms:
        what = "CLIP + MIM + the MIM teacher's" if match_teacher else "CLIP + MIM"
        out.notes.append(f"random_init_compute: CLIP samples whose FLOPs equal mim_init's {what} FLOPs (cost model)")
    out.plan = Plan(plan.ladder, plan.path, plan.proxy, plan.experiment, plan.runs_dir, stages,
                    plan.teacher_source, plan.teacher_checkpoint, out.notes)
    return out
