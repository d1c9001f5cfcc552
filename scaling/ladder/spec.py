"""Ladder files (``experiments/ladders/*.yaml``): rungs, teacher wiring, stage-config layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scaling.config import ConfigError, load_yaml
from scaling.models.registry import UnknownRungError, get_rung
from scaling.paths import EXPERIMENTS_DIR

LADDERS_DIR = EXPERIMENTS_DIR / "ladders"
DEFAULT_LADDER = LADDERS_DIR / "eva.yaml"
KINDS = ("mim", "clip")
TOP_KEYS = ("name", "experiment", "rungs", "teacher_checkpoint", "config", "proxy", "text_from_scratch")
RUNG_KEYS = ("teacher", "stages", "text_init")
LAYER_SECTIONS = ("config", "proxy")
TEXT_FROM_TEACHER = "teacher"  # text_init: the CLIP of the rung that taught this rung's MIM stage


@dataclass
class RungEntry:
    key: str  # as written in the ladder file, e.g. "18B"
    canonical: str  # the registry's full name
    teacher: str | None = None  # ladder key of the teacher rung
    stages: tuple[str, ...] = KINDS
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
    teacher_checkpoint: str | None = None
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
    return ConfigError(f"{path}: '{key}' {why}")


def _rungs(path: Path, raw: Any) -> list[RungEntry]:
    if not isinstance(raw, Mapping) or not raw:
        raise _fail(path, "rungs", "must map rung names to {teacher: RUNG, stages: [mim, clip]}")
    entries = []
    for key, body in raw.items():
        key = str(key)
        try:
            canonical = get_rung(key).name
        except UnknownRungError as exc:
            raise _fail(path, f"rungs.{key}", f"is not a known rung: {exc}") from None
        body = body or {}
        if not isinstance(body, Mapping):
            raise _fail(path, f"rungs.{key}", "must be a mapping with 'teacher' and/or 'stages'")
        unknown = sorted(set(map(str, body)) - set(RUNG_KEYS))
        if unknown:
            raise _fail(path, f"rungs.{key}.{unknown[0]}", f"is not a rung setting; valid: {', '.join(RUNG_KEYS)}")
        stages = tuple(str(s) for s in (body.get("stages") or KINDS))
        bad = [s for s in stages if s not in KINDS]
        if bad:
            raise _fail(path, f"rungs.{key}.stages", f"has unknown stage kind(s) {bad}; use {', '.join(KINDS)}")
        teacher = body.get("teacher")
        text_init = body.get("text_init", TEXT_FROM_TEACHER)
        entries.append(RungEntry(key, canonical, None if teacher is None else str(teacher), stages,
                                 None if text_init in (None, "") else str(text_init)))
    keys = [e.key for e in entries]
    for entry in entries:
        if entry.teacher is not None:
            if entry.teacher not in keys:
                raise _fail(path, f"rungs.{entry.key}.teacher", f"'{entry.teacher}' is not a rung of this ladder ({', '.join(keys)})")
            if keys.index(entry.teacher) >= keys.index(entry.key):
                raise _fail(path, f"rungs.{entry.key}.teacher", f"'{entry.teacher}' must come before {entry.key} in 'rungs'")
        if entry.text_init_kind(keys) == "rung" and keys.index(entry.text_init) >= keys.index(entry.key):
            raise _fail(path, f"rungs.{entry.key}.text_init", f"'{entry.text_init}' must come before {entry.key} in 'rungs'")
        if entry.text_init_kind(keys) == "checkpoint" and "/" not in entry.text_init \
                and not Path(entry.text_init).suffix:
            raise _fail(path, f"rungs.{entry.key}.text_init", f"'{entry.text_init}' is neither 'teacher', a rung "
                        f"of this ladder ({', '.join(keys)}), a checkpoint path, nor null (from scratch)")
    return entries


def _layers(path: Path, data: Mapping[str, Any], rung_keys: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for section in LAYER_SECTIONS:
        raw = data.get(section) or {}
        if not isinstance(raw, Mapping):
            raise _fail(path, section, "must map 'all', a stage kind or a stage (e.g. clip@18B) to config keys")
        out[section] = {}
        for target, layer in raw.items():
            target = str(target)
            valid = target in ("all", *KINDS) or _is_stage_name(target)
            if not valid:
                raise _fail(path, f"{section}.{target}", "must be 'all', 'mim', 'clip' or a stage like 'clip@18B'")
            if layer is not None and not isinstance(layer, Mapping):
                raise _fail(path, f"{section}.{target}", "must be a mapping of stage-config keys")
            out[section][target] = dict(layer or {})
    return out


def _is_stage_name(text: str) -> bool:
    kind, sep, rung = text.partition("@")
    return bool(sep) and kind in KINDS and bool(rung)


def parse_ladder(data: Mapping[str, Any], path: Path) -> LadderSpec:
    unknown = sorted(set(map(str, data)) - set(TOP_KEYS))
    if unknown:
        raise _fail(path, unknown[0], f"is not a ladder setting; valid: {', '.join(TOP_KEYS)}")
    rungs = _rungs(path, data.get("rungs"))
    name = str(data.get("name") or path.stem)
    scratch = data.get("text_from_scratch") or {}
    if not isinstance(scratch, Mapping) or set(map(str, scratch)) - set(LAYER_SECTIONS) \
            or not all(isinstance(v, Mapping) for v in scratch.values() if v is not None):
        raise _fail(path, "text_from_scratch", "must map 'config' and/or 'proxy' to stage-config keys "
                    "(e.g. {config: {optim: {text_lr: 4.0e-4}}})")
    ckpt = data.get("teacher_checkpoint")
    return LadderSpec(
        path=path,
        name=name,
        experiment=str(data.get("experiment") or f"ladder-{name}"),
        rungs=rungs,
        teacher_checkpoint=None if ckpt in (None, "") else str(ckpt),
        layers=_layers(path, data, [r.key for r in rungs]),
        text_from_scratch={str(k): dict(v or {}) for k, v in scratch.items()},
    )


def load_ladder(path: str | Path | None = None, overrides: Sequence[str] = ()) -> LadderSpec:
    """Read and validate a ladder file; ``overrides`` are ``key=value`` for its top level."""
    path = Path(path) if path else DEFAULT_LADDER
    if not path.is_file() and not path.suffix and (LADDERS_DIR / f"{path}.yaml").is_file():
        path = LADDERS_DIR / f"{path}.yaml"  # --ladder eva
    data = OmegaConf.to_container(load_yaml(path), resolve=True)
    if overrides:
        try:
            extra = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"command line: cannot parse ladder overrides {list(overrides)}: {exc}") from None
        unknown = sorted(set(map(str, extra)) - set(TOP_KEYS))
        if unknown:
            raise ConfigError(
                f"command line: 'ladder.{unknown[0]}' is not a ladder setting; valid: "
                + ", ".join(f"ladder.{k}" for k in TOP_KEYS)
            )
        data = OmegaConf.to_container(OmegaConf.merge(data, extra), resolve=True)
    return parse_ladder(data, path)  # type: ignore[arg-type]
