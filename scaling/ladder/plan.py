"""Turn a ladder file + ``--from/--to/--via`` + overrides into an ordered list of stages.

Nothing here touches the disk beyond reading configs and stage state files, imports torch, or
talks to MLflow: a plan (and its dry run) is cheap and has no side effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaling import config_provenance as provenance
from scaling.batching import apply_auto_micro_batch
from scaling.config import (
    ConfigError,
    fingerprint,
    load_stage_config,
    merge,
    parse_overrides,
)
from scaling.config_bounds import check_name, check_uri
from scaling.kinds import split_stage_name
from scaling.ladder.overrides import Overrides, split_overrides
from scaling.ladder.spec import LadderSpec, load_ladder
from scaling.models.registry import configured_rung
from scaling.stage_state import newest_finished, read_state
from scaling.stages import BOOTSTRAP_ARM, stage_name

TEACHER_KEY = "ladder.teacher_checkpoint"


@dataclass
class PlannedStage:
    name: str  # "mim@18B"
    kind: str
    rung: str  # ladder key
    cfg: DictConfig
    fingerprint: str
    out_dir: Path
    teacher: str | None = None  # stage name or checkpoint path (mim)
    teacher_rung: str | None = None
    init: dict[str, str] = field(default_factory=dict)  # clip: {"vision": ..., "text": ...}
    depends_on: list[str] = field(default_factory=list)
    bootstrap: bool = False  # the --from rung's CLIP trained from scratch (proxy ladders)
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow tags (not fingerprinted), e.g. a study's arm

    def state(self) -> dict[str, Any]:
        return read_state(self.out_dir)


@dataclass
class Plan:
    ladder: LadderSpec
    path: list[str]  # rung keys, --from first
    proxy: bool
    experiment: str
    runs_dir: Path
    stages: list[PlannedStage]
    teacher_source: str  # "checkpoint" | "ladder" | "bootstrap" | "missing"
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


def _ladder_trained_clip(runs_dir: Path, experiment: str, rung: str, proxy: bool) -> Path | None:
    """Out_dir of this experiment's newest finished ``clip@rung`` stage, if any."""
    return newest_finished(runs_dir, stage_name("clip", rung), experiment, proxy)


def _stage_config(spec: LadderSpec, overrides: Overrides, kind: str, rung: str, proxy: bool,
                  wiring: dict[str, Any], text_from_scratch: bool = False) -> DictConfig:
    name = stage_name(kind, rung)
    cfg = load_stage_config(kind, rung, proxy=proxy)
    # Plain assignments (typed, but no merge + validate round): the dry run must stay fast.
    for dotted, value in _dotted(wiring):
        OmegaConf.update(cfg, dotted, value, merge=False)
    provenance.record(wiring, "ladder plan (folders, tracking, inputs)")
    sections = ("config", "proxy") if proxy else ("config",)
    if text_from_scratch:  # before the ladder's own layers and the command line, which may change it
        for section in sections:
            layer = spec.text_from_scratch.get(section)
            if layer:
                cfg = merge(cfg, layer, f"{spec.path}: text_from_scratch.{section}")
    for section in sections:
        for target in ("all", kind, name):
            layer = spec.layers.get(section, {}).get(target)
            if layer:
                cfg = merge(cfg, layer, f"{spec.path}: {section}.{target}")
    for group in overrides.for_stage(kind, [name]):
        cfg = merge(cfg, parse_overrides(group), "command line")
    cfg.stage.kind, cfg.stage.rung, cfg.stage.proxy, cfg.stage.name = kind, rung, proxy, name
    return cfg


