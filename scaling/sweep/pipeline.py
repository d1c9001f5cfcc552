"""From a sweep's base + one trial's parameters to the stage configs the trial trains.

A search-space key is a stage config key (``optim.lr``, ``model.vision.norm``) that applies to
every stage of the pipeline, or the same key prefixed by a stage (``clip.optim.lr``) that
applies to that stage only. Tower switches (``model.vision.<field>``) are checked against the
tower spec's fields, everything else against the stage config schema.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaling import costs
from scaling.config import ConfigError, _all_keys, fingerprint, load_stage_config
from scaling.kinds import stage_kind
from scaling.models.registry import configured_rung_of, get_rung
from scaling.models.specs import TextSpec, TowerSpec, field_names
from scaling.sweep.errors import SweepError
from scaling.sweep.spec_types import Param, SweepSpec


def split_key(name: str, stages: list[str]) -> tuple[str | None, str]:
    """``'clip.optim.lr'`` -> ``('clip', 'optim.lr')``; an unprefixed key targets all stages."""
    head, _, rest = name.partition(".")
    if head in stages and rest:
        return head, rest
    return None, name


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def param_overrides(params: Mapping[str, Any], stage: str, stages: list[str]) -> list[str]:
    out = []
    for name, value in params.items():
        target, key = split_key(name, stages)
        if target in (None, stage):
            out.append(f"{key}={_format(value)}")
    return out


def _valid_keys(cfg: DictConfig) -> list[str]:
    return _all_keys(cfg)


def _tower_fields(section: str) -> list[str]:
    return field_names(TowerSpec if section == "vision" else TextSpec)


def _check_key(key: str, cfg: DictConfig, where: str) -> None:
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "model" and parts[1] in ("vision", "text"):
        fields = _tower_fields(parts[1])
        if parts[2] not in fields:
            close = difflib.get_close_matches(parts[2], fields, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(f'model.{parts[1]}.{c}' for c in close)}?" if close else ""
            raise SweepError(f"{where}: unknown tower field '{key}'.{hint} Valid: "
                             f"{', '.join(f'model.{parts[1]}.{f}' for f in fields)}")
        return
    valid = [k for k in _valid_keys(cfg) if not isinstance(OmegaConf.select(cfg, k), DictConfig)]
    if key not in valid:
        tower = [f"model.vision.{f}" for f in _tower_fields("vision")]
        close = difflib.get_close_matches(key, valid + tower, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise SweepError(f"{where}: unknown config key '{key}'.{hint}")


def _sample_values(p: Param) -> list[Any]:
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "fixed":
        return [p.value]
    return [p.low, p.high]


def check_param_keys(spec: SweepSpec) -> None:
    """Every search-space key exists for the stages it targets, and every value it can take
    loads (choices, ranges, tower fields): a bad grid point fails now, not in trial 37."""
    stages = spec.base.stages
    where = str(spec.path)
    try:
        bases = {s: base_config(spec, s, {}) for s in stages}
    except (ConfigError, SweepError) as exc:
        raise SweepError(f"{where}: the base does not load: {exc}") from None
    for p in spec.params:
        at = f"{where}: search_space.{p.name}"
        target, key = split_key(p.name, stages)
        for stage in [target] if target else stages:
            _check_key(key, bases[stage], at)
            if key.startswith(("model.vision.", "model.text.")):
                _check_tower_values(bases[stage], key, _sample_values(p), f"{at} ({stage} stage)")
                continue
            for value in _sample_values(p):
                try:
                    cfg = base_config(spec, stage, {p.name: value})
                    check_towers(cfg)
                except (ConfigError, ValueError) as exc:
                    raise SweepError(f"{at}: value {value!r} does not load for the {stage} stage: {exc}") from None


def _check_tower_values(cfg: DictConfig, key: str, values: list[Any], where: str) -> None:
    # Tower switches only change the rung spec: checking them there skips a config load per value.
    for value in values:
        trial = cfg.copy()
        OmegaConf.update(trial, key, value, force_add=True)
        try:
            check_towers(trial)
        except ValueError as exc:
            raise SweepError(f"{where}: value {value!r} is not valid: {exc}") from None


def check_towers(cfg: DictConfig) -> Any:
    """Apply the config's tower switches and image size to its rung, as the stage will (raises a
    ValueError naming a bad field)."""
    return configured_rung_of(cfg)


def base_config(spec: SweepSpec, stage: str, params: Mapping[str, Any],
                extra: Mapping[str, Any] | None = None) -> DictConfig:
    b = spec.base
    overrides = [*b.overrides, *b.stage_overrides.get(stage, []), *param_overrides(params, stage, b.stages)]
    return load_stage_config(stage, b.rung, proxy=b.proxy, overrides=overrides, files=b.files,
                             extra=dict(extra) if extra else None)


def teacher_config(spec: SweepSpec) -> DictConfig | None:
    """The teacher CLIP stage the runner trains once (None: none, or a given checkpoint)."""
    t = spec.base.teacher
    if t is None or t.checkpoint:
        return None
    proxy = spec.base.proxy if t.proxy is None else t.proxy
    cfg = load_stage_config("clip", t.rung, proxy=proxy, overrides=[*spec.base.overrides, *t.overrides],
                            files=spec.base.files)
    cfg.out_dir = str(spec.work_dir() / f"teacher-{fingerprint(cfg)}")
    cfg.stage.name = f"teacher:clip@{t.rung}"
    return cfg


def teacher_dir(spec: SweepSpec) -> str | None:
    t = spec.base.teacher
    if t is None:
        return None
    if spec.teacher_path:
        return spec.teacher_path
    if t.checkpoint:
        return t.checkpoint
    cfg = teacher_config(spec)
    return str(cfg.out_dir) if cfg is not None else None


def trial_configs(spec: SweepSpec, params: Mapping[str, Any], trial_dir: Path) -> list[DictConfig]:
    """The resolved stage configs of one trial, in pipeline order, each wired to its inputs."""
    configs: list[DictConfig] = []
    teacher = teacher_dir(spec)
    previous: str | None = None
    for stage in spec.base.stages:
        extra: dict[str, Any] = {"out_dir": str(trial_dir / stage)}
        inputs = stage_kind(stage).sweep_inputs(previous, teacher)
        if inputs:
            extra["inputs"] = inputs
        if "teacher" in inputs and spec.base.teacher and spec.base.teacher.rung:
            extra["stage"] = {"teacher_rung": spec.base.teacher.rung}
        cfg = base_config(spec, stage, params, extra)
        configs.append(cfg)
        previous = str(cfg.out_dir)
    return configs


def trial_costs(configs: list[DictConfig]) -> dict[str, float]:
    """``cost/train_flops`` (all stages of the trial) and ``cost/params`` (last stage's model)."""
    flops, n_params = 0.0, 0.0
    for cfg in configs:
        rung = check_towers(cfg)
        kind = stage_kind(cfg.stage.kind)
        teacher = None
        if kind.needs_teacher and cfg.stage.teacher_rung:
            teacher = get_rung(cfg.stage.teacher_rung, proxy=bool(cfg.stage.proxy))
        flops += costs.train_flops(rung, kind.name, float(cfg.train.samples),
                                   patch_dropout=float(cfg.model.patch_dropout),
                                   mask_ratio=float(cfg.loss.mask_ratio), teacher=teacher)
        n_params = float(kind.law_params(rung))
    return {"cost/train_flops": flops, "cost/params": n_params}
