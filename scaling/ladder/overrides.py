"""Command-line ``key=value`` overrides and the stages they target.

* ``optim.lr=1e-4``: every stage;
* ``mim.optim.lr=1e-4`` / ``clip.train.samples=5000``: every stage of that kind;
* ``clip@18B.train.samples=5000``: that stage only;
* ``ladder.teacher_checkpoint=PATH``: the ladder file's own settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scaling.config import ConfigError

KINDS = ("mim", "clip")


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


def split_overrides(items: Sequence[str]) -> Overrides:
    """Sort ``key=value`` items by target; malformed items raise ``ConfigError``."""
    out = Overrides()
    bad = [o for o in items if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(
            f"command line: overrides must look like key=value (e.g. train.samples=5000, "
            f"clip@18B.optim.lr=1e-4), got: {' '.join(bad)}"
        )
    for item in items:
        key, value = item.split("=", 1)
        head, dot, rest = key.partition(".")
        if head == "ladder":
            if not rest:
                raise ConfigError(f"command line: '{item}' names no ladder setting (e.g. ladder.teacher_checkpoint=PATH)")
            out.ladder.append(f"{rest}={value}")
        elif head in KINDS and dot:
            out.by_kind.setdefault(head, []).append(f"{rest}={value}")
        elif "@" in head:
            kind, _, rung = head.partition("@")
            if kind not in KINDS or not rung or not rest:
                raise ConfigError(
                    f"command line: '{item}': a stage override looks like clip@18B.train.samples=5000 "
                    f"(kind one of {', '.join(KINDS)})"
                )
            out.by_stage.setdefault(head, []).append(f"{rest}={value}")
        else:
            out.common.append(item)
    return out
