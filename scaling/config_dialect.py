"""The one config dialect: typed YAML through OmegaConf structured configs, one error shape.

Stage configs, ladder files, sweep files, rung files and command-line ``key=value`` overrides
all load the same way: a dataclass schema, ``OmegaConf.structured``, then each layer (a file,
a parent it extends, the command line) merged in order. A layer that brings an unknown key or
a value of the wrong type raises an error made by :func:`key_message`: the layer's source, the
dotted key as the user wrote it, what is wrong, and close matches for an unknown key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A config key or value is wrong; the message says which, where it came from, and what to do."""


def all_keys(cfg: DictConfig, prefix: str = "", free: Sequence[str] = ()) -> list[str]:
    """Every dotted key of ``cfg``, not descending into the open mappings named in ``free``."""
    keys = []
    for key in cfg:
        full = f"{prefix}{key}"
        keys.append(full)
        value = cfg._get_node(key)
        if isinstance(value, DictConfig) and full not in free:
            keys.extend(all_keys(value, full + ".", free))
    return keys


def key_message(source: str, key: str, why: str | None = None, valid: Iterable[str] = (), within: str = "") -> str:
    """The one shape of every config error (stage configs, ladder, sweep and rung files):
    where it came from, the dotted key (``within`` a list of sections, when OmegaConf cannot
    say which element), and what is wrong; an unknown key (``why=None``) gets the close matches
    among ``valid``."""
    at = f" in '{within}'" if within else ""
    if why is not None:
        return f"{source}: '{key}'{at} {why}"
    return f"{source}: unknown config key '{key}'{at}.{suggest(key, valid)}"


def suggest(name: str, valid: Iterable[str], cutoff: float = 0.5) -> str:
    """`` Did you mean: a, b?`` for the close matches of ``name`` among ``valid`` (or ``''``)."""
    close = difflib.get_close_matches(name, sorted(set(valid)), n=3, cutoff=cutoff)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _explain(exc: OmegaConfBaseException, base: DictConfig, source: str, prefix: str = "") -> str:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0]
    owner = getattr(exc, "object_type", None)
    base_type = OmegaConf.get_type(base)
    within = ""
    if "." not in key and dataclasses.is_dataclass(owner) and dataclasses.is_dataclass(base_type) \
            and base_type is not owner:
        # an element of a list of sections (phases[i], objectives[i]): OmegaConf's key lacks the path
        within = prefix + (_declared_at(base_type, owner) or "?")
    if isinstance(exc, ConfigKeyError) or "not in" in msg:
        parent = key.rpartition(".")[0]
        # the offending node's own fields first (it may not exist in ``base`` yet: rungs.<new>.x)
        siblings = [f"{parent}.{f.name}" if parent else f.name for f in dataclasses.fields(owner)] \
            if dataclasses.is_dataclass(owner) else []
        valid = siblings if within else [prefix + k for k in (*siblings, *all_keys(base))]
        return key_message(source, key if within else prefix + key, valid=valid, within=within)
    return key_message(source, key if within else prefix + key, f"has a bad value: {msg}", within=within)


def _held(hint: Any, suffix: str = "") -> list[tuple[Any, str]]:
    """The types a field holds, with the path suffix to reach them: ``list[X]`` -> ``(X, '[]')``,
    ``dict[str, X]`` -> ``(X, '.<key>')``, ``X | None`` -> ``(X, '')``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return _held(args[0], suffix + "[]")
    if origin is dict:
        return _held(args[1], suffix + ".<key>")
    if args:  # a Union (Optional)
        return [held for arg in args if arg is not type(None) for held in _held(arg, suffix)]
    return [(hint, suffix)]


def _declared_at(schema_type: Any, owner: type, prefix: str = "") -> str | None:
    """Where the dataclass ``owner`` sits in the dataclass ``schema_type`` (e.g. ``objectives[]``)."""
    for name, hint in typing.get_type_hints(schema_type).items():
        for held, suffix in _held(hint):
            path = f"{prefix}{name}{suffix}"
            if held is owner:
                return path
            if dataclasses.is_dataclass(held) and (found := _declared_at(held, owner, f"{path}.")):
                return found
    return None


def _leaf_keys(layer: Any, prefix: str = "") -> list[str]:
    if not isinstance(layer, (DictConfig, dict)):
        return [prefix.rstrip(".")] if prefix else []
    return [k for key, value in layer.items() for k in _leaf_keys(value, f"{prefix}{key}.")] or [prefix]


def _mismatched(base: Any, layer: Any, prefix: str = "") -> list[str]:
    """Keys where ``layer`` puts a mapping on a value or list (or the reverse): what cannot merge."""
    if not isinstance(layer, (DictConfig, dict)) or not isinstance(base, DictConfig):
        return []
    out = []
    for key, value in layer.items():
        node = base._get_node(key) if key in base else None
        if node is None:
            continue
        if isinstance(value, (DictConfig, dict)) != isinstance(node, DictConfig):
            out.append(f"{prefix}{key}")
        else:
            out += _mismatched(node, value, f"{prefix}{key}.")
    return out


def merge_layer(base: DictConfig, layer: Any, source: str, error: type[Exception] = ConfigError,
                prefix: str = "") -> DictConfig:
    """``OmegaConf.merge(base, layer)`` with errors as ``error(key_message(...))``: the ``source``
    (file or command line) and the ``prefix``-ed dotted key, close matches for an unknown one."""
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as exc:
        raise error(_explain(exc, base, source, prefix)) from None
    except TypeError as exc:  # e.g. 'phases.1.x=...': a dotted key into a list
        leaves = _mismatched(base, layer) or _leaf_keys(layer)
        keys = ", ".join(prefix + k for k in leaves) or "?"
        hint = ("; a list (such as 'phases') is set whole, e.g. 'phases=[{fraction: 0.9}, "
                "{fraction: 0.1, patch_dropout: 0}]'") if any(k.startswith("phases") for k in leaves) else \
            "; a mapping and a value (or list) do not merge"
        raise error(f"{source}: cannot merge {keys}: {exc}{hint}") from None


def load_structured(schema_type: type, layers: Sequence[tuple[Any, str]], error: type[Exception] = ConfigError,
                    prefixes: Sequence[str] = ()) -> DictConfig:
    """A typed config: the dataclass ``schema_type``'s defaults, then each ``(layer, source)``
    merged in order, an error naming the source of the layer that brought it. Dataclass
    sections refuse unknown keys; ``dict`` fields are open mappings checked by their readers."""
    cfg = OmegaConf.structured(schema_type)
    for i, (layer, source) in enumerate(layers):
        cfg = merge_layer(cfg, layer, source, error, prefixes[i] if i < len(prefixes) else "")
    return cfg


def load_yaml(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: report the file, not the parser stack
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return loaded


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(
            f"command line: overrides must look like key=value (e.g. optim.lr=1e-4), got: {' '.join(bad)}"
        )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"command line: cannot parse overrides {list(overrides)}: {exc}") from None
