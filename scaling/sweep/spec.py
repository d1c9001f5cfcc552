"""Sweep files: schema, loading and validation.

A sweep file says what one trial runs (the *base*: a stage pipeline at a rung, or a plain
function for tests and custom objectives), what varies (the search space), how Optuna samples
and prunes, what is optimised, and how many workers run it. It loads as a typed config
(``SweepFile``, OmegaConf structured: unknown keys and wrong types name the file and the key,
close matches suggested, as stage configs do); ``key=value`` on the command line is one more
layer. Everything else that can be wrong in it (ranges, samplers, objectives the stages never
log) is checked here, before any worker is submitted, and reported as one ``SweepError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaling.config_dialect import ConfigError, load_structured, load_yaml, parse_overrides, suggest
from scaling.kinds import kind_names, logged_metrics, stage_kind
from scaling.launch.executors import EXECUTORS
from scaling.paths import SWEEPS_DIR
from scaling.stages import COST_METRICS
from scaling.sweep.errors import SweepError
from scaling.sweep.pipeline import base_config, check_param_keys
from scaling.sweep.spec_types import (
    AS_WRITTEN,
    Base,
    Objective,
    Param,
    SweepFile,
    SweepSpec,
    Teacher,
)

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical", "fixed")
DIRECTIONS = ("maximize", "minimize")


def find_sweep_file(path: str | Path) -> Path:
    """``path`` as given, or a name under ``sweeps/`` (with or without ``.yaml``)."""
    candidates = [Path(path), SWEEPS_DIR / str(path), SWEEPS_DIR / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SweepError(f"sweep file not found: {path} (looked in the working directory and {SWEEPS_DIR})")


def _shorthands(layer: Mapping[str, Any]) -> dict[str, Any]:
    """``sampler: tpe`` -> ``{name: tpe}``; ``objectives: m`` / ``[m, {metric: ...}]`` -> a list of mappings."""
    out = dict(layer)
    for key in ("sampler", "pruner"):
        if isinstance(out.get(key), str):
            out[key] = {"name": out[key]}
    objectives = out.get("objectives")
    if objectives is not None:
        if isinstance(objectives, (str, Mapping)):
            objectives = [objectives]
        if isinstance(objectives, (list, tuple)):
            out["objectives"] = [{"metric": o} if isinstance(o, str) else o for o in objectives]
    return out


def _cli_layers(overrides: Sequence[str]) -> tuple[DictConfig, dict[str, Any]]:
    """The command line as a dotlist layer, and the ``search_space.<param>=...`` items apart:
    parameter names hold dots themselves (``model.vision.norm``), and an entry is set whole."""
    space, rest = {}, []
    for item in overrides:
        key, _, text = item.partition("=")
        if key.startswith("search_space.") and text:
            space[key[len("search_space."):]] = OmegaConf.to_container(parse_overrides([f"value={text}"]))["value"]
        else:
            rest.append(item)
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise SweepError(f"command line: expected key=value (e.g. n_trials=4), got '{bad[0]}'")
    layer = parse_overrides(rest) if rest else OmegaConf.create({})
    return OmegaConf.create(_shorthands(OmegaConf.to_container(layer))), space


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


def _parse_base(data: Mapping[str, Any] | None, where: str) -> Base:
    _need(data is not None, where, "'base' must be a mapping (kind/stages + rung, or function)")
    if data.get("function"):
        fn = str(data["function"])
        _need(re.fullmatch(r"[\w.]+:[\w.]+", fn) is not None, where,
              f"base.function must look like 'package.module:callable'; got {fn!r}")
        return Base(function=fn, stages=[])
    stages = data.get("stages") or ([data["kind"]] if data.get("kind") else [])
    kinds = kind_names()
    _need(bool(stages), where,
          f"base needs 'kind' ({' | '.join(kinds)}), 'stages' (e.g. {list(kinds[:2])}) or 'function'")
    bad = [s for s in stages if s not in kinds]
    _need(not bad, where, f"unknown stage kind(s) {bad} in base.stages; use {' and/or '.join(kinds)}")
    _need(len(set(stages)) == len(stages), where, f"base.stages repeats a stage: {stages}")
    # a stage feeds the ones after it (a MIM tower initialises the CLIP): kinds in the order a rung trains them
    _need(stages == sorted(stages, key=kinds.index), where,
          f"base.stages must follow the order {list(kinds)}; got {stages}")
    stage_overrides = data.get("stage_overrides") or {}
    _need(set(stage_overrides) <= set(stages), where,
          f"base.stage_overrides keys must be stages of the pipeline ({', '.join(stages)})")
    teacher = None
    t = data.get("teacher")
    if t is not None:
        _need(bool(t.get("rung")) != bool(t.get("checkpoint")), where,
              "base.teacher needs exactly one of 'rung' (trained once, before the workers) or 'checkpoint'")
        teacher = Teacher(rung=t.get("rung"), checkpoint=t.get("checkpoint"),
                          overrides=list(t.get("overrides") or []), proxy=t.get("proxy"))
    taught = [s for s in stages if stage_kind(s).needs_teacher]
    _need(not taught or teacher is not None, where,
          f"a pipeline with {taught[0] if taught else ''} needs base.teacher "
          "(a CLIP rung to train once, or a checkpoint)")
    return Base(
        stages=list(stages),
        rung=str(data["rung"]),
        proxy=bool(data["proxy"]),
        files=list(data.get("files") or []),
        overrides=list(data.get("overrides") or []),
        stage_overrides={k: list(v or []) for k, v in stage_overrides.items()},
        teacher=teacher,
    )


def _parse_objectives(data: Sequence[Mapping[str, Any]], base: Base, where: str) -> list[Objective]:
    _need(bool(data), where, "'objectives' must list at least one {metric, direction}")
    out = []
    for i, entry in enumerate(data):
        at = f"{where}: objectives[{i}]"
        _need(bool(entry.get("metric")), at, "needs 'metric'")
        direction = entry["direction"]
        _need(direction in DIRECTIONS, at, f"'direction' must be maximize or minimize; got {direction!r}")
        metric, stage = str(entry["metric"]), entry.get("stage")
        if base.function is None and not metric.startswith("cost/"):
            stage = stage or base.stages[-1]
            _need(stage in base.stages, at, f"stage '{stage}' is not in the pipeline {base.stages}")
        out.append(Objective(metric, direction, stage if base.prefixed else None))
    keys = [o.key for o in out]
    _need(len(set(keys)) == len(keys), where, f"an objective is listed twice: {keys}")
    return out


def check_objectives(spec: SweepSpec, configs: Mapping[str, DictConfig]) -> None:
    """Every objective and ``report`` column is a metric its stage logs with the base's resolved
    config ``configs[stage]`` (``scaling.kinds.logged_metrics``: the eval sets it is configured
    with, real ones named after their folder) or a ``cost/`` metric the runner computes."""
    wanted = [(f"objectives[{i}]", o.metric, o.stage) for i, o in enumerate(spec.objectives)]
    for i, item in enumerate(spec.report):  # "stage:metric" or "metric" (the last stage's)
        stage, _, metric = item.rpartition(":")
        wanted.append((f"report[{i}]", metric, stage or None))
    for where, metric, stage in wanted:
        if metric.startswith("cost/"):
            known, who = COST_METRICS, "the runner"
        else:
            stage = stage or spec.base.stages[-1]
            _need(stage in configs, f"{spec.path}: {where}",
                  f"stage '{stage}' is not in the pipeline {spec.base.stages}")
            known, who = logged_metrics(configs[stage]), f"the {stage} stage"
        if metric not in known:
            raise SweepError(f"{spec.path}: {where}: {who} never logs '{metric}'.{suggest(metric, known, 0.4)} "
                             f"Known: {', '.join(known)}")


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
        data = load_yaml(path)
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    cli, space_cli = _cli_layers(overrides)
    cfg = load_structured(SweepFile, [(_shorthands(OmegaConf.to_container(data)), where), (cli, "command line")],
                          error=SweepError)
    raw: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    raw["search_space"].update(space_cli)
    base = _parse_base(raw["base"], where)
    space = raw["search_space"]
    _need(bool(space), where, "'search_space' must map parameter names to ranges")
    params = [_parse_param(str(k), v, where) for k, v in space.items()]
    objectives = _parse_objectives(raw["objectives"], base, where)
    sampler = _parse_sampler(raw["sampler"], params, len(objectives), where)
    pruner = _parse_pruner(raw["pruner"], len(objectives), where)
    n_trials = raw["n_trials"] or (grid_size(params) if sampler["name"] == "grid" else 10)
    _need(n_trials > 0, where, f"'n_trials' must be a positive integer; got {raw['n_trials']!r}")
    _need(raw["workers"] > 0, where, f"'workers' must be a positive integer; got {raw['workers']!r}")
    _need(raw["executor"] in EXECUTORS, where,
          f"'executor' must be one of {', '.join(EXECUTORS)}; got {raw['executor']!r}")
    spec = SweepSpec(
        path=path,
        name=str(raw["name"] or path.stem),
        base=base,
        params=params,
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        **{k: raw[k] for k in AS_WRITTEN},
        raw=raw,
    )
    _need(spec.stale_after_s > 2 * spec.heartbeat_s, where,
          "'stale_after_s' must exceed twice 'heartbeat_s' (a live trial would be taken for a dead one)")
    _need(re.fullmatch(r"[\w.-]+", spec.name) is not None, where,
          f"'name' may hold letters, digits, '.', '_' and '-' only; got {spec.name!r}")
    storage = spec.storage_url()
    _need(not (storage.startswith("sqlite") and spec.workers > 1), where,
          f"storage '{spec.storage_label()}' is SQLite, which breaks under {spec.workers} parallel workers; "
          "leave 'storage' unset (journal file, safe on NFS) or use a server database URL")
    _need(not storage.startswith("postgres://"), where,
          f"storage '{spec.storage_label()}': the scheme is spelled 'postgresql://' (user@host:port/database)")
    if base.function is None:
        try:
            configs = {s: base_config(spec, s, {}) for s in base.stages}
        except ConfigError as exc:
            raise SweepError(f"{where}: the base does not load: {exc}") from None
        check_objectives(spec, configs)
        check_param_keys(spec)
    return spec
