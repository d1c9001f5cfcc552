"""Where the ``--from`` rung's stage comes from (the one its successor reads: the teacher CLIP of
the EVA ladders): a checkpoint, this ladder's finished stage, a bootstrap stage, or missing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scaling.config import ConfigError
from scaling.ladder.spec import LadderSpec
from scaling.ladder.wiring import first_taught, teacher_kinds
from scaling.stage_state import newest_finished
from scaling.stages import stage_name

TEACHER_KEY = "ladder.teacher_checkpoint"


@dataclass
class Origin:
    source: str  # "checkpoint" | "ladder" | "bootstrap" | "missing" | "none" (no rung reads another's)
    kind: str | None = None  # the stage kind the --from rung gives
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)

    def outputs(self) -> dict[str, str | None]:
        """The --from rung's outputs before the plan's stages (a bootstrap stage adds its own)."""
        if self.kind is None:
            return {}
        return {self.kind: f"<{TEACHER_KEY}>" if self.source == "missing" else self.checkpoint}


def origin(spec: LadderSpec, path: list[str], runs: Path, experiment: str, proxy: bool,
           allow_missing: bool) -> Origin:
    """What gives the --from rung's stage, or ``ConfigError`` when nothing can."""
    kinds = teacher_kinds(spec.wiring)
    if not kinds:
        return Origin("none")
    kind, first = kinds[0], path[0]
    label = kind.upper()
    if spec.teacher_checkpoint:
        ckpt = Path(spec.teacher_checkpoint).expanduser()
        if not ckpt.exists():
            raise ConfigError(f"{TEACHER_KEY}: {spec.teacher_checkpoint} does not exist; give the "
                              f"{first} {label} checkpoint (a stage out_dir, checkpoint folder or file)")
        return Origin("checkpoint", kind, str(ckpt.resolve()))
    # (a proxy plan keeps its bootstrap stage: finished, it is skipped by fingerprint)
    if not proxy and (found := newest_finished(runs, stage_name(kind, first), experiment, proxy)) is not None:
        return Origin("ladder", kind, str(found), [f"teacher {kind}@{first}: this ladder's finished stage {found}"])
    if proxy:
        return Origin("bootstrap", kind, None, [f"no {first} {label} checkpoint: the proxy ladder trains "
                                                f"{kind}@{first} from scratch first"])
    if allow_missing:
        return Origin("missing", kind, None, [f"missing teacher checkpoint: set {TEACHER_KEY}=PATH (the {first} "
                                              f"{label}) to run this plan"])
    raise ConfigError(
        f"missing teacher checkpoint: no {first} {label} for {first_taught(spec.wiring)}@{path[1]}; set "
        f"{TEACHER_KEY}=PATH (the {first} {label} checkpoint) or train {kind}@{first} with this ladder first"
    )
