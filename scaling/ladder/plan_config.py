"""A planned stage's config: its recipe, the ladder file's layers and the command line, in that
order, plus what the plan wires in; and what of it the fingerprint sees."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaling import config_provenance as provenance
from scaling.config import ConfigError, load_stage_config, merge, parse_overrides
from scaling.kinds import split_stage_name
from scaling.ladder.overrides import Overrides
from scaling.ladder.spec import LadderSpec
from scaling.stages import stage_name


def stage_config(spec: LadderSpec, overrides: Overrides, kind: str, rung: str, proxy: bool,
                 wiring: dict[str, Any], text_from_scratch: bool = False) -> DictConfig:
    """The resolved config of ``kind@rung`` with ``wiring`` (folders, tracking, inputs) set."""
    name = stage_name(kind, rung)
    cfg = load_stage_config(kind, rung, proxy=proxy)
    # Plain assignments (typed, but no merge + validate round): the dry run must stay fast.
    for dotted, value in _dotted(wiring):
        OmegaConf.update(cfg, dotted, value, merge=False)
    provenance.record(wiring, "ladder plan (folders, tracking, inputs)")
    sections = ("config", "proxy") if proxy else ("config",)
    if text_from_scratch:  # before the ladder's own layers and the command line, which may change it
        for section in sections:
            layer = spec.text_from_scratch.get(section)
            if layer:
                cfg = merge(cfg, layer, f"{spec.path}: text_from_scratch.{section}")
    for section in sections:
        for target in ("all", kind, name):
            layer = spec.layers.get(section, {}).get(target)
            if layer:
                cfg = merge(cfg, layer, f"{spec.path}: {section}.{target}")
    for group in overrides.for_stage(kind, [name]):
        cfg = merge(cfg, parse_overrides(group), "command line")
    cfg.stage.kind, cfg.stage.rung, cfg.stage.proxy, cfg.stage.name = kind, rung, proxy, name
    return cfg


def _dotted(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.extend(_dotted(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            out.append((f"{prefix}{key}", value))
    return out


def identity(cfg: DictConfig, internal: dict[str, str]) -> dict[str, Any]:
    """The config as fingerprinted: inputs made by this plan named by stage, not by folder."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key, stage in internal.items():
        data["inputs"][key] = f"stage:{stage}"  # type: ignore[index]
    return data  # type: ignore[return-value]


def target_stages(spec: LadderSpec, overrides: Overrides, stage_names: list[str]) -> dict[str, list[str]]:
    """The stage-targeted overrides by planned stage name; one that hits no stage of the plan fails."""
    targeted: dict[str, list[str]] = {}
    for typed, items in overrides.by_stage.items():
        kind, rung = split_stage_name(typed)
        name = stage_name(kind, spec.rung(rung).key)
        if name not in stage_names:
            raise ConfigError(f"command line: '{typed}.…' targets no stage of this plan; "
                              f"stages: {', '.join(stage_names)}")
        targeted.setdefault(name, []).extend(items)
    return targeted