def _dotted(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.extend(_dotted(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            out.append((f"{prefix}{key}", value))
    return out


def _identity(cfg: DictConfig, internal: dict[str, str]) -> dict[str, Any]:
    """The config as fingerprinted: inputs made by this plan named by stage, not by folder."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key, stage in internal.items():
        data["inputs"][key] = f"stage:{stage}"  # type: ignore[index]
    return data  # type: ignore[return-value]


def _text_trunk(rung: str, proxy: bool, text_overrides: Any = None) -> dict[str, Any] | None:
    """The rung's text tower as a stage builds it (``model.text`` overrides applied), without
    the projection width (a stage re-initialises a projection of another width); None: no text tower."""
    text = OmegaConf.to_container(text_overrides, resolve=True) if text_overrides else None
    spec = configured_rung(rung, proxy, text=text)
    return None if spec.text is None else {**asdict(spec.text), "embed_dim": None}


def _text_init(spec: LadderSpec, entry, teacher_rung: str, clip_of: dict[str, str | None],
               proxy: bool, text_of: dict[str, Any]) -> tuple[str | None, str]:
    """(what initialises ``entry``'s CLIP text tower, or None for scratch; why, when None).
    ``text_of``: the ``model.text`` overrides of each planned CLIP stage, and of ``entry``'s."""
    kind = entry.text_init_kind(spec.keys())
    where = f"{spec.path}: rungs.{entry.key}.text_init"
    if kind == "scratch":
        return None, "the ladder file gives no text_init"
    if kind == "checkpoint":
        if not Path(entry.text_init).expanduser().exists():
            raise ConfigError(f"{where}: checkpoint {entry.text_init} does not exist; give the CLIP (or text "
                              "tower) checkpoint, or null to train the text tower from scratch")
        return str(Path(entry.text_init).expanduser().resolve()), ""
    source = teacher_rung if kind == "teacher" else entry.text_init
    if source not in clip_of:
        raise ConfigError(f"{where}: '{source}' has no CLIP on this path ({' -> '.join(clip_of)}); "
                          "give a checkpoint path instead")
    if clip_of[source] is None:
        return None, f"{source} trains no CLIP stage"
    mine = _text_trunk(entry.key, proxy, text_of.get(stage_name("clip", entry.key)))
    theirs = _text_trunk(source, proxy, text_of.get(clip_of[source]))
    if mine is None or mine != theirs:
        return None, f"{source}'s has another shape"
    return clip_of[source], ""


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
    stage_names = [stage_name(k, r) for r in path[1:] for k in entries[r].stages]
    first = path[0]
    notes: list[str] = []

    # Where the --from rung's CLIP comes from.
    teacher_ckpt: str | None = None
    if spec.teacher_checkpoint:
        ckpt = Path(spec.teacher_checkpoint).expanduser()
        if not ckpt.exists():
            raise ConfigError(f"{TEACHER_KEY}: {spec.teacher_checkpoint} does not exist; give the "
                              f"{first} CLIP checkpoint (a stage out_dir, checkpoint folder or file)")
        source, teacher_ckpt = "checkpoint", str(ckpt.resolve())
    elif not proxy and (found := _ladder_trained_clip(runs, experiment, first, proxy)) is not None:
        # (a proxy plan keeps its bootstrap stage: finished, it is skipped by fingerprint)
        source, teacher_ckpt = "ladder", str(found)
        notes.append(f"teacher clip@{first}: this ladder's finished stage {found}")
    elif proxy:
        source = "bootstrap"
        stage_names.insert(0, f"clip@{first}")
        notes.append(f"no {first} CLIP checkpoint: the proxy ladder trains clip@{first} from scratch first")
    elif allow_missing_teacher:
        source = "missing"
        notes.append(f"missing teacher checkpoint: set {TEACHER_KEY}=PATH (the {first} CLIP) to run this plan")
    else:
        raise ConfigError(
            f"missing teacher checkpoint: no {first} CLIP for mim@{path[1]}; set "
            f"{TEACHER_KEY}=PATH (an EVA-CLIP {first} checkpoint) or train clip@{first} with this ladder first"
        )

    # Stage-targeted overrides must hit a stage of this plan.
    targeted = {}
    for typed, items in split.by_stage.items():
        kind, rung = split_stage_name(typed)
        name = stage_name(kind, spec.rung(rung).key)
        if name not in stage_names:
            raise ConfigError(f"command line: '{typed}.…' targets no stage of this plan; "
                              f"stages: {', '.join(stage_names)}")
        targeted.setdefault(name, []).extend(items)
    split.by_stage = targeted

    placement = {"out_dir": "", "tracking": {"experiment": experiment}}
    if tracking_uri:
        placement["tracking"]["uri"] = tracking_uri
    stages: list[PlannedStage] = []
    by_name: dict[str, PlannedStage] = {}
    # clip@<rung> outputs: stage name (planned) or checkpoint path (external).
    clip_of: dict[str, str | None] = {first: teacher_ckpt}
    if source == "missing":
        clip_of[first] = f"<{TEACHER_KEY}>"  # shown by the dry run; never dispatched

    def add(kind: str, rung: str, wiring: dict[str, Any], internal: dict[str, str], scratch: bool = False,
            **info: Any) -> PlannedStage:
        inputs = {key: (by_name[v].out_dir.as_posix() if v in by_name else v) for key, v in wiring.items()}
        extra = {**placement, "inputs": inputs}
        if info.get("teacher_rung"):
            extra["stage"] = {"teacher_rung": info["teacher_rung"]}
        cfg = _stage_config(spec, split, kind, rung, proxy, extra, text_from_scratch=scratch)
        name = stage_name(kind, rung)
        note = apply_auto_micro_batch(cfg, info.get("teacher_rung"))
        if note:
            notes.append(note)
        elif cfg.resources.micro_batch == "auto" and cfg.train.micro_batch is not None:
            provenance.record({"train": {"micro_batch": cfg.train.micro_batch}},
                              "resources.micro_batch=auto (ladder plan)")
        upstream = [by_name[s].fingerprint for s in dict.fromkeys(internal.values())]
        fp = fingerprint(_identity(cfg, internal), upstream)
        out_dir = runs / experiment / f"{name}-{fp}"
        cfg.out_dir = out_dir.as_posix()
        provenance.record({"out_dir": cfg.out_dir}, "ladder plan (runs dir, stage and fingerprint)")
        stage = PlannedStage(name, kind, rung, cfg, fp, out_dir,
                             depends_on=list(dict.fromkeys(internal.values())), **info)
        stages.append(stage)
        by_name[name] = stage
        return stage

    if source == "bootstrap":
        boot = add("clip", first, {}, {}, scratch=True, bootstrap=True, init={"text": "scratch"})
        # trained from scratch, not from a MIM stage: another recipe than the stages a law is fitted on
        boot.tags["arm"] = BOOTSTRAP_ARM
        notes.append(f"clip@{first}: text tower trained from scratch (bootstrap) at text lr "
                     f"{boot.cfg.optim.text_lr:g}, layer decay {boot.cfg.optim.text_layer_decay:g}")
        clip_of[first] = f"clip@{first}"
    for teacher_rung, rung in zip(path, path[1:], strict=False):
        teacher = clip_of.get(teacher_rung)
        if teacher is None and source != "missing":
            raise ConfigError(f"{spec.path}: rungs.{teacher_rung}.stages has no clip stage, but "
                              f"{teacher_rung} teaches {rung} on this path")
        internal_teacher = {"teacher": teacher} if teacher in by_name else {}
        mim_name = None
        if "mim" in entries[rung].stages:
            wiring = {"teacher": teacher} if teacher else {}
            add("mim", rung, wiring, internal_teacher, teacher=teacher, teacher_rung=teacher_rung)
            mim_name = f"mim@{rung}"
            named = entries[rung].teacher
            if named and named != teacher_rung:
                notes.append(f"mim@{rung}: taught by {teacher_rung}'s CLIP as this path asks; the ladder "
                             f"file names {named} as its MIM teacher")
        if "clip" in entries[rung].stages:
            wiring, internal = {}, {}
            if mim_name:
                wiring["init_vision"] = internal["init_vision"] = mim_name
            # the text shape the stage will have (ladder layers and command line included); looked up
            # by the CLIP stage names of clip_of only
            text_of = {name: st.cfg.model.text for name, st in by_name.items()}
            text_of[stage_name("clip", rung)] = _stage_config(spec, split, "clip", rung, proxy, {}).model.text
            text_init, why = _text_init(spec, entries[rung], teacher_rung, clip_of, proxy, text_of)
            if text_init:
                wiring["init_text"] = text_init
                if text_init in by_name:
                    internal["init_text"] = text_init
            init = {"vision": mim_name, "text": text_init or "scratch"}
            stage = add("clip", rung, wiring, internal, scratch=text_init is None,
                        init={k: v for k, v in init.items() if v})
            if text_init is None:
                notes.append(f"clip@{rung}: text tower trained from scratch ({why}) at text lr "
                             f"{stage.cfg.optim.text_lr:g}, layer decay {stage.cfg.optim.text_layer_decay:g} "
                             "(the ladder file's text_from_scratch)")
            clip_of[rung] = f"clip@{rung}"
        else:
            clip_of[rung] = None
    return Plan(spec, path, proxy, experiment, runs, stages, source, teacher_ckpt, notes)
