"""The typed parts of a sweep file and of a loaded sweep: its schema (``SweepFile``), a search-space
entry, an objective, the base a trial runs, and the ``SweepSpec`` the runner and workers read.
Only types (no loading): ``spec`` loads a sweep file into them, ``pipeline`` builds stage configs
from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.uris import mask


@dataclass
class Param:
    """One search-space entry. ``name`` is a config key, optionally ``<stage>.``-prefixed."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None


@dataclass
class Objective:
    metric: str = ""
    direction: str = "maximize"
    # the stage that logs it (default: the pipeline's last; None: cost metric or function base)
    stage: str | None = None

    @property
    def key(self) -> str:
        """The metric's name in the trial's MLflow run."""
        return f"{self.stage}/{self.metric}" if self.stage else self.metric


@dataclass
class Teacher:
    rung: str | None = None  # a CLIP rung trained once, before the workers
    checkpoint: str | None = None  # or a CLIP checkpoint (exactly one of the two)
    overrides: list[str] = field(default_factory=list)
    proxy: bool | None = None  # None: the base's


@dataclass
class Base:
    """What one trial runs: a stage (``kind``) or pipeline (``stages``) at ``rung``, or ``function``."""

    kind: str | None = None
    stages: list[str] = field(default_factory=list)
    rung: str = "B16"
    proxy: bool = True
    files: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)
    teacher: Teacher | None = None
    function: str | None = None

    @property
    def prefixed(self) -> bool:
        """Pipelines log each stage's metrics under ``<stage>/`` in the trial's run."""
        return len(self.stages) > 1


@dataclass
class RunSettings:
    """How a sweep runs and reports: a sweep file's keys that its SweepSpec keeps as written."""

    description: str = ""
    report: list[str] = field(default_factory=list)
    workers: int = 1
    timeout_min: float = 60.0
    executor: str = "auto"
    storage: str | None = None
    workdir: str | None = None
    tracking: dict[str, Any] = field(default_factory=dict)
    heartbeat_s: float = 10.0
    stale_after_s: float = 60.0
    max_retry: int = 3
    max_failures: int | None = None
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepFile(RunSettings):
    """Schema of a sweep file (``sweeps/*.yaml``); shorthands (``sampler: tpe``, ``objectives:
    metric``, a list or a value as a search-space entry) are expanded before the merge."""

    name: str | None = None  # default: the file's stem
    base: Base | None = None
    search_space: dict[str, Any] = field(default_factory=dict)  # parameter -> range (checked by _parse_param)
    sampler: dict[str, Any] = field(default_factory=dict)  # name + the Optuna sampler's options
    pruner: dict[str, Any] = field(default_factory=dict)
    objectives: list[Objective] = field(default_factory=list)
    n_trials: int | None = None  # default: the grid's size for the grid sampler, else 10


AS_WRITTEN = tuple(f.name for f in dataclasses.fields(RunSettings))


@dataclass(kw_only=True)
class SweepSpec(RunSettings):
    """A loaded, checked sweep: what the runner, the workers and ``status`` read."""

    path: Path
    name: str
    base: Base
    params: list[Param]
    objectives: list[Objective]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    n_trials: int = 10
    raw: dict[str, Any] = field(default_factory=dict)
    teacher_path: str | None = None  # set by the runner: the teacher every trial of the study uses

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def work_dir(self) -> Path:
        return Path(self.workdir) if self.workdir else Path("runs") / "sweeps" / self.name

    def storage_label(self) -> str:
        """``storage_url()`` without a password: what logs, tags and messages show."""
        return mask(self.storage_url())

    def storage_url(self) -> str:
        """The Optuna storage: an RDB URL, or a journal file (``*.journal``, the default)."""
        if self.storage:
            return self.storage
        return str(self.work_dir() / "study.journal")

    @property
    def experiment(self) -> str:
        return str(self.tracking.get("experiment") or f"sweep-{self.name}")
