"""Where a planned stage's text tower starts (a ``<kind>@text_init`` input): the stage of the rung
the rung's ``text_init`` names, a checkpoint, or scratch: also when the towers' shapes differ."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from scaling.config import ConfigError
from scaling.ladder.spec import LadderSpec, RungEntry
from scaling.models.registry import configured_rung
from scaling.stages import stage_name


def text_trunk(rung: str, proxy: bool, text_overrides: Any = None) -> dict[str, Any] | None:
    """The rung's text tower as a stage builds it (``model.text`` overrides applied), without
    the projection width (a stage re-initialises a projection of another width); None: no text tower."""
    text = OmegaConf.to_container(text_overrides, resolve=True) if text_overrides else None
    spec = configured_rung(rung, proxy, text=text)
    return None if spec.text is None else {**asdict(spec.text), "embed_dim": None}


def text_source_rung(spec: LadderSpec, entry: RungEntry, teacher_rung: str) -> str | None:
    """The rung whose stage ``entry``'s text_init names (None: a checkpoint, or scratch)."""
    kind = entry.text_init_kind(spec.keys())
    return teacher_rung if kind == "teacher" else entry.text_init if kind == "rung" else None


def text_init(spec: LadderSpec, entry: RungEntry, kind: str, teacher_rung: str, made: dict[str, str | None],
              proxy: bool, text_of: dict[str, Any]) -> tuple[str | None, str]:
    """(what initialises the text tower of ``kind@entry``, or None for scratch; why, when None).
    ``made``: each earlier rung's stage of ``kind`` (None: it trains none); ``text_of``: the
    ``model.text`` overrides of each planned stage, and of ``kind@entry``'s."""
    where = f"{spec.path}: rungs.{entry.key}.text_init"
    how = entry.text_init_kind(spec.keys())
    if how == "scratch":
        return None, "the ladder file gives no text_init"
    if how == "checkpoint":
        if not Path(entry.text_init).expanduser().exists():
            raise ConfigError(f"{where}: checkpoint {entry.text_init} does not exist; give the CLIP (or text "
                              "tower) checkpoint, or null to train the text tower from scratch")
        return str(Path(entry.text_init).expanduser().resolve()), ""
    source = text_source_rung(spec, entry, teacher_rung)
    if source not in made:
        raise ConfigError(f"{where}: '{source}' has no {kind.upper()} on this path ({' -> '.join(made)}); "
                          "give a checkpoint path instead")
    if made[source] is None:
        return None, f"{source} trains no {kind.upper()} stage"
    mine = text_trunk(entry.key, proxy, text_of.get(stage_name(kind, entry.key)))
    theirs = text_trunk(source, proxy, text_of.get(made[source]))
    if mine is None or mine != theirs:
        return None, f"{source}'s has another shape"
    return made[source], ""
