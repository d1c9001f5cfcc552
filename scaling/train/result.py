"""What a stage hands back to its caller (torch-free, so launchers can import it cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageResult:
    status: str  # finished | preempted
    steps: int
    samples_seen: int
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str = ""  # the newest complete checkpoint folder
    out_dir: str = ""
