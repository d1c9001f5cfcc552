"""Command-line ``key=value`` overrides and the stages they target.

* ``optim.lr=1e-4``: every stage;
* ``mim.optim.lr=1e-4`` / ``clip.train.samples=5000``: every stage of that kind;
* ``clip@18B.train.samples=5000``: that stage only;
* ``ladder.teacher_checkpoint=PATH``: the ladder file's own settings (checked by ``ladder.spec``).

Each scope's items are parsed as an OmegaConf dotlist and merged onto the stage-config schema
here, so an unknown key or a value of the wrong type fails before planning, named as typed
(``clip@18B.optim.lrr``), with close matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scaling.config import schema
from scaling.config_dialect import ConfigError, merge_layer, parse_overrides
from scaling.kinds import kind_names, split_stage_name
from scaling.stages import LADDER_SCOPE


@dataclass
class Overrides:
    common: list[str] = field(default_factory=list)
    by_kind: dict[str, list[str]] = field(default_factory=dict)
    by_stage: dict[str, list[str]] = field(default_factory=dict)  # "kind@rung" as typed
    ladder: list[str] = field(default_factory=list)

    def for_stage(self, kind: str, stage_keys: Sequence[str]) -> list[list[str]]:
        """Override groups for one stage, in precedence order (all, kind, stage)."""
        groups = [self.common, self.by_kind.get(kind, [])]
        groups += [self.by_stage[k] for k in stage_keys if k in self.by_stage]
        return [g for g in groups if g]


def _scope(item: str) -> tuple[str | None, str]:
    """``'clip@18B.train.samples=5'`` -> ``('clip@18B', 'train.samples=5')``; no scope: ``(None, item)``."""
    key, value = item.split("=", 1)
    head, dot, rest = key.partition(".")
    if head == LADDER_SCOPE:
        if not rest:
            raise ConfigError(f"command line: '{item}' names no ladder setting (e.g. ladder.teacher_checkpoint=PATH)")
        return head, f"{rest}={value}"
    if head in kind_names() and dot:
        return head, f"{rest}={value}"
    if "@" in head:
        if split_stage_name(head) is None or not rest:
            raise ConfigError(f"command line: '{item}': a stage override looks like clip@18B.train.samples=5000 "
                              f"(kind one of {', '.join(kind_names())})")
        return head, f"{rest}={value}"
    return None, item


def split_overrides(items: Sequence[str]) -> Overrides:
    """Sort ``key=value`` items by target and check each scope's stage-config keys and types;
    anything wrong raises ``ConfigError`` naming the item as typed."""
    bad = [o for o in items if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(
            f"command line: overrides must look like key=value (e.g. train.samples=5000, "
            f"clip@18B.optim.lr=1e-4), got: {' '.join(bad)}"
        )
    out = Overrides()
    for item in items:
        scope, rest = _scope(item)
        if scope is None:
            out.common.append(rest)
        elif scope == LADDER_SCOPE:
            out.ladder.append(rest)
        elif scope in kind_names():
            out.by_kind.setdefault(scope, []).append(rest)
        else:
            out.by_stage.setdefault(scope, []).append(rest)
    base = schema()
    scoped = [("", out.common), *((f"{k}.", v) for k, v in {**out.by_kind, **out.by_stage}.items())]
    for prefix, group in scoped:
        if group:
            merge_layer(base, parse_overrides(group), "command line", prefix=prefix)
    return out
