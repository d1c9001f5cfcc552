"""Sweep files: schema, loading and validation.

A sweep file says what one trial runs (the *base*: a stage pipeline at a rung, or a plain
function for tests and custom objectives), what varies (the search space), how Optuna samples
and prunes, what is optimised, and how many workers run it. Everything that can be wrong in it
is checked here, before any worker is submitted, and reported as one ``SweepError`` naming the
file and the key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scaling.paths import SWEEPS_DIR
from scaling.sweep.errors import SweepError
from scaling.sweep.pipeline import check_param_keys

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")
EXECUTORS = ("auto", "local", "slurm", "debug")
PARAM_TYPES = ("float", "int", "categorical", "fixed")
DIRECTIONS = ("maximize", "minimize")

# Metric names the stages log through their MetricLogger (rank 0), by stage kind. An objective
# must be one of these (or a ``cost/`` metric the runner computes), so a typo fails now instead
# of after the first trial trained for an hour.
STAGE_METRICS: dict[str, tuple[str, ...]] = {
    "mim": ("train/loss", "train/grad_norm", "train/samples_seen", "train/samples_per_s",
            "train/flops_per_s", "train/mfu", "train/step", "train/lr/vision", "train/lr/head",
            "data/skipped", "eval/mim/loss"),
    "clip": ("train/loss", "train/grad_norm", "train/samples_seen", "train/samples_per_s",
             "train/flops_per_s", "train/mfu", "train/step", "train/lr/vision", "train/lr/text",
             "train/lr/logit_scale", "train/temperature", "data/skipped",
             "eval/synth_cls/top1", "eval/synth_cls/top5", "eval/synth_cls/chance_top1",
             "eval/synth_ret/image_r1", "eval/synth_ret/image_r5", "eval/synth_ret/image_r10",
             "eval/synth_ret/text_r1", "eval/synth_ret/text_r5", "eval/synth_ret/text_r10"),
}  # fmt: skip
# Computed by the runner from the trial's resolved configs (scaling.costs), not logged by a stage.
COST_METRICS = ("cost/train_flops", "cost/params")

_TOP_KEYS = {
    "name", "description", "base", "search_space", "sampler", "pruner", "objectives", "report",
    "n_trials", "workers", "timeout_min", "executor", "storage", "workdir", "tracking",
    "heartbeat_s", "stale_after_s", "max_retry", "max_failures", "resources",
}  # fmt: skip
_BASE_KEYS = {"kind", "stages", "rung", "proxy", "files", "overrides", "stage_overrides",
              "teacher", "function"}


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
    metric: str
    direction: str
    stage: str | None = None  # the stage that logs it (None: cost metric or function base)

    @property
    def key(self) -> str:
        """The metric's name in the trial's MLflow run."""
        return f"{self.stage}/{self.metric}" if self.stage else self.metric


@dataclass
class Teacher:
    rung: str | None = None
    checkpoint: str | None = None
    overrides: list[str] = field(default_factory=list)
    proxy: bool | None = None


@dataclass
class Base:
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
class SweepSpec:
    path: Path
    name: str
    base: Base
    params: list[Param]
    objectives: list[Objective]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    report: list[str] = field(default_factory=list)
    n_trials: int = 10
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
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    teacher_path: str | None = None  # set by the runner: the teacher every trial of the study uses

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def work_dir(self) -> Path:
        return Path(self.workdir) if self.workdir else Path("runs") / "sweeps" / self.name

    def storage_label(self) -> str:
        """``storage_url()`` without a password: what logs, tags and messages show."""
        return re.sub(r"(://[^/:@]+):[^/@]*@", r"\1:***@", self.storage_url())

    def storage_url(self) -> str:
        """The Optuna storage: an RDB URL, or a journal file (``*.journal``, the default)."""
        if self.storage:
            return self.storage
        return str(self.work_dir() / "study.journal")

    @property
    def experiment(self) -> str:
        return str(self.tracking.get("experiment") or f"sweep-{self.name}")


def find_sweep_file(path: str | Path) -> Path:
    """``path`` as given, or a name under ``sweeps/`` (with or without ``.yaml``)."""
    candidates = [Path(path), SWEEPS_DIR / str(path), SWEEPS_DIR / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SweepError(f"sweep file not found: {path} (looked in the working directory and {SWEEPS_DIR})")


def _apply_cli(raw: dict[str, Any], overrides: Sequence[str], where: str) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise SweepError(f"command line: expected key=value (e.g. n_trials=4), got '{item}'")
        key, _, text = item.partition("=")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        top = parts[0]
        if top == "search_space" and len(parts) > 1:
            # Parameter names hold dots themselves (model.vision.norm): the rest is one key.
            parts = [top, key[len(top) + 1:]]
        if top not in _TOP_KEYS:
            close = difflib.get_close_matches(top, sorted(_TOP_KEYS), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise SweepError(f"command line: unknown sweep key '{key}' for {where}.{hint}")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise SweepError(f"{where}: {msg}")


def _parse_param(name: str, entry: Any, where: str) -> Param:
    at = f"{where}: search_space.{name}"
    if isinstance(entry, list):  # shorthand: a list of choices
        entry = {"type": "categorical", "choices": entry}
    elif not isinstance(entry, dict):  # shorthand: a fixed value
        entry = {"type": "fixed", "value": entry}
    kind = entry.get("type")
    _need(kind in PARAM_TYPES, at, f"'type' must be one of {', '.join(PARAM_TYPES)}; got {kind!r}")
    allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
               "categorical": {"choices"}, "fixed": {"value"}}[kind] | {"type"}
    extra = sorted(set(entry) - allowed)
    _need(not extra, at, f"unknown field(s) {', '.join(extra)} for type {kind}; valid: {', '.join(sorted(allowed))}")
    if kind == "categorical":
        choices = entry.get("choices")
        _need(isinstance(choices, list) and len(choices) > 0, at, "'choices' must be a non-empty list")
        _need(len({repr(c) for c in choices}) == len(choices), at, f"'choices' has duplicates: {choices}")
        return Param(name, kind, choices=tuple(choices))
    if kind == "fixed":
        _need("value" in entry, at, "a fixed parameter needs 'value'")
        return Param(name, kind, value=entry["value"])
    low, high = entry.get("low"), entry.get("high")
    number = int if kind == "int" else (int, float)
    _need(isinstance(low, number) and isinstance(high, number) and not isinstance(low, bool),
          at, f"'low' and 'high' must be {'integers' if kind == 'int' else 'numbers'}; got {low!r}, {high!r}")
    _need(low < high, at, f"empty range: low ({low}) must be < high ({high})")
    log = bool(entry.get("log", False))
    _need(not log or low > 0, at, f"log scale needs low > 0; got low={low}")
    step = entry.get("step")
    _need(step is None or (step > 0 and not log), at, "'step' must be > 0 and cannot be combined with log")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _parse_base(data: Any, where: str) -> Base:
    _need(isinstance(data, dict), where, "'base' must be a mapping (kind/stages + rung, or function)")
    extra = sorted(set(data) - _BASE_KEYS)
    _need(not extra, where, f"unknown key(s) base.{', base.'.join(extra)}; valid: {', '.join(sorted(_BASE_KEYS))}")
    if data.get("function"):
        fn = str(data["function"])
        _need(re.fullmatch(r"[\w.]+:[\w.]+", fn) is not None, where,
              f"base.function must look like 'package.module:callable'; got {fn!r}")
        return Base(function=fn, stages=[])
    stages = data.get("stages") or ([data["kind"]] if data.get("kind") else [])
    _need(bool(stages), where, "base needs 'kind' (mim | clip), 'stages' (e.g. [mim, clip]) or 'function'")
    bad = [s for s in stages if s not in STAGE_METRICS]
    _need(not bad, where, f"unknown stage kind(s) {bad} in base.stages; use mim and/or clip")
    _need(len(set(stages)) == len(stages), where, f"base.stages repeats a stage: {stages}")
    _need(stages in (["mim"], ["clip"], ["mim", "clip"]), where,
          f"base.stages must be [mim], [clip] or [mim, clip]; got {stages}")
    stage_overrides = data.get("stage_overrides") or {}
    _need(isinstance(stage_overrides, dict) and set(stage_overrides) <= set(stages), where,
          f"base.stage_overrides keys must be stages of the pipeline ({', '.join(stages)})")
    teacher = None
    t = data.get("teacher")
    if t is not None:
        _need(isinstance(t, dict) and set(t) <= {"rung", "checkpoint", "overrides", "proxy"}, where,
              "base.teacher must be {rung: R, overrides: [...]} or {checkpoint: PATH}")
        _need(bool(t.get("rung")) != bool(t.get("checkpoint")), where,
              "base.teacher needs exactly one of 'rung' (trained once, before the workers) or 'checkpoint'")
        teacher = Teacher(rung=t.get("rung"), checkpoint=t.get("checkpoint"),
                          overrides=[str(o) for o in t.get("overrides") or []], proxy=t.get("proxy"))
    _need(stages[0] != "mim" or teacher is not None, where,
          "a pipeline starting with mim needs base.teacher (a CLIP rung to train once, or a checkpoint)")
    return Base(
        stages=list(stages),
        rung=str(data.get("rung", "B16")),
        proxy=bool(data.get("proxy", True)),
        files=[str(f) for f in data.get("files") or []],
        overrides=[str(o) for o in data.get("overrides") or []],
        stage_overrides={k: [str(o) for o in v or []] for k, v in stage_overrides.items()},
        teacher=teacher,
    )


def _parse_objectives(data: Any, base: Base, where: str) -> list[Objective]:
    if isinstance(data, (str, dict)):
        data = [data]
    _need(isinstance(data, list) and data, where, "'objectives' must list at least one {metric, direction}")
    out = []
    for i, entry in enumerate(data):
        at = f"{where}: objectives[{i}]"
        if isinstance(entry, str):
            entry = {"metric": entry}
        _need(isinstance(entry, dict) and entry.get("metric"), at, "needs 'metric'")
        extra = sorted(set(entry) - {"metric", "direction", "stage"})
        _need(not extra, at, f"unknown field(s) {', '.join(extra)}; valid: metric, direction, stage")
        direction = entry.get("direction", "maximize")
        _need(direction in DIRECTIONS, at, f"'direction' must be maximize or minimize; got {direction!r}")
        metric, stage = str(entry["metric"]), entry.get("stage")
        if base.function is None and not metric.startswith("cost/"):
            stage = stage or base.stages[-1]
            _need(stage in base.stages, at, f"stage '{stage}' is not in the pipeline {base.stages}")
        out.append(Objective(metric, direction, stage if base.prefixed else None))
        if base.function is None:
            known = COST_METRICS if metric.startswith("cost/") else STAGE_METRICS[stage]
            if metric not in known:
                close = difflib.get_close_matches(metric, known, n=3, cutoff=0.4)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise SweepError(f"{at}: the {stage or 'runner'} stage never logs '{metric}'.{hint} "
                                 f"Known: {', '.join(known)}")
    keys = [o.key for o in out]
    _need(len(set(keys)) == len(keys), where, f"an objective is listed twice: {keys}")
    return out


def _parse_sampler(data: Any, params: list[Param], n_objectives: int, where: str) -> dict[str, Any]:
    data = {"name": data} if isinstance(data, str) else dict(data or {"name": "tpe"})
    name = data.setdefault("name", "tpe")
    _need(name in SAMPLERS, where, f"sampler.name must be one of {', '.join(SAMPLERS)}; got {name!r}")
    if name == "grid":
        bad = [p.name for p in params if p.type not in ("categorical", "fixed")]
        _need(not bad, where, f"the grid sampler needs categorical (or fixed) parameters; not: {', '.join(bad)}")
    if name == "cmaes":
        _need(n_objectives == 1, where, "the cmaes sampler is single-objective; use tpe for several objectives")
    return data


def _parse_pruner(data: Any, n_objectives: int, where: str) -> dict[str, Any]:
    data = {"name": data} if isinstance(data, str) else dict(data or {"name": "none"})
    name = data.setdefault("name", "none")
    _need(name in PRUNERS, where, f"pruner.name must be one of {', '.join(PRUNERS)}; got {name!r}")
    _need(name == "none" or n_objectives == 1, where,
          "Optuna prunes single-objective studies only: set pruner: none for several objectives")
    return data


def grid_size(params: Sequence[Param]) -> int:
    size = 1
    for p in params:
        size *= len(p.choices) if p.type == "categorical" else 1
    return size


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and check a sweep file (plus ``key=value`` overrides); raises ``SweepError``."""
    path = find_sweep_file(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{where}: not valid YAML: {exc}") from None
    _need(isinstance(raw, dict), where, "expected a mapping at the top level")
    extra = sorted(set(raw) - _TOP_KEYS)
    if extra:
        close = {k: difflib.get_close_matches(k, sorted(_TOP_KEYS), n=1) for k in extra}
        hints = "; ".join(f"'{k}' (did you mean '{c[0]}'?)" if c else f"'{k}'" for k, c in close.items())
        raise SweepError(f"{where}: unknown key(s) {hints}; valid: {', '.join(sorted(_TOP_KEYS))}")
    raw = _apply_cli(raw, overrides, where)
    base = _parse_base(raw.get("base"), where)
    space = raw.get("search_space") or {}
    _need(isinstance(space, dict) and space, where, "'search_space' must map parameter names to ranges")
    params = [_parse_param(str(k), v, where) for k, v in space.items()]
    objectives = _parse_objectives(raw.get("objectives"), base, where)
    sampler = _parse_sampler(raw.get("sampler"), params, len(objectives), where)
    pruner = _parse_pruner(raw.get("pruner"), len(objectives), where)
    n_trials = raw.get("n_trials", grid_size(params) if sampler["name"] == "grid" else 10)
    _need(isinstance(n_trials, int) and n_trials > 0, where, f"'n_trials' must be a positive integer; got {n_trials!r}")
    workers = raw.get("workers", 1)
    _need(isinstance(workers, int) and workers > 0, where, f"'workers' must be a positive integer; got {workers!r}")
    executor = raw.get("executor", "auto")
    _need(executor in EXECUTORS, where, f"'executor' must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    spec = SweepSpec(
        path=path,
        name=str(raw.get("name") or path.stem),
        base=base,
        params=params,
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        report=[str(r) for r in raw.get("report") or []],
        n_trials=n_trials,
        workers=workers,
        timeout_min=float(raw.get("timeout_min", 60)),
        executor=executor,
        storage=raw.get("storage"),
        workdir=raw.get("workdir"),
        tracking=dict(raw.get("tracking") or {}),
        heartbeat_s=float(raw.get("heartbeat_s", 10)),
        stale_after_s=float(raw.get("stale_after_s", 60)),
        max_retry=int(raw.get("max_retry", 3)),
        max_failures=raw.get("max_failures"),
        resources=dict(raw.get("resources") or {}),
        description=str(raw.get("description", "")),
        raw=raw,
    )
    _need(spec.stale_after_s > 2 * spec.heartbeat_s, where,
          "'stale_after_s' must exceed twice 'heartbeat_s' (a live trial would be taken for a dead one)")
    _need(re.fullmatch(r"[\w.-]+", spec.name) is not None, where,
          f"'name' may hold letters, digits, '.', '_' and '-' only; got {spec.name!r}")
    storage = spec.storage_url()
    _need(not (storage.startswith("sqlite") and spec.workers > 1), where,
          f"storage '{storage}' is SQLite, which breaks under {spec.workers} parallel workers; "
          "leave 'storage' unset (journal file, safe on NFS) or use a server database URL")
    _need(not storage.startswith("postgres://"), where,
          f"storage '{spec.storage_label()}': the scheme is spelled 'postgresql://' (user@host:port/database)")
    if base.function is None:
        check_param_keys(spec)
    return spec
