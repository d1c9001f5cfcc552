"""How a rung's stages connect, as a ladder file's ``stages:`` section says: per stage kind, in
the order a rung trains them, the ``inputs.*`` it reads and where each comes from.

A source is ``<kind>`` (this rung's stage of that kind), ``<kind>@teacher`` (that stage of the
rung before this one on the plan's path: its teacher rung) or ``<kind>@text_init`` (that stage of
the rung the rung's ``text_init`` names; a text tower of another shape, or none: from scratch).
The kinds (``scaling.kinds``) say which inputs a stage reads and whether it needs a teacher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.config_dialect import ConfigError, key_message
from scaling.kinds import kind_names, stage_kind

THIS_RUNG = "rung"
TEACHER_RUNG = "teacher"  # the rung before this one on the path
TEXT_INIT = "text_init"  # the rung the rung's text_init names (or a checkpoint, or scratch)
EXAMPLE = "stages: {mim: {teacher: clip@teacher}, clip: {init_vision: mim, init_text: clip@text_init}}"


@dataclass(frozen=True)
class Source:
    """Where one input of a stage comes from: the output of stage ``kind`` on rung ``where``."""

    kind: str
    where: str  # THIS_RUNG | TEACHER_RUNG | TEXT_INIT

    def __str__(self) -> str:
        return self.kind if self.where == THIS_RUNG else f"{self.kind}@{self.where}"


@dataclass(frozen=True)
class StageWiring:
    kind: str
    inputs: dict[str, Source]  # inputs.<key> -> its source, in the file's order


def _fail(path: Path, key: str, why: str) -> ConfigError:
    return ConfigError(key_message(str(path), key, why))


def _source(path: Path, key: str, text: Any, before: list[str], kinds: list[str]) -> Source:
    kind, sep, where = str(text).partition("@")
    shape = (f"'{text}' must be <kind> (this rung's stage), <kind>@{TEACHER_RUNG} or <kind>@{TEXT_INIT}, "
             f"with <kind> one of the stages listed here ({', '.join(kinds)})")
    if kind not in kinds or (sep and where not in (TEACHER_RUNG, TEXT_INIT)):
        raise _fail(path, key, shape)
    if not sep and kind not in before:
        raise _fail(path, key, f"'{text}' must name a stage listed before this one ({', '.join(before) or 'none'}): "
                    "a rung trains its stages in this order")
    return Source(kind, where if sep else THIS_RUNG)


def parse_wiring(path: Path, raw: Mapping[str, Any] | None) -> dict[str, StageWiring]:
    """The ``stages:`` section, checked against the registered kinds; kind -> its wiring, in order."""
    if not raw:
        raise _fail(path, "stages", "must list what a rung trains and where each stage's inputs come from, "
                    f"e.g. {EXAMPLE}")
    kinds = list(raw)
    for kind in kinds:
        if kind not in kind_names():
            raise _fail(path, f"stages.{kind}", f"is not a stage kind; use one of {', '.join(kind_names())}")
    out: dict[str, StageWiring] = {}
    for i, kind in enumerate(kinds):
        described = stage_kind(kind)
        inputs = {}
        for key, text in (raw[kind] or {}).items():
            if key not in described.inputs:
                reads = ", ".join(described.inputs) or "no inputs"
                raise _fail(path, f"stages.{kind}.{key}", f"is not an input of a {kind} stage (it reads {reads})")
            inputs[key] = _source(path, f"stages.{kind}.{key}", text, kinds[:i], kinds)
        if described.needs_teacher and "teacher" not in inputs:
            raise _fail(path, f"stages.{kind}",
                        f"a {kind} stage needs a teacher: give it 'teacher: <kind>@{TEACHER_RUNG}'")
        out[kind] = StageWiring(kind, inputs)
    taken = teacher_kinds(out)
    if len(taken) > 1:
        raise _fail(path, "stages", f"take inputs from the stages {', '.join(taken)} of other rungs; the --from rung "
                    "gives one (ladder.teacher_checkpoint): wire one kind across rungs")
    return out


def teacher_kinds(wiring: Mapping[str, StageWiring]) -> list[str]:
    """The kinds whose stages feed another rung's: the --from rung gives (or bootstraps) that stage."""
    return list(dict.fromkeys(s.kind for w in wiring.values() for s in w.inputs.values() if s.where != THIS_RUNG))


def first_taught(wiring: Mapping[str, StageWiring]) -> str | None:
    """The first kind of a rung that reads another rung's stage (what a missing teacher stops)."""
    return next((w.kind for w in wiring.values() if any(s.where != THIS_RUNG for s in w.inputs.values())), None)
