"""Ladder files (``experiments/ladders/*.yaml``): rungs, how their stages connect, stage-config layers.

A ladder file loads as a typed config (``LadderFile``, OmegaConf structured): unknown keys and
wrong types fail with the file and the dotted key, close matches suggested, as stage configs
do. ``ladder.key=value`` on the command line is one more layer on top. What the types cannot
say (rungs that exist, teachers above their students, layer targets, the layers' own stage-config
keys) is checked after the merge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from scaling.config import schema
from scaling.config_dialect import (
    ConfigError,
    key_message,
    load_structured,
    load_yaml,
    merge_layer,
    parse_overrides,
)
from scaling.kinds import kind_names, split_stage_name
from scaling.ladder.wiring import StageWiring, parse_wiring
from scaling.models.registry import UnknownRungError, get_rung
from scaling.paths import DEFAULT_LADDER, LADDERS_DIR
from scaling.stages import ALL, LADDER_SCOPE, LAW_METRIC

LAYER_SECTIONS = ("config", "proxy")
TEXT_FROM_TEACHER = "teacher"  # text_init: the CLIP of the rung that taught this rung's MIM stage


@dataclass
class RungFields:
    """One entry of ``rungs:``."""

    teacher: Optional[str] = None  # ladder key of the rung whose CLIP teaches this rung's MIM stage
    stages: Optional[list[str]] = None  # what the rung trains; None: every stage of the file's ``stages``
    text_init: Optional[str] = TEXT_FROM_TEACHER  # 'teacher' | a rung above | a checkpoint | null (scratch)


@dataclass
class TextFromScratchFields:
    config: dict[str, Any] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)


@dataclass
class LadderFile:
    """Schema of a ladder file (see ``experiments/ladders/eva.yaml`` for what each key means)."""

    name: Optional[str] = None  # default: the file's stem
    experiment: Optional[str] = None  # default: ladder-<name>
    rungs: dict[str, Optional[RungFields]] = field(default_factory=dict)  # in ladder order
    # kind -> {input key: source}, in the order a rung trains them (scaling.ladder.wiring)
    stages: dict[str, Optional[dict[str, str]]] = field(default_factory=dict)
    teacher_checkpoint: Optional[str] = None
    law_metric: Optional[str] = None  # default: scaling.stages.LAW_METRIC
    # target ('all' | kind | 'kind@rung') -> stage-config keys; 'proxy' applies to proxy ladders only
    config: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)
    proxy: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)
    text_from_scratch: Optional[TextFromScratchFields] = field(default_factory=TextFromScratchFields)


@dataclass
class RungEntry:
    key: str  # as written in the ladder file, e.g. "18B"
    canonical: str  # the registry's full name
    teacher: str | None = None  # ladder key of the teacher rung
    stages: tuple[str, ...] = ()  # what the rung trains (a subset of the file's ``stages``)
    # where the rung's CLIP text tower starts: "teacher", a rung of the ladder (its CLIP), a
    # checkpoint path, or None (from scratch, with the ladder's text_from_scratch layer)
    text_init: str | None = TEXT_FROM_TEACHER

    def text_init_kind(self, keys: Sequence[str]) -> str:
        """'teacher' | 'rung' | 'checkpoint' | 'scratch'."""
        if self.text_init is None:
            return "scratch"
        if self.text_init == TEXT_FROM_TEACHER:
            return "teacher"
        return "rung" if self.text_init in keys else "checkpoint"


@dataclass
class LadderSpec:
    path: Path
    name: str
    experiment: str
    rungs: list[RungEntry]
    wiring: dict[str, StageWiring] = field(default_factory=dict)  # kind -> its inputs, in training order
    teacher_checkpoint: str | None = None
    law_metric: str = LAW_METRIC  # the CLIP metric the report fits against compute
    # section ("config" | "proxy") -> target ("all" | kind | "kind@rung") -> stage-config mapping
    layers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # section ("config" | "proxy") -> stage-config mapping for a clip stage whose text tower
    # starts from scratch (a from-scratch text lr, never a fine-tuning one)
    text_from_scratch: dict[str, dict[str, Any]] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return [r.key for r in self.rungs]

    def rung(self, name: str) -> RungEntry:
        """The ladder rung called ``name`` (alias or full name, any case)."""
        try:
            canonical = get_rung(name).name
        except UnknownRungError as exc:
            raise ConfigError(str(exc)) from None
        for entry in self.rungs:
            if entry.canonical == canonical:
                return entry
        raise ConfigError(
            f"rung '{name}' is not on ladder '{self.name}' ({self.path}); its rungs: {', '.join(self.keys())}"
        )

    def index(self, name: str) -> int:
        return self.keys().index(self.rung(name).key)


def _fail(path: Path, key: str, why: str) -> ConfigError:
    return ConfigError(key_message(str(path), key, why))


def _rungs(path: Path, raw: Mapping[str, Any], trained: Sequence[str]) -> list[RungEntry]:
    if not raw:
        raise _fail(path, "rungs", "must map rung names to {teacher: RUNG, stages: [mim, clip]}")
    entries = []
    for key, body in raw.items():
        try:
            canonical = get_rung(key).name
        except UnknownRungError as exc:
            raise _fail(path, f"rungs.{key}", f"is not a known rung: {exc}") from None
        body = body or {}
        stages = tuple(body.get("stages") or trained)
        bad = [s for s in stages if s not in trained]
        if bad:
            raise _fail(path, f"rungs.{key}.stages", f"has stage kind(s) {bad} that 'stages' does not wire; "
                        f"use {', '.join(trained)}")
        text_init = body.get("text_init", TEXT_FROM_TEACHER)
        entries.append(RungEntry(key, canonical, body.get("teacher"), stages, text_init or None))
    keys = [e.key for e in entries]
    for entry in entries:
        if entry.teacher is not None:
            if entry.teacher not in keys:
                raise _fail(path, f"rungs.{entry.key}.teacher",
                            f"'{entry.teacher}' is not a rung of this ladder ({', '.join(keys)})")
            if keys.index(entry.teacher) >= keys.index(entry.key):
                raise _fail(path, f"rungs.{entry.key}.teacher",
                            f"'{entry.teacher}' must come before {entry.key} in 'rungs'")
        if entry.text_init_kind(keys) == "rung" and keys.index(entry.text_init) >= keys.index(entry.key):
            raise _fail(path, f"rungs.{entry.key}.text_init",
                        f"'{entry.text_init}' must come before {entry.key} in 'rungs'")
        if entry.text_init_kind(keys) == "checkpoint" and "/" not in entry.text_init \
                and not Path(entry.text_init).suffix:
            raise _fail(path, f"rungs.{entry.key}.text_init", f"'{entry.text_init}' is neither 'teacher', a rung "
                        f"of this ladder ({', '.join(keys)}), a checkpoint path, nor null (from scratch)")
    return entries


def _check_layer(path: Path, where: str, layer: Mapping[str, Any], base: DictConfig) -> dict[str, Any]:
    """A layer's keys and types against the stage-config schema ``base`` (values are checked per stage)."""
    if layer:
        merge_layer(base, layer, f"{path}: {where}")  # merge copies ``base``: one serves every layer
    return dict(layer)


