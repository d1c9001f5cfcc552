"""The stages of a plan, added one by one: each one's inputs resolved from the ladder file's
``stages:`` wiring (``scaling.ladder.wiring``), its config assembled and fingerprinted with the
stages it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from scaling import config_provenance as provenance
from scaling.batching import apply_auto_micro_batch
from scaling.config import ConfigError, fingerprint, stage_phases
from scaling.ladder.overrides import Overrides
from scaling.ladder.plan_config import identity, stage_config
from scaling.ladder.plan_text import text_init, text_source_rung
from scaling.ladder.spec import LadderSpec
from scaling.ladder.wiring import TEACHER_RUNG, TEXT_INIT, THIS_RUNG, Source
from scaling.stage_state import read_state
from scaling.stages import BOOTSTRAP_ARM, stage_name

INIT = "init_"  # inputs.init_<tower>: shown as init[<tower>]
SCRATCH = "scratch"


@dataclass
class PlannedStage:
    name: str  # "mim@18B"
    kind: str
    rung: str  # ladder key
    cfg: DictConfig
    fingerprint: str
    out_dir: Path
    teacher: str | None = None  # its inputs.teacher: stage name or checkpoint path (mim)
    teacher_rung: str | None = None
    init: dict[str, str] = field(default_factory=dict)  # its inputs.init_*: clip: {"vision": ..., "text": ...}
    depends_on: list[str] = field(default_factory=list)
    bootstrap: bool = False  # the --from rung's CLIP trained from scratch (proxy ladders)
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow tags (not fingerprinted), e.g. a study's arm

    def state(self) -> dict[str, Any]:
        return read_state(self.out_dir)

    @property
    def samples(self) -> int:
        """The samples the stage trains: whole batches of each phase (``train.samples=12000`` at
        batch 64 trains 187 steps, 11,968 samples), the total its progress counts towards."""
        return sum(p.steps * p.batch_size for p in stage_phases(self.cfg))


class StageBuilder:
    """Adds a plan's stages in order; ``outputs[rung][kind]`` is what a planned rung's stage of
    ``kind`` gives its readers (a planned stage's name, a checkpoint path, or None)."""

    def __init__(self, spec: LadderSpec, overrides: Overrides, proxy: bool, folder: Path,
                 placement: dict[str, Any], notes: list[str]) -> None:
        self.spec, self.overrides, self.proxy, self.folder = spec, overrides, proxy, folder
        self.placement, self.notes = placement, notes
        self.stages: list[PlannedStage] = []
        self.by_name: dict[str, PlannedStage] = {}
        self.outputs: dict[str, dict[str, str | None]] = {}

    def add(self, kind: str, rung: str, wiring: dict[str, Any], internal: dict[str, str], scratch: bool = False,
            **info: Any) -> PlannedStage:
        """``kind@rung`` with ``inputs`` = ``wiring`` (planned stages by name); ``internal``: the
        inputs this plan makes (fingerprinted by their stage's fingerprint, not their folder)."""
        inputs = {key: (self.by_name[v].out_dir.as_posix() if v in self.by_name else v) for key, v in wiring.items()}
        extra = {**self.placement, "inputs": inputs}
        if info.get("teacher_rung"):
            extra["stage"] = {"teacher_rung": info["teacher_rung"]}
        cfg = stage_config(self.spec, self.overrides, kind, rung, self.proxy, extra, text_from_scratch=scratch)
        name = stage_name(kind, rung)
        note = apply_auto_micro_batch(cfg, info.get("teacher_rung"))
        if note:
            self.notes.append(note)
        elif cfg.resources.micro_batch == "auto" and cfg.train.micro_batch is not None:
            provenance.record({"train": {"micro_batch": cfg.train.micro_batch}},
                              "resources.micro_batch=auto (ladder plan)")
        upstream = [self.by_name[s].fingerprint for s in dict.fromkeys(internal.values())]
        fp = fingerprint(identity(cfg, internal), upstream)
        out_dir = self.folder / f"{name}-{fp}"
        cfg.out_dir = out_dir.as_posix()
        provenance.record({"out_dir": cfg.out_dir}, "ladder plan (runs dir, stage and fingerprint)")
        stage = PlannedStage(name, kind, rung, cfg, fp, out_dir, depends_on=list(dict.fromkeys(internal.values())),
                             **info)
        self.stages.append(stage)
        self.by_name[name] = stage
        self.outputs.setdefault(rung, {})[kind] = name
        return stage

    def bootstrap(self, kind: str, rung: str) -> None:
        """``kind@rung`` trained from scratch (its inputs unset), for the plan's first rung."""
        text = [key for key, source in self.spec.wiring[kind].inputs.items() if source.where == TEXT_INIT]
        boot = self.add(kind, rung, {}, {}, scratch=bool(text), bootstrap=True,
                        init={key.removeprefix(INIT): SCRATCH for key in text})
        # trained from scratch, not from a MIM stage: another recipe than the stages a law is fitted on
        boot.tags["arm"] = BOOTSTRAP_ARM
        if text:
            self.notes.append(f"{boot.name}: text tower trained from scratch (bootstrap) at text lr "
                              f"{boot.cfg.optim.text_lr:g}, layer decay {boot.cfg.optim.text_layer_decay:g}")

    def add_wired(self, kind: str, rung: str, teacher_rung: str, teacher_missing: bool) -> None:
        """``kind@rung`` with the inputs the ladder file wires, ``teacher_rung`` before it on the path."""
        wiring: dict[str, str] = {}
        internal: dict[str, str] = {}
        init: dict[str, str] = {}
        info: dict[str, Any] = {}
        scratch_why = None
        for key, source in self.spec.wiring[kind].inputs.items():
            if source.where == TEXT_INIT:
                value, why = self._text(source, rung, teacher_rung)
                scratch_why = why if value is None else scratch_why
            else:
                value = self.outputs[teacher_rung if source.where == TEACHER_RUNG else rung].get(source.kind)
                if value is None and source.where == TEACHER_RUNG and not teacher_missing:
                    raise ConfigError(f"{self.spec.path}: rungs.{teacher_rung}.stages has no {source.kind} stage, "
                                      f"but {teacher_rung} teaches {rung} on this path")
            if key == "teacher":
                info["teacher"] = value
                info["teacher_rung"] = self._from_rung(source, rung, teacher_rung)
            elif key.startswith(INIT) and (value or source.where == TEXT_INIT):
                init[key.removeprefix(INIT)] = value or SCRATCH
            if value:
                wiring[key] = value
                if value in self.by_name:
                    internal[key] = value
        stage = self.add(kind, rung, wiring, internal, scratch=scratch_why is not None, init=init, **info)
        named = self.spec.rung(rung).teacher
        if info.get("teacher_rung") == teacher_rung and named and named != teacher_rung:
            taught = self.spec.wiring[kind].inputs["teacher"].kind.upper()
            self.notes.append(f"{stage.name}: taught by {teacher_rung}'s {taught} as this path asks; the ladder "
                              f"file names {named} as its {kind.upper()} teacher")
        if scratch_why is not None:
            self.notes.append(f"{stage.name}: text tower trained from scratch ({scratch_why}) at text lr "
                              f"{stage.cfg.optim.text_lr:g}, layer decay {stage.cfg.optim.text_layer_decay:g} "
                              "(the ladder file's text_from_scratch)")

    def _from_rung(self, source: Source, rung: str, teacher_rung: str) -> str | None:
        if source.where == THIS_RUNG:
            return rung
        if source.where == TEACHER_RUNG:
            return teacher_rung
        return text_source_rung(self.spec, self.spec.rung(rung), teacher_rung)

    def _text(self, source: Source, rung: str, teacher_rung: str) -> tuple[str | None, str]:
        """The text-tower input of ``source.kind@rung`` (None: from scratch) and why not."""
        kind = source.kind
        made = {r: out.get(kind) for r, out in self.outputs.items() if r != rung}
        # the text shape each stage will have (ladder layers and command line included)
        text_of = {name: st.cfg.model.text for name, st in self.by_name.items()}
        text_of[stage_name(kind, rung)] = stage_config(self.spec, self.overrides, kind, rung, self.proxy, {}).model.text
        return text_init(self.spec, self.spec.rung(rung), kind, teacher_rung, made, self.proxy, text_of)
