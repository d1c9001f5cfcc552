"""A planned stage copied with another seed, budget, initialisation or upstream chain.

A study's arms, extra seeds and reseeded chains are all copies of a ladder stage that differ in
``train.seed``, ``train.samples`` (warm-up scaled with it), the initialisation inputs dropped, or
the upstream stages they read (another seed's teacher and MIM stage). Each copy gets its own
fingerprint, from its config and its upstream stages' fingerprints, so a rerun skips what finished.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

from omegaconf import OmegaConf

from scaling.config import ConfigError, fingerprint
from scaling.ladder.estimate import stage_estimate
from scaling.ladder.plan import Plan, PlannedStage

INIT_KEYS = {"vision": "init_vision", "text": "init_text"}


def internal_inputs(stage: PlannedStage, by_name: Mapping[str, PlannedStage]) -> dict[str, str]:
    """The stage's ``inputs`` keys that another planned stage writes: ``{key: stage name}``."""
    out = {}
    if stage.teacher in by_name:  # a teacher is set on the stages that are taught (mim)
        out["teacher"] = stage.teacher
    for kind, key in INIT_KEYS.items():
        if stage.init.get(kind) in by_name:
            out[key] = stage.init[kind]
    return out


def _fingerprint(stage: PlannedStage, by_name: Mapping[str, PlannedStage], internal: dict[str, str]) -> str:
    data = OmegaConf.to_container(stage.cfg, resolve=True)
    data["out_dir"] = ""  # type: ignore[index]
    for key, name in internal.items():
        data["inputs"][key] = f"stage:{name}"  # type: ignore[index]
    return fingerprint(data, [by_name[n].fingerprint for n in dict.fromkeys(internal.values())])


def copy_stage(base: PlannedStage, plan: Plan, by_name: Mapping[str, PlannedStage], name: str, *, seed: int,
               samples: int | None = None, drop: Iterable[str] = (), remap: Mapping[str, str] | None = None,
               tags: Mapping[str, str] | None = None) -> PlannedStage:
    """``base`` as stage ``name`` at ``train.seed`` ``seed``; ``samples``: another budget (the
    warm-up keeps its fraction); ``drop``: initialisations to leave random (``vision``, ``text``);
    ``remap``: upstream stage names to read instead (``{"mim@18B": "mim@18B.s1"}``)."""
    remap = remap or {}
    cfg = copy.deepcopy(base.cfg)
    cfg.train.seed = seed
    if samples is not None and samples != int(base.cfg.train.samples):
        if any(p.get("samples") for p in cfg.phases or []):
            raise ConfigError(f"{base.name}: its phases give samples of their own; a study budget scales "
                              "phases given as fractions only")
        old = int(base.cfg.train.samples)
        cfg.train.samples = int(samples)
        cfg.optim.warmup_samples = int(round(float(base.cfg.optim.warmup_samples) * samples / old))
    init = dict(base.init)
    for kind in drop:
        cfg.inputs[INIT_KEYS[kind]] = None
        init.pop(kind, None)
    internal = {k: remap.get(v, v) for k, v in internal_inputs(base, by_name).items()
                if k == "teacher" or k.removeprefix("init_") in init}
    for key, upstream in internal.items():
        cfg.inputs[key] = by_name[upstream].out_dir.as_posix()
    for kind, key in INIT_KEYS.items():
        if key in internal:
            init[kind] = internal[key]
    teacher = internal.get("teacher", base.teacher)
    cfg.stage.name = name
    stage = PlannedStage(name, base.kind, base.rung, cfg, "", base.out_dir, teacher=teacher,
                         teacher_rung=base.teacher_rung, init=init, depends_on=list(dict.fromkeys(internal.values())),
                         bootstrap=base.bootstrap, tags=dict(tags or {}))  # fmt: skip
    stage.fingerprint = _fingerprint(stage, by_name, internal)
    stage.out_dir = plan.runs_dir / plan.experiment / f"{name}-{stage.fingerprint}"
    stage.cfg.out_dir = stage.out_dir.as_posix()
    return stage


class FlopsOf:
    """Training FLOPs of planned stages by the cost model (``scaling.ladder.estimate``), cached."""

    def __init__(self, by_name: Mapping[str, PlannedStage]):
        self.by_name = by_name
        self._cache: dict[str, float] = {}

    def __call__(self, name: str) -> float:
        if name not in self._cache:
            self._cache[name] = float(stage_estimate(self.by_name[name])["train_flops"])
        return self._cache[name]

    def upstream(self, name: str) -> list[str]:
        """Every planned stage whose output ``name`` reads, directly or not (each once)."""
        out: list[str] = []
        todo = list(self.by_name[name].depends_on)
        while todo:
            dep = todo.pop()
            if dep not in out:
                out.append(dep)
                todo += self.by_name[dep].depends_on
        return out

    def inherited(self, name: str) -> float:
        """FLOPs of the stages whose weights ``name`` starts from, directly or not."""
        return sum(self(d) for d in self.upstream(name))