def _layers(path: Path, data: Mapping[str, Any], base: DictConfig) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for section in LAYER_SECTIONS:
        out[section] = {}
        for target, layer in (data.get(section) or {}).items():
            if target not in (ALL, *kind_names()) and split_stage_name(target) is None:
                raise _fail(path, f"{section}.{target}", f"must be '{ALL}', a stage kind ({', '.join(kind_names())}) "
                            "or a stage like 'clip@18B'")
            out[section][target] = _check_layer(path, f"{section}.{target}", layer or {}, base)
    return out


def parse_ladder(data: Mapping[str, Any], path: Path) -> LadderSpec:
    """A ``LadderSpec`` from a merged ``LadderFile`` (as a plain container)."""
    wiring = parse_wiring(path, data.get("stages"))
    rungs = _rungs(path, data.get("rungs") or {}, list(wiring))
    name = str(data.get("name") or path.stem)
    scratch = data.get("text_from_scratch") or {}
    base = schema()
    return LadderSpec(
        path=path,
        name=name,
        experiment=str(data.get("experiment") or f"ladder-{name}"),
        rungs=rungs,
        wiring=wiring,
        teacher_checkpoint=data.get("teacher_checkpoint") or None,
        law_metric=_law_metric(path, data.get("law_metric")),
        layers=_layers(path, data, base),
        text_from_scratch={k: _check_layer(path, f"text_from_scratch.{k}", v or {}, base) for k, v in scratch.items()},
    )


def _law_metric(path: Path, value: Any) -> str:
    if value is None:
        return LAW_METRIC
    if not str(value).startswith("eval/"):
        raise ConfigError(f"{path}: 'law_metric' must name a CLIP stage's evaluation metric (e.g. {LAW_METRIC} "
                          f"or eval/synth_cls/loss), got '{value}'")
    return str(value)


def load_ladder(path: str | Path | None = None, overrides: Sequence[str] = ()) -> LadderSpec:
    """Read and validate a ladder file; ``overrides`` are ``key=value`` for its top level."""
    path = Path(path) if path else DEFAULT_LADDER
    if not path.is_file() and not path.suffix and (LADDERS_DIR / f"{path}.yaml").is_file():
        path = LADDERS_DIR / f"{path}.yaml"  # --ladder eva
    layers = [(load_yaml(path), str(path))]
    if overrides:
        layers.append((parse_overrides(overrides), "command line"))
    cfg = load_structured(LadderFile, layers, prefixes=["", f"{LADDER_SCOPE}."])
    return parse_ladder(OmegaConf.to_container(cfg, resolve=True), path)  # type: ignore[arg-type]
