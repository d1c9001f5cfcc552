"""Turn a ladder file + ``--from/--to/--via`` + overrides into an ordered list of stages.

Nothing here touches the disk beyond reading configs and stage state files, imports torch, or
talks to MLflow: a plan (and its dry run) is cheap and has no side effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scaling.config import ConfigError
from scaling.config_bounds import check_name, check_uri
from scaling.ladder.overrides import split_overrides
from scaling.ladder.plan_config import target_stages
from scaling.ladder.plan_origin import TEACHER_KEY, origin
from scaling.ladder.plan_stages import PlannedStage, StageBuilder
from scaling.ladder.spec import LadderSpec, load_ladder
from scaling.stages import stage_name

__all__ = ["TEACHER_KEY", "Plan", "PlannedStage", "plan_ladder", "rung_path"]


@dataclass
class Plan:
    ladder: LadderSpec
    path: list[str]  # rung keys, --from first
    proxy: bool
    experiment: str
    runs_dir: Path
    stages: list[PlannedStage]
    teacher_source: str  # "checkpoint" | "ladder" | "bootstrap" | "missing" | "none" (scaling.ladder.plan_origin)
    teacher_checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)

    def stage(self, name: str) -> PlannedStage:
        return next(s for s in self.stages if s.name == name)

    def downstream(self, name: str) -> list[str]:
        """Every stage that depends on ``name``, directly or not."""
        out: list[str] = []
        for stage in self.stages:
            if any(d == name or d in out for d in stage.depends_on):
                out.append(stage.name)
        return out


def rung_path(spec: LadderSpec, start: str, end: str, via: Sequence[str] = ()) -> list[str]:
    """Rung keys from ``start`` to ``end``: through ``via`` if given, else along the teachers."""
    first, last = spec.rung(start).key, spec.rung(end).key
    i_first, i_last = spec.index(first), spec.index(last)
    if i_first >= i_last:
        raise ConfigError(
            f"--from {start} must be below --to {end} on ladder '{spec.name}' "
            f"(order: {' -> '.join(spec.keys())})"
        )
    if via:
        middle = [spec.rung(v).key for v in via]
        for key in middle:
            if not i_first < spec.index(key) < i_last:
                raise ConfigError(f"--via {key} must lie between --from {first} and --to {last} "
                                  f"(order: {' -> '.join(spec.keys())})")
        middle = sorted(dict.fromkeys(middle), key=spec.index)
        return [first, *middle, last]
    chain, current = [last], last
    while current != first:
        teacher = next(r for r in spec.rungs if r.key == current).teacher
        if teacher is None or spec.index(teacher) < i_first:
            chain.append(first)  # the file's teachers skip --from: start there directly
            break
        chain.append(teacher)
        current = teacher
    return chain[::-1]


def plan_ladder(
    start: str | None = None,
    end: str | None = None,
    via: Sequence[str] = (),
    ladder: str | Path | None = None,
    proxy: bool = True,
    overrides: Sequence[str] = (),
    experiment: str | None = None,
    runs_dir: str | Path = "runs",
    tracking_uri: str | None = None,
    allow_missing_teacher: bool = False,
) -> Plan:
    """The stages of ``--from start --to end`` (defaults: the last rung, from its teacher).

    Raises ``ConfigError`` (one line naming the key, file or option) for anything wrong.
    """
    split = split_overrides(overrides)
    spec = load_ladder(ladder, split.ladder)
    end_key = spec.rung(end).key if end else spec.rungs[-1].key
    if start is None:
        teacher = next(r for r in spec.rungs if r.key == end_key).teacher
        if teacher is None:
            raise ConfigError(f"--to {end_key} has no teacher rung in {spec.path}: give --from")
        start = teacher
    path = rung_path(spec, start, end_key, via)
    check_name(experiment or spec.experiment, "--experiment" if experiment else "experiment",
               "command line" if experiment else str(spec.path))
    check_uri(tracking_uri, "--tracking-uri")
    experiment = experiment or spec.experiment
    runs = Path(runs_dir).resolve()
    entries = {r.key: r for r in spec.rungs}
    # what each rung of the path trains, in the order the ladder file's ``stages`` wires them
    trains = {rung: [k for k in spec.wiring if k in entries[rung].stages] for rung in path[1:]}
    stage_names = [stage_name(k, r) for r in path[1:] for k in trains[r]]
    first = path[0]
    given = origin(spec, path, runs, experiment, proxy, allow_missing_teacher)
    notes = list(given.notes)
    if given.source == "bootstrap":
        stage_names.insert(0, stage_name(given.kind, first))
    split.by_stage = target_stages(spec, split, stage_names)

    placement = {"out_dir": "", "tracking": {"experiment": experiment}}
    if tracking_uri:
        placement["tracking"]["uri"] = tracking_uri
    builder = StageBuilder(spec, split, proxy, runs / experiment, placement, notes)
    builder.outputs[first] = given.outputs()
    if given.source == "bootstrap":
        builder.bootstrap(given.kind, first)
    for teacher_rung, rung in zip(path, path[1:], strict=False):
        builder.outputs[rung] = {}
        for kind in trains[rung]:
            builder.add_wired(kind, rung, teacher_rung, teacher_missing=given.source == "missing")
    return Plan(spec, path, proxy, experiment, runs, builder.stages, given.source, given.checkpoint, notes)
